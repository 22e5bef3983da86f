"""Win-rate estimation against hand-worked numbers."""

import numpy as np
import pytest

from sppo_nemo import preference as winrate


def sig(x):
    return 1 / (1 + np.exp(-x))


def test_strict_order_gives_appendix_e_values():
    m = np.array([[0.5, 1, 1], [0, 0.5, 1], [0, 0, 0.5]])
    assert winrate.win_rate_estimates(m) == pytest.approx([2.5 / 3, 1.5 / 3, 0.5 / 3])


def test_diagonal_is_forced_to_half():
    m = np.array([[0.9, 0.2], [0.8, 0.1]])  # diagonal is junk on purpose
    assert winrate.win_rate_estimates(m) == pytest.approx([(0.5 + 0.2) / 2, (0.8 + 0.5) / 2])


def test_batched_matrices():
    m = np.stack([np.full((3, 3), 0.5), np.array([[0.5, 1, 1], [0, 0.5, 1], [0, 0, 0.5]])])
    out = winrate.win_rate_estimates(m)
    assert out.shape == (2, 3)
    assert out[0] == pytest.approx([0.5, 0.5, 0.5])


def test_average_of_estimates_is_one_half():
    # Σ_i P̂_i = (1/K) Σ_ij M_ij = (1/K)·K²/2 for any valid matrix
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(5, 5))
    m = np.triu(a, 1) + np.tril(1 - a.T, -1) + 0.5 * np.eye(5)
    assert winrate.win_rate_estimates(m).mean() == pytest.approx(0.5)


def test_score_diff_hand_worked():
    m = np.array([[0.5, sig(2.0)], [sig(-2.0), 0.5]])
    # s = [1, −1]; P'(1≻2) = σ(2) = 0.8808; P̂ = [0.6904, 0.3096]
    assert winrate.score_diff_win_rates(m) == pytest.approx([0.690399, 0.309601], abs=1e-6)


def test_score_diff_differs_from_average_on_intransitive_matrix():
    # rock-paper-scissors: the average says every response is a tie; the score reading agrees
    # here, but on a lopsided cycle the two conventions disagree
    rps = np.array([[0.5, 1, 0], [0, 0.5, 1], [1, 0, 0.5]])
    assert winrate.win_rate_estimates(rps) == pytest.approx([0.5, 0.5, 0.5])
    lop = np.array([[0.5, 0.9, 0.4], [0.1, 0.5, 0.9], [0.6, 0.1, 0.5]])
    assert not np.allclose(winrate.win_rate_estimates(lop), winrate.score_diff_win_rates(lop), atol=1e-3)


def test_log_partition_estimate():
    assert winrate.log_partition_estimate(np.array([0.5, 0.5]), 1e3) == pytest.approx(500.0)
    assert winrate.log_partition_estimate(np.array([1.0, 0.0]), 2.0) == pytest.approx(1.433781, abs=1e-6)
    # stable at the paper's η = 1e3: log((e^1000 + 1)/2) = 1000 − log 2
    assert winrate.log_partition_estimate(np.array([1.0, 0.0]), 1e3) == pytest.approx(1000 - np.log(2))


def test_best_worst():
    m = np.array([[0.5, 0.2, 0.5], [0.8, 0.5, 0.8], [0.5, 0.2, 0.5]])  # P̂ = [0.4, 0.7, 0.4]
    assert winrate.best_worst(m) == (1, 0)
    assert winrate.best_worst(np.full((3, 3), 0.5)) == (0, 1)  # all tie: still two distinct


def test_k_below_two_is_an_error():
    with pytest.raises(ValueError, match="K >= 2"):
        winrate.win_rate_estimates(np.array([[0.5]]))


def test_estimate_dispatch():
    m = np.array([[0.5, 1.0], [0.0, 0.5]])
    assert winrate.estimate(m, "average") == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError):
        winrate.estimate(m, "bogus")
