"""The losses against hand-worked numbers (see each function's docstring)."""

import math

import pytest
import torch

from sppo_nemo.maths import loss

T = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


def test_sppo_loss_hand_worked():
    # log-ratio 0.3 - 0.1 = 0.2; target η(P̂ - ½) = 2·0.25 = 0.5; (0.2 - 0.5)² = 0.09
    out = loss.sppo_loss(T(0.3), T(0.1), T(0.75), eta=2.0)
    assert out.item() == pytest.approx(0.09)


def test_sppo_loss_at_init_is_eta_half_squared():
    # π = π_t, P̂ ∈ {0, 1}, η = 1e3: (∓500)² = 2.5e5 per example, 0.25 in appendix-B units
    out = loss.sppo_loss(T(-5.0, -7.0), T(-5.0, -7.0), T(1.0, 0.0), eta=1e3)
    assert out.tolist() == pytest.approx([2.5e5, 2.5e5])
    assert loss.sppo_loss_scaled(out, 1e3).tolist() == pytest.approx([0.25, 0.25])


def test_sppo_loss_explicit_log_z():
    # target η·P̂ − log Z = 2·0.75 − 1.0 = 0.5, same as the constant η/2 = 1.0 here
    assert loss.sppo_loss(T(0.2), T(0.0), T(0.75), 2.0, log_z=T(1.0)).item() == pytest.approx(0.09)
    # log Z = 0.5: target 1.0; (0.2 − 1.0)² = 0.64
    assert loss.sppo_loss(T(0.2), T(0.0), T(0.75), 2.0, log_z=0.5).item() == pytest.approx(0.64)


def test_sppo_loss_minimiser_is_the_multiplicative_weight_target():
    # eq. 3.3 with log Z = η/2: the loss vanishes exactly at log-ratio η(P̂ − ½)
    p = T(0.1, 0.5, 0.9)
    ref = T(-3.0, -2.0, -1.0)
    eta = 10.0
    pol = ref + eta * (p - 0.5)
    assert torch.allclose(loss.sppo_loss(pol, ref, p, eta), torch.zeros(3, dtype=torch.float64))


def test_sppo_pair_loss_hand_worked():
    # (0.2 − 0.5)² + (−0.1 + 0.5)² = 0.09 + 0.16 = 0.25
    out = loss.sppo_pair_loss(T(0.2), T(-0.1), T(0.0), T(0.0), T(1.0), eta=1.0)
    assert out.item() == pytest.approx(0.25)


def test_sppo_pair_loss_matches_appendix_b_scaled_form():
    # In β units with a hard label: (a − ½)² + (b + ½)², a = β·ratio_w, b = β·ratio_l
    eta, rw, rl = 4.0, 1.2, -0.6
    raw = loss.sppo_pair_loss(T(rw), T(rl), T(0.0), T(0.0), T(1.0), eta).item()
    a, b = rw / eta, rl / eta
    assert raw / eta**2 == pytest.approx((a - 0.5) ** 2 + (b + 0.5) ** 2)


def test_dpo_loss_hand_worked():
    assert loss.dpo_loss(T(1.0), T(1.0), T(1.0), T(1.0), 5.0).item() == pytest.approx(math.log(2))
    # η = 1 (β = 1), ratios +1 / −1 → −log σ(2) = 0.126928
    assert loss.dpo_loss(T(1.0), T(-1.0), T(0.0), T(0.0), 1.0).item() == pytest.approx(0.126928, abs=1e-6)


def test_ipo_loss_hand_worked():
    assert loss.ipo_loss(T(0.0), T(0.0), T(0.0), T(0.0), 3.0).item() == pytest.approx(1.0)
    # η = 2 (β = ½), ratios +1 / −1 → margin ½·1 − ½·(−1) = 1 → loss 0
    assert loss.ipo_loss(T(1.0), T(-1.0), T(0.0), T(0.0), 2.0).item() == pytest.approx(0.0)


def test_sppo_gradient_is_advantage_weighted_log_likelihood():
    # ∂ℓ/∂log π = 2(log-ratio − η(P̂ − ½)); at init: −2η(P̂ − ½): a winner is pushed up, a loser down
    pol = T(-4.0, -4.0).requires_grad_()
    out = loss.sppo_loss(pol, T(-4.0, -4.0), T(0.8, 0.2), eta=10.0).sum()
    out.backward()
    assert pol.grad.tolist() == pytest.approx([-6.0, 6.0])
