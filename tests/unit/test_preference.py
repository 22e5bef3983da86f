"""Preference mathematics against hand-worked numbers: a pairwise judge's logits to the K×K
matrix (PairRM's two conventions), and the matrix to win-rate estimates."""

import math

import numpy as np
import pytest

from sppo_nemo.maths import preference as P
from sppo_nemo.schema.protocols import check_preference_matrix

pytestmark = pytest.mark.unit


def sig(x):
    return 1 / (1 + np.exp(-x))


def sigma(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------- logits → M
def test_symmetric_probabilities_hand_worked():
    c = np.array([[0.0, 2.0], [-1.0, 0.0]])  # s(1,2) = 2, s(2,1) = -1
    m = P.symmetric_probabilities(c)
    assert m[0, 1] == pytest.approx(sigma(1.5))  # σ((2 − (−1)) / 2) = 0.8175744762
    assert m[0, 1] == pytest.approx(0.8175744762, abs=1e-9)
    assert m[1, 0] == 1.0 - m[0, 1] and m[0, 0] == m[1, 1] == 0.5


def test_score_diff_probabilities_hand_worked():
    # C[i, j] − C[j, i]: (0,1) = 2 − 0 = 2, (0,2) = 1 − (−1) = 2, (1,2) = 0 − 3 = −3
    c = np.array([[0.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, 3.0, 0.0]])
    s = P.aggregated_scores(c)  # mean over K = 3 entries, diagonal included
    np.testing.assert_allclose(s, [4 / 3, -5 / 3, 1 / 3])
    m = P.score_diff_probabilities(c)
    assert m[0, 1] == pytest.approx(sigma(3.0)) and m[2, 1] == pytest.approx(sigma(2.0))
    np.testing.assert_array_equal(m + m.T, np.ones((3, 3)))  # exactly, from σ(|d|)
    check_preference_matrix(m)


def test_aggregated_scores_are_llm_blender_rank_scores():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(5, 5))
    junk = c.copy()
    np.fill_diagonal(c, 0.0)
    np.testing.assert_allclose(P.aggregated_scores(c), (c - c.T).mean(axis=-1))  # get_scores_from_cmps
    np.testing.assert_array_equal(P.aggregated_scores(junk), P.aggregated_scores(c))  # the diagonal is ignored


def test_symmetric_is_exactly_antisymmetric_and_can_be_intransitive():
    rng = np.random.default_rng(1)
    c = rng.normal(scale=3, size=(6, 6))
    m = P.symmetric_probabilities(c)
    check_preference_matrix(m, atol=1e-12)
    np.testing.assert_array_equal(m + m.T, np.ones((6, 6)))
    # a cycle: 0 ≻ 1 ≻ 2 ≻ 0
    cyc = np.array([[0, 2, -2], [-2, 0, 2], [2, -2, 0]], dtype=float)
    mc = P.symmetric_probabilities(cyc)
    assert mc[0, 1] > 0.5 and mc[1, 2] > 0.5 and mc[2, 0] > 0.5


def test_probabilities_dispatch_and_small_k():
    c = np.array([[0.0, 2.0], [-1.0, 0.0]])
    np.testing.assert_array_equal(P.probabilities(c, "symmetric"), P.symmetric_probabilities(c))
    np.testing.assert_array_equal(P.probabilities(c, "score_diff"), P.score_diff_probabilities(c))
    assert P.probabilities(np.zeros((1, 1)), "symmetric").tolist() == [[0.5]]
    assert P.probabilities(np.zeros((0, 0)), "score_diff").shape == (0, 0)
    with pytest.raises(ValueError, match="probability"):
        P.probabilities(c, "bogus")


