"""The training losses, as pure per-example tensor functions.

Symbols follow the paper (Wu et al., SPPO, arXiv:2405.00675: eq. 3.5–3.7 and appendix B, eq.
B.1–B.3). Log-probabilities are *sequence* log-probabilities:
log π(y|x) = Σ_h log π(y_h | x, y_<h), summed over response tokens.

η (``eta``) is the paper's step size of the multiplicative-weight update (3.1); the pairwise
baselines of appendix B are written with β = 1/η, and we convert exactly once, here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sppo_loss(
    policy_logps: torch.Tensor,
    reference_logps: torch.Tensor,
    win_prob: torch.Tensor,
    eta: float,
    log_z: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """SPPO square loss, eq. (3.5) with an explicit log Z, eq. (3.6)/(3.7) by default.

        ℓ = (log π(y|x) − log π_t(y|x) − (η·P̂(y ≻ π_t|x) − log Z))²

    With ``log_z=None`` the log-partition is the constant η/2 of eq. (3.6) (appendix E), so the
    target is η(P̂ − ½).

    Hand-worked: log-ratio 0.3 − 0.1 = 0.2, P̂ = 0.75, η = 2: target 2·(0.75 − 0.5) = 0.5,
    loss (0.2 − 0.5)² = 0.09. At initialisation (π = π_t) with η = 1e3 and P̂ ∈ {0, 1} the loss
    is (η/2)² = 2.5e5 per example: large by construction, see :func:`sppo_loss_scaled`.
    """
    if log_z is None:
        log_z = eta / 2.0
    log_ratio = policy_logps - reference_logps
    return (log_ratio - (eta * win_prob - log_z)) ** 2


def sppo_loss_scaled(loss: torch.Tensor, eta: float) -> torch.Tensor:
    """The same loss in the units of appendix B: (β·log-ratio − (P̂ − ½))², β = 1/η.

    Dividing by η² changes no minimiser; it shows the fit on the scale of a probability
    (a perfectly fitted winner has β·log-ratio = +½). Hand-worked: raw 2.5e5 at η = 1e3 → 0.25.
    """
    return loss / (eta * eta)


def sppo_pair_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    pair_prob: torch.Tensor,
    eta: float,
) -> torch.Tensor:
    """Pair-wise symmetric SPPO loss, eq. (B.1), with p = P(y_w ≻ y_l | x) soft or hard:

        ℓ = (log-ratio_w − η(p − ½))² + (log-ratio_l − η(1 − p − ½))²

    Hand-worked: log-ratios 0.2 (winner) and −0.1 (loser), p = 1, η = 1:
    (0.2 − 0.5)² + (−0.1 + 0.5)² = 0.09 + 0.16 = 0.25.
    """
    chosen = policy_chosen_logps - reference_chosen_logps
    rejected = policy_rejected_logps - reference_rejected_logps
    return (chosen - eta * (pair_prob - 0.5)) ** 2 + (rejected - eta * (0.5 - pair_prob)) ** 2


def _scaled_margin(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    eta: float,
) -> torch.Tensor:
    beta = 1.0 / eta  # appendix B: β = η⁻¹
    a = beta * (policy_chosen_logps - reference_chosen_logps)
    b = beta * (policy_rejected_logps - reference_rejected_logps)
    return a - b


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    eta: float,
) -> torch.Tensor:
    """DPO, eq. (B.2): −log σ(a − b), a and b the β-scaled log-ratios of winner and loser.

    Hand-worked: at π = π_ref the margin is 0 and the loss is log 2 ≈ 0.693147; with η = 1
    and log-ratios +1 (winner), −1 (loser) it is −log σ(2) ≈ 0.126928.
    """
    margin = _scaled_margin(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, eta
    )
    return -F.logsigmoid(margin)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    eta: float,
    form: str = "appendix_b",
) -> torch.Tensor:
    """IPO in one of two forms (``loss.ipo_form``), with β = 1/η:

    ``appendix_b``, eq. (B.3): ((a − b) − 1)², a and b the β-scaled log-ratios: the margin
        Δ = log-ratio_w − log-ratio_l is regressed on 1/β.
    ``azar``, the IPO paper's (Azar et al. 2023, eq. 17) sampled loss (Δ − 1/(2β))², as the SPPO
        authors' trainer and TRL train it (TRL, with ``loss_type="ipo"``, also divides each
        log-ratio by the response length; not offered here): Δ regressed on 1/(2β) = η/2, and the
        loss in log-ratio units, so its gradient is η² times larger than B.3's at the same margin.

    Hand-worked: at π = π_ref the loss is 1 (B.3) and (η/2)² (azar); with η = 2 and log-ratios
    +1, −1 (Δ = 2): B.3's margin is ½·2 = 1 and its loss 0; azar's is (2 − 1)² = 1.
    """
    if form == "azar":
        delta = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
        return (delta - eta / 2.0) ** 2
    if form != "appendix_b":
        raise ValueError(f"ipo form {form!r}; use appendix_b or azar")
    margin = _scaled_margin(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, eta
    )
    return (margin - 1.0) ** 2
