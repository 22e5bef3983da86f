"""Win-rate estimation from K×K preference matrices, as pure numpy functions.

M[i, j] = P(y_i ≻ y_j | x) for K responses y_1..y_K ~ π_t(·|x) of one prompt.
Equations refer to shared/reference/sppo-paper.txt.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-6


def _with_half_diagonal(m: np.ndarray) -> np.ndarray:
    m = np.array(m, dtype=np.float64, copy=True)
    if m.ndim < 2 or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"expected (..., K, K) preference matrices, got shape {m.shape}")
    if m.shape[-1] < 2:
        raise ValueError("win-rate estimation needs K >= 2 responses per prompt")
    idx = np.arange(m.shape[-1])
    m[..., idx, idx] = 0.5  # a response ties with itself
    return m


def win_rate_estimates(m: np.ndarray) -> np.ndarray:
    """P̂(y_i ≻ π_t | x) = (1/K) Σ_k P(y_i ≻ y_k | x), eq. (3.5) and appendix C.

    The diagonal is taken as ½ whatever the input holds. Works on (K, K) or (..., K, K).

    Hand-worked (K = 3): M = [[½, 1, 1], [0, ½, 1], [0, 0, ½]] (a strict order) gives
    P̂ = [2.5/3, 1.5/3, 0.5/3] = [0.8333, 0.5, 0.1667], the (i − ½)/K of appendix E.
    """
    return _with_half_diagonal(m).mean(axis=-1)


def score_diff_win_rates(m: np.ndarray) -> np.ndarray:
    """The reference SPPO scripts' convention, offered for comparison (not the paper's eq. 3.5).

    The reference scripts (uclaml/SPPO ``compute_prob.py``) never use the pairwise
    probabilities directly: they take one aggregated PairRM score per response,
    s_i = (1/K) Σ_k s(y_i, y_k; x) (appendix C), rebuild P'(y_i ≻ y_j) = σ(s_i − s_j), and
    average P' over j (diagonal σ(0) = ½). From a probability matrix we recover the relative
    rewards as logits, s(y_i, y_k) = logit M[i, k]. The result is a Bradley-Terry reading of
    the judge: intransitive preferences are flattened into one score per response.

    Hand-worked (K = 2): M = [[½, σ(2)], [σ(−2), ½]]: s = [1, −1], P'(1 ≻ 2) = σ(2) ≈ 0.8808,
    P̂ = [(0.5 + 0.8808)/2, (0.5 + 0.1192)/2] = [0.6904, 0.3096].
    """
    m = _with_half_diagonal(m)
    logits = np.log(np.clip(m, _EPS, 1 - _EPS)) - np.log(np.clip(1 - m, _EPS, 1 - _EPS))
    s = logits.mean(axis=-1)
    p = 1.0 / (1.0 + np.exp(-(s[..., :, None] - s[..., None, :])))
    return p.mean(axis=-1)


def estimate(m: np.ndarray, method: str) -> np.ndarray:
    """Dispatch on the recipe's ``loss.winrate``: ``average`` (eq. 3.5) or ``score_diff``."""
    match method:
        case "average":
            return win_rate_estimates(m)
        case "score_diff":
            return score_diff_win_rates(m)
        case _:
            raise ValueError(f"unknown win-rate method {method!r}; use 'average' or 'score_diff'")


def log_partition_estimate(win_rates: np.ndarray, eta: float) -> np.ndarray:
    """log Z_{π̂_t^K}(x) = log( (1/K) Σ_i exp(η P̂(y_i ≻ π̂_t^K | x)) ), eq. (3.5).

    The expectation over y ~ π_t is estimated on the same K samples (the paper notes B fresh
    samples could be used instead). Computed stably with log-sum-exp.

    Hand-worked: P̂ = [0.5, 0.5] gives η/2 for every η (the constant of eq. 3.6); with
    P̂ = [1, 0] and η = 2: log((e² + 1)/2) ≈ 1.433781.
    """
    x = eta * np.asarray(win_rates, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    return (top[..., 0] + np.log(np.exp(x - top).mean(axis=-1)))


def best_worst(m: np.ndarray) -> tuple[int, int]:
    """Indices of the winner y_w and loser y_l by average preference (appendix C).

    The paper ranks by the mean PairRM relative reward s_PairRM(y_i) = (1/K) Σ_k s(y_i, y_k);
    with only probabilities available we rank by P̂ (eq. 3.5), the same ordering when the
    judge is monotone in s. Ties resolve to the lowest index, so the choice is deterministic.
    For K ≥ 2 the two indices differ even when every response ties.

    Hand-worked: P̂ = [0.4, 0.7, 0.4] → (1, 0).
    """
    p = win_rate_estimates(m)
    best = int(np.argmax(p))
    rest = [i for i in range(len(p)) if i != best]
    worst = rest[int(np.argmin(p[rest]))]
    return best, worst