def test_score_diff_reading_is_the_same_from_logits_and_from_probabilities():
    """The reference scripts' P̂ (score_diff probabilities, then the average) is a fixed point of
    the score_diff win-rate estimator: both go through one σ(s_i − s_j)."""
    rng = np.random.default_rng(2)
    c = rng.normal(size=(4, 4))
    m = P.score_diff_probabilities(c)
    np.testing.assert_allclose(P.score_diff_win_rates(m), P.win_rate_estimates(m), atol=1e-12)
    s = P.aggregated_scores(c)
    np.testing.assert_allclose(P.score_probabilities(s), m, atol=0)


# ----------------------------------------------------------------------------- M → win rates
def test_strict_order_gives_appendix_e_values():
    m = np.array([[0.5, 1, 1], [0, 0.5, 1], [0, 0, 0.5]])
    assert P.win_rate_estimates(m) == pytest.approx([2.5 / 3, 1.5 / 3, 0.5 / 3])


def test_diagonal_is_forced_to_half():
    m = np.array([[0.9, 0.2], [0.8, 0.1]])  # diagonal is junk on purpose
    assert P.win_rate_estimates(m) == pytest.approx([(0.5 + 0.2) / 2, (0.8 + 0.5) / 2])


def test_batched_matrices():
    m = np.stack([np.full((3, 3), 0.5), np.array([[0.5, 1, 1], [0, 0.5, 1], [0, 0, 0.5]])])
    out = P.win_rate_estimates(m)
    assert out.shape == (2, 3)
    assert out[0] == pytest.approx([0.5, 0.5, 0.5])


def test_average_of_estimates_is_one_half():
    # Σ_i P̂_i = (1/K) Σ_ij M_ij = (1/K)·K²/2 for any valid matrix
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(5, 5))
    m = np.triu(a, 1) + np.tril(1 - a.T, -1) + 0.5 * np.eye(5)
    assert P.win_rate_estimates(m).mean() == pytest.approx(0.5)


def test_score_diff_hand_worked():
    m = np.array([[0.5, sig(2.0)], [sig(-2.0), 0.5]])
    # s = [1, −1]; P'(1≻2) = σ(2) = 0.8808; P̂ = [0.6904, 0.3096]
    assert P.score_diff_win_rates(m) == pytest.approx([0.690399, 0.309601], abs=1e-6)


def test_score_diff_differs_from_average_on_intransitive_matrix():
    # rock-paper-scissors: the average says every response is a tie; the score reading agrees
    # here, but on a lopsided cycle the two conventions disagree
    rps = np.array([[0.5, 1, 0], [0, 0.5, 1], [1, 0, 0.5]])
    assert P.win_rate_estimates(rps) == pytest.approx([0.5, 0.5, 0.5])
    lop = np.array([[0.5, 0.9, 0.4], [0.1, 0.5, 0.9], [0.6, 0.1, 0.5]])
    assert not np.allclose(P.win_rate_estimates(lop), P.score_diff_win_rates(lop), atol=1e-3)


def test_log_partition_estimate():
    assert P.log_partition_estimate(np.array([0.5, 0.5]), 1e3) == pytest.approx(500.0)
    assert P.log_partition_estimate(np.array([1.0, 0.0]), 2.0) == pytest.approx(1.433781, abs=1e-6)
    # stable at the paper's η = 1e3: log((e^1000 + 1)/2) = 1000 − log 2
    assert P.log_partition_estimate(np.array([1.0, 0.0]), 1e3) == pytest.approx(1000 - np.log(2))


def test_best_worst():
    m = np.array([[0.5, 0.2, 0.5], [0.8, 0.5, 0.8], [0.5, 0.2, 0.5]])  # P̂ = [0.4, 0.7, 0.4]
    assert P.best_worst(m) == (1, 0)
    assert P.best_worst(np.full((3, 3), 0.5)) == (0, 1)  # all tie: still two distinct


def test_k_below_two_is_an_error():
    with pytest.raises(ValueError, match="K >= 2"):
        P.win_rate_estimates(np.array([[0.5]]))


def test_estimate_dispatch():
    m = np.array([[0.5, 1.0], [0.0, 0.5]])
    assert P.estimate(m, "average") == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError):
        P.estimate(m, "bogus")
