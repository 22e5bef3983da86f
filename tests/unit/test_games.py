"""The exact mathematics of preference games (sppo_nemo/maths/games.py) against hand-worked numbers,
and Theorem 3.1's O(1/√T) bound for the exact multiplicative-weight update (eq. 3.1)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sppo_nemo.maths import games

pytestmark = pytest.mark.unit

# rock, paper, scissors: paper beats rock, scissors beat paper, rock beats scissors
RPS = np.array([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])
# recipes/games/intransitive.json: y0 ≻ y1 (0.9) ≻ y2 (0.7) ≻ y0 (0.6), decoy y3
INTRANSITIVE = np.array([[0.5, 0.9, 0.4, 0.8], [0.1, 0.5, 0.7, 0.6], [0.6, 0.3, 0.5, 0.4], [0.2, 0.4, 0.6, 0.5]])
TRANSITIVE = games.bradley_terry([0.0, 0.5, 1.0, 1.5])


def random_game(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).uniform(size=(n, n))
    return np.triu(a, 1) + np.tril(1 - a.T, -1) + 0.5 * np.eye(n)


# ------------------------------------------------------------------------- checking


def test_valid_games_have_no_problems():
    for m in (RPS, INTRANSITIVE, TRANSITIVE, random_game(6, 0)):
        assert games.matrix_problems(m) == []


@pytest.mark.parametrize("m, words", [
    ([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0]], "square"),
    ([[0.5]], "at least 2"),
    ([[0.5, 1.2], [-0.2, 0.5]], "[0, 1]"),
    ([[0.5, 0.7], [0.4, 0.5]], "P[0][1] + P[1][0] = 1.1"),
    ([[0.4, 0.5], [0.5, 0.5]], "P[0][0] + P[0][0] = 0.8"),
    ([[0.5, "a"], [0.5, 0.5]], "numbers"),
    ([[0.5, float("nan")], [0.5, 0.5]], "finite"),
])
def test_bad_matrices_are_named(m, words):
    problems = games.matrix_problems(m)
    assert problems and words in " ".join(problems)
    with pytest.raises(ValueError):
        games.check_matrix(m)


def test_bradley_terry_is_the_logistic_of_score_differences():
    assert TRANSITIVE[1, 0] == pytest.approx(1 / (1 + math.exp(-0.5)))  # σ(0.5) = 0.622459
    assert TRANSITIVE[3, 0] == pytest.approx(0.817574, abs=1e-6)  # σ(1.5)
    assert np.allclose(TRANSITIVE + TRANSITIVE.T, 1.0, atol=1e-15)


# ------------------------------------------------------------------------- policies


def test_softmax_and_log_softmax_hand_worked():
    assert games.softmax([0.0, math.log(3)]) == pytest.approx([0.25, 0.75])
    assert games.log_softmax([0.0, math.log(3)]) == pytest.approx([math.log(0.25), math.log(0.75)])
    assert games.softmax([1000.0, 1000.0]) == pytest.approx([0.5, 0.5])  # stable


def test_win_rates_hand_worked():
    # π = [½, ½, 0]: rock ¼, paper ¾, scissors ½ (docstring of games.win_rates)
    assert games.win_rates(RPS, [0.5, 0.5, 0.0]) == pytest.approx([0.25, 0.75, 0.5])


def test_a_policy_ties_with_itself_and_the_game_is_constant_sum():
    rng = np.random.default_rng(1)
    m = random_game(5, 1)
    for _ in range(5):
        pi, mu = rng.dirichlet(np.ones(5)), rng.dirichlet(np.ones(5))
        assert games.policy_win_prob(m, pi, pi) == pytest.approx(0.5)
        assert games.policy_win_prob(m, pi, mu) + games.policy_win_prob(m, mu, pi) == pytest.approx(1.0)
    assert games.policy_win_prob(RPS, [0, 1, 0], [1, 0, 0]) == 1.0  # paper beats rock


def test_total_variation_hand_worked():
    assert games.total_variation([1, 0, 0], games.uniform(3)) == pytest.approx(2 / 3)
    assert games.total_variation([0.5, 0.5], [0.5, 0.5]) == 0.0


# ---------------------------------------------------------------------- duality gap


def test_duality_gap_hand_worked():
    assert games.duality_gap(RPS, [0.5, 0.5, 0.0]) == pytest.approx(0.5)  # paper wins ¾: 2·¾ − 1
    assert games.duality_gap(RPS, [1.0, 0.0, 0.0]) == pytest.approx(1.0)  # paper beats it surely
    assert games.duality_gap(RPS, games.uniform(3)) == pytest.approx(0.0, abs=1e-15)
    # transitive game: the top response is the equilibrium; the bottom one loses to it with σ(1.5)
    assert games.duality_gap(TRANSITIVE, [0, 0, 0, 1]) == pytest.approx(0.0, abs=1e-15)
    assert games.duality_gap(TRANSITIVE, [1, 0, 0, 0]) == pytest.approx(2 * 0.817574 - 1, abs=1e-6)


def test_duality_gap_is_appendix_f_literally():
    # max_π P(π ≻ π̄) − min_π P(π ≺ π̄) over mixed π, by brute force on a grid of the simplex,
    # equals the closed form 2·max_y P(y ≻ π̄) − 1 for a constant-sum game
    m = random_game(3, 7)
    pi_bar = np.array([0.2, 0.5, 0.3])
    grid = [np.array([a, b, 1 - a - b]) for a in np.linspace(0, 1, 41) for b in np.linspace(0, 1, 41) if a + b <= 1 + 1e-12]
    best = max(games.policy_win_prob(m, q, pi_bar) for q in grid)
    worst = min(games.policy_win_prob(m, pi_bar, q) for q in grid)  # P(q ≺ π̄) = P(π̄ ≻ q)
    assert games.duality_gap(m, pi_bar) == pytest.approx(best - worst, abs=1e-12)
    assert games.duality_gap(m, pi_bar) == pytest.approx(2 * games.win_rates(m, pi_bar).max() - 1)


# ------------------------------------------------------------------------- Nash by LP


def test_nash_of_rock_paper_scissors_is_uniform():
    pi, value = games.nash_equilibrium(RPS)
    assert pi == pytest.approx(games.uniform(3), abs=1e-9)
    assert value == pytest.approx(0.5)
    assert np.ptp(games.nash_ranges(RPS), axis=1) == pytest.approx(np.zeros(3), abs=1e-6)  # unique


def test_nash_of_the_shipped_intransitive_game_is_not_uniform():
    # weighted cycle with advantages α = A[0,1] = 0.8, β = A[1,2] = 0.4, γ = A[2,0] = 0.2 (A = 2P − 1):
    # the equilibrium of the cycle is ∝ (β, γ, α) = (2/7, 1/7, 4/7); the decoy y3 earns
    # (2/7)(−0.6) + (1/7)(−0.2) + (4/7)(0.2) = −0.6/7 < 0 against it, so it gets no mass
    pi, value = games.nash_equilibrium(INTRANSITIVE)
    assert pi == pytest.approx([2 / 7, 1 / 7, 4 / 7, 0.0], abs=1e-8)
    assert value == pytest.approx(0.5)
    assert games.win_rates(INTRANSITIVE, pi) @ np.eye(4)[3] == pytest.approx(0.5 - 0.3 / 7)
    ranges = games.nash_ranges(INTRANSITIVE)
    assert np.ptp(ranges, axis=1).max() < 1e-6  # the equilibrium is unique
    assert games.duality_gap(INTRANSITIVE, pi) == pytest.approx(0.0, abs=1e-8)


def test_nash_of_a_transitive_game_is_the_top_response():
    pi, value = games.nash_equilibrium(TRANSITIVE)
    assert pi == pytest.approx([0, 0, 0, 1], abs=1e-9)
    assert value == pytest.approx(0.5)


def test_nash_of_random_games_has_zero_gap_and_value_half():
    for seed in range(5):
        m = random_game(7, seed)
        pi, value = games.nash_equilibrium(m)
        assert value == pytest.approx(0.5, abs=1e-9)
        assert games.duality_gap(m, pi) < 1e-8
        assert games.nash_distance(m, pi)[0] < 1e-8


def test_nash_distance_is_to_the_nearest_equilibrium():
    assert games.nash_distance(RPS, [1, 0, 0])[0] == pytest.approx(2 / 3, abs=1e-8)
    # every policy is an equilibrium of the all-ties game: distance 0, the set is the simplex
    ties = np.full((3, 3), 0.5)
    assert games.nash_distance(ties, [0.7, 0.2, 0.1])[0] == pytest.approx(0.0, abs=1e-9)
    assert np.allclose(games.nash_ranges(ties), [[0, 1]] * 3, atol=1e-9)
    # two clones of the top response of a strict order: the equilibria are [0, a, 1 − a]; the
    # policy [0.2, 0.5, 0.3] is nearest to [0, 0.5 + s, 0.3 + t] with s + t = 0.2: TV = 0.2
    clones = np.array([[0.5, 0.0, 0.0], [1.0, 0.5, 0.5], [1.0, 0.5, 0.5]])
    tv, nearest = games.nash_distance(clones, [0.2, 0.5, 0.3])
    assert tv == pytest.approx(0.2, abs=1e-8)
    assert nearest[0] == pytest.approx(0.0, abs=1e-7) and games.duality_gap(clones, nearest) < 1e-7


# --------------------------------------------------------------------- the exact update


def test_mwu_step_hand_worked():
    # η = log 2, π_t = [½, ½, 0]: P(y ≻ π_t) = [¼, ¾, ½], weights ½·2^¼, ½·2^¾, 0
    got = games.mwu_step(RPS, [0.5, 0.5, 0.0], math.log(2))
    r2 = math.sqrt(2)
    assert got == pytest.approx([1 / (1 + r2), r2 / (1 + r2), 0.0])


def test_mwu_is_eq_3_2_with_its_partition_function():
    m, pi, eta = random_game(4, 3), np.array([0.1, 0.2, 0.3, 0.4]), 0.7
    w = pi * np.exp(eta * (m @ pi))
    z = w.sum()  # Z_{π_t} = Σ_y π_t(y) exp(η P(y ≻ π_t))
    assert games.mwu_step(m, pi, eta) == pytest.approx(w / z)
    # eq. (3.3): log(π_{t+1}/π_t) = η P(y ≻ π_t) − log Z
    assert np.log(games.mwu_step(m, pi, eta) / pi) == pytest.approx(eta * (m @ pi) - math.log(z))


def test_mwu_trajectory_shape_and_fixed_point():
    traj = games.mwu(RPS, [0.5, 0.3, 0.2], 1.0, 5)
    assert traj.shape == (6, 3) and traj[0] == pytest.approx([0.5, 0.3, 0.2])
    assert traj[1] == pytest.approx(games.mwu_step(RPS, [0.5, 0.3, 0.2], 1.0))
    assert games.mwu(RPS, games.uniform(3), 1.0, 3)[-1] == pytest.approx(games.uniform(3))  # Nash is fixed


def test_running_average_hand_worked():
    assert games.running_average([[1, 0], [0, 1], [0, 1]]) == pytest.approx(np.array([[1, 0], [0.5, 0.5], [1 / 3, 2 / 3]]))


def test_gap_bound_hand_worked():
    # η = 1, T = 1, π_1 uniform on 2: 1 − (1 − e⁻¹) + 2 log 2 = e⁻¹ + 2 log 2
    assert games.mwu_gap_bound(1.0, 1, [0.5, 0.5]) == pytest.approx(math.exp(-1) + 2 * math.log(2))
    # with the horizon step η = 2√(L/T) the bound is at most 2√(L/T)
    for horizon in (1, 10, 1000):
        pi1 = [0.5, 0.3, 0.2]
        eta = games.horizon_eta(horizon, pi1)
        assert games.mwu_gap_bound(eta, horizon, pi1) <= 2 * math.sqrt(math.log(5) / horizon) + 1e-12


HORIZONS = (4, 16, 64, 256, 1024)


@pytest.mark.parametrize("name, m, pi1", [
    ("rps", RPS, np.array([0.5, 0.3, 0.2])),  # the shipped π_1: L = log 5, c = 2√(log 5) ≈ 2.537
    ("intransitive", INTRANSITIVE, games.uniform(4)),  # L = log 4, c = 2√(log 4) ≈ 2.355
])
def test_exact_update_average_gap_is_at_most_c_over_sqrt_t(name, m, pi1):
    """Theorem 3.1 for the exact update: with η = 2√(L/T), L = log(1/min π_1), the average of
    π_1..π_T has duality gap ≤ c/√T, c = 2√L (appendix F, games.mwu_gap_bound)."""
    c = 2 * math.sqrt(-math.log(pi1.min()))
    ratios = []
    for horizon in HORIZONS:
        eta = games.horizon_eta(horizon, pi1)
        policies = games.mwu(m, pi1, eta, horizon - 1)  # π_1 .. π_T
        gap = games.duality_gap(m, policies.mean(axis=0))
        assert gap <= games.mwu_gap_bound(eta, horizon, pi1) <= c / math.sqrt(horizon) + 1e-12
        ratios.append(gap * math.sqrt(horizon))
    # observed: √T · gap stays between 0.28 and 0.97, below c/2 (rps 0.29–0.80 = 0.31 c at most,
    # intransitive 0.54–0.97 = 0.41 c at most)
    assert max(ratios) < 0.5 * c


def test_exact_update_with_a_fixed_step_average_gap_shrinks():
    # the shipped recipes fix η = 1: the average still approaches the equilibrium over 128 steps
    # (measured gaps at T = 128: rps 0.055, intransitive 0.023); the last iterate does not
    # (rps 0.946: it spirals out towards the boundary; intransitive 0.163)
    for m, pi1 in ((RPS, np.array([0.5, 0.3, 0.2])), (INTRANSITIVE, games.uniform(4))):
        traj = games.mwu(m, pi1, 1.0, 127)
        avg = games.running_average(traj)
        assert games.duality_gap(m, avg[-1]) < 0.07
        assert games.duality_gap(m, traj[-1]) > 0.1
