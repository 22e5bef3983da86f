"""Preference games on a finite response set: the exact mathematics, as pure numpy/scipy functions.

A game is an n×n preference matrix P with P[i, j] = P(y_i ≻ y_j | x), P + Pᵀ = 1 (so the
diagonal is ½), and a policy is a probability vector π over the n responses. Equations and
sections are those of Wu et al., SPPO, arXiv:2405.00675 (§2.2, eq. 3.1, appendix F). Nothing here
reads or writes files; the loop's game backends (sppo_nemo/backends/game.py) and
benchmarks/games_suite.py build on it.

Definitions used throughout:

- win probability of a response against a policy, §2.2:  P(y ≻ π) = Σ_j P[y, j] π_j = (P π)_y;
  of a policy against a policy:                            P(π ≻ μ) = πᵀ P μ.
- duality gap, the left side of Theorem 3.1 as written in appendix F:

      gap(π̄) = max_π P(π ≻ π̄) − min_π P(π ≺ π̄),   with P(π ≺ π̄) = P(π̄ ≻ π).

  Both extrema of a linear function over the simplex sit at single responses, so
  gap(π̄) = max_y (P π̄)_y − min_y (π̄ᵀ P)_y; with P + Pᵀ = 1 this is 2·max_y P(y ≻ π̄) − 1.
  It is ≥ 0 (take π = π̄: ½ − ½) and is 0 exactly when π̄ is a von Neumann winner (eq. 2.3).
- the Nash equilibria (von Neumann winners) of the symmetric constant-sum game (2.3): the
  policies π with P(π ≻ y) ≥ ½ for every response y. The game's value is ½; the set is a
  polytope, found by linear programming (:func:`nash_equilibrium`, :func:`nash_distance`).
- distance to equilibrium: total variation ½‖π − π*‖₁ to the NEAREST equilibrium (an LP), so it
  is well defined when the equilibrium is not unique; all shipped games have a unique one.
"""

from __future__ import annotations

import math

import numpy as np

_TOL = 1e-9


# ----------------------------------------------------------------------------- checking


def matrix_problems(p, atol: float = 1e-9) -> list[str]:
    """What keeps ``p`` from being a preference matrix (empty when it is one).

    Square, n ≥ 2, finite entries in [0, 1], P + Pᵀ = 1 within ``atol`` (hence diagonal ½).
    """
    try:
        m = np.asarray(p, dtype=np.float64)
    except (TypeError, ValueError):
        return ["must be a square list of lists of numbers"]
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        return [f"must be square (n×n), got shape {m.shape}"]
    if m.shape[0] < 2:
        return ["needs at least 2 responses"]
    out = []
    if not np.all(np.isfinite(m)):
        return ["entries must be finite numbers"]
    if np.any(m < 0) or np.any(m > 1):
        out.append("entries must lie in [0, 1]")
    bad = np.argwhere(np.abs(m + m.T - 1.0) > atol)
    if len(bad):
        i, j = bad[0]
        out.append(f"P + Pᵀ must equal 1 everywhere (diagonal ½); P[{i}][{j}] + P[{j}][{i}] = "
                   f"{m[i, j] + m[j, i]:.6g}")
    return out


def check_matrix(p) -> np.ndarray:
    """``p`` as a float64 array; ValueError naming the first problem if it is not a game."""
    problems = matrix_problems(p)
    if problems:
        raise ValueError("preference matrix " + "; ".join(problems))
    return np.asarray(p, dtype=np.float64)


# ----------------------------------------------------------------------------- policies


def softmax(logits) -> np.ndarray:
    """π = softmax(θ), stably. Hand-worked: θ = [0, log 3] → [¼, ¾]."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits) -> np.ndarray:
    """log π = θ − logsumexp(θ). Hand-worked: θ = [0, log 3] → [log ¼, log ¾]."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=-1, keepdims=True)
    return z - (top + np.log(np.exp(z - top).sum(axis=-1, keepdims=True)))


def uniform(n: int) -> np.ndarray:
    return np.full(n, 1.0 / n)


def win_rates(p, pi) -> np.ndarray:
    """P(y ≻ π) = E_{y'∼π} P(y ≻ y') for every response y, §2.2: the vector P π.

    Hand-worked (rock, paper, scissors; P[r][s] = P[p][r] = P[s][p] = 1): π = [½, ½, 0] gives
    P(rock ≻ π) = ½·½ + ½·0 = ¼, P(paper ≻ π) = ½·1 + ½·½ = ¾, P(scissors ≻ π) = ½·0 + ½·1 = ½.
    """
    return np.asarray(p, dtype=np.float64) @ np.asarray(pi, dtype=np.float64)


def policy_win_prob(p, pi, mu) -> float:
    """P(π ≻ μ) = E_{y∼π, y'∼μ} P(y ≻ y'), §2.2: πᵀ P μ. P(π ≻ π) = ½ for any π."""
    return float(np.asarray(pi, dtype=np.float64) @ np.asarray(p, dtype=np.float64) @ np.asarray(mu, dtype=np.float64))


def duality_gap(p, pi) -> float:
    """max_π' P(π' ≻ π) − min_π' P(π' ≺ π), the duality gap of Theorem 3.1 / appendix F.

    Computed literally as max_y (P π)_y − min_y (πᵀ P)_y (P(y ≺ π) = P(π ≻ y) = (πᵀP)_y); for a
    constant-sum P this equals 2·max_y P(y ≻ π) − 1. In [0, 1]; 0 iff π is a Nash equilibrium.

    Hand-worked (rock-paper-scissors): π = [½, ½, 0]: max_y P(y ≻ π) = ¾ (paper), gap = ½;
    π = [1, 0, 0]: paper beats it surely, gap = 1; the uniform π: every P(y ≻ π) = ½, gap = 0.
    """
    m = np.asarray(p, dtype=np.float64)
    x = np.asarray(pi, dtype=np.float64)
    return float(max(0.0, (m @ x).max() - (x @ m).min()))


def total_variation(pi, mu) -> float:
    """½ ‖π − μ‖₁. Hand-worked: [1, 0, 0] vs uniform(3) → ½(⅔ + ⅓ + ⅓) = ⅔."""
    return 0.5 * float(np.abs(np.asarray(pi, dtype=np.float64) - np.asarray(mu, dtype=np.float64)).sum())


# ----------------------------------------------------------------------- the exact update


def mwu_step(p, pi, eta: float) -> np.ndarray:
    """One multiplicative-weight update, eq. (3.1)/(3.2):

        π_{t+1}(y) = π_t(y) exp(η P(y ≻ π_t)) / Z_{π_t},   Z_{π_t} = Σ_y π_t(y) exp(η P(y ≻ π_t)).

    Hand-worked (rock-paper-scissors, η = log 2): π_t = [½, ½, 0] has P(y ≻ π_t) = [¼, ¾, ½],
    weights ½·2^¼, ½·2^¾, 0, so π_{t+1} = [1/(1 + √2), √2/(1 + √2), 0] ≈ [0.4142, 0.5858, 0].
    A zero-probability response stays at zero; a Nash equilibrium with full support is a fixed point.
    """
    x = np.asarray(pi, dtype=np.float64)
    logits = np.log(np.where(x > 0, x, 1.0)) + eta * win_rates(p, x)
    logits = np.where(x > 0, logits, -np.inf)
    return softmax(logits)


def mwu(p, pi1, eta: float, steps: int) -> np.ndarray:
    """π_1, π_2, …, π_{steps+1} of the exact update (3.1) from π_1: shape (steps + 1, n).

    Row t − 1 is π_t; the loop's iteration t trains π_{t+1} and evaluates it, so row t matches
    the policy evaluated after iteration t, and row 0 the base policy (iteration 0).
    """
    out = [np.asarray(pi1, dtype=np.float64)]
    for _ in range(steps):
        out.append(mwu_step(p, out[-1], eta))
    return np.stack(out)


def running_average(policies) -> np.ndarray:
    """π̄_T = (1/T) Σ_{t≤T} π_t for every prefix T (the mixture policy of Theorem 3.1).

    Hand-worked: [[1, 0], [0, 1], [0, 1]] → [[1, 0], [½, ½], [⅓, ⅔]].
    """
    x = np.asarray(policies, dtype=np.float64)
    return np.cumsum(x, axis=0) / np.arange(1, len(x) + 1)[:, None]


def gaps(p, policies) -> np.ndarray:
    """duality_gap of each row of ``policies``."""
    return np.array([duality_gap(p, x) for x in np.asarray(policies, dtype=np.float64)])


def mwu_gap_bound(eta: float, horizon: int, pi1) -> float:
    """Upper bound on gap(π̄_T), π̄_T the mixture of π_1..π_T of the exact update, from appendix F.

    Lemma F.1 (Freund & Schapire 1999, Thm 1) with μ_t = π_t and a single response y as the
    comparator, KL(y ‖ π_1) = log(1/π_1(y)) ≤ L := log(1 / min_y π_1(y)), gives for every y
    P(y ≺ π̄_T) ≥ (1 − e^{−η})/(2η) − L/(ηT), hence

        gap(π̄_T) = 1 − 2 min_y P(y ≺ π̄_T) ≤ 1 − (1 − e^{−η})/η + 2L/(ηT)  ≤  η/2 + 2L/(ηT).

    With η = 2√(L/T) (:func:`horizon_eta`) the right side is at most 2√(L/T) = c/√T, c = 2√L
    (c = 2√(log n) from the uniform π_1). Hand-worked: η = 1, T = 1, π_1 uniform on 2 responses:
    1 − (1 − e⁻¹) + 2 log 2 = e⁻¹ + 2 log 2 ≈ 1.7541.
    """
    if eta <= 0 or horizon < 1:
        raise ValueError("need eta > 0 and horizon >= 1")
    big_l = -math.log(float(np.min(pi1)))
    return 1.0 - (-math.expm1(-eta)) / eta + 2.0 * big_l / (eta * horizon)


def horizon_eta(horizon: int, pi1) -> float:
    """η = 2√(L/T), L = log(1/min π_1): the step that makes :func:`mwu_gap_bound` ≤ 2√(L/T)."""
    return 2.0 * math.sqrt(-math.log(float(np.min(pi1))) / horizon)


# ------------------------------------------------------------------------ Nash by LP


def nash_equilibrium(p) -> tuple[np.ndarray, float]:
    """(π*, value): a maximin policy of the game (2.3) by linear programming (scipy HiGHS).

        maximise v  subject to  Σ_i π_i P[i, j] ≥ v for every j,  Σ_i π_i = 1,  π ≥ 0.

    For a symmetric constant-sum game the value is ½; π* is one equilibrium (the LP's vertex).
    Hand-worked: rock-paper-scissors → uniform, ½; a strict order → the top response, ½.
    """
    from scipy.optimize import linprog

    m = check_matrix(p)
    n = len(m)
    c = np.zeros(n + 1)
    c[-1] = -1.0
    a_ub = np.hstack([-m.T, np.ones((n, 1))])  # v − Σ_i π_i P[i, j] ≤ 0
    a_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(n), A_eq=a_eq, b_eq=[1.0],
                  bounds=[(0, None)] * n + [(None, None)], method="highs")
    if res.status != 0:  # cannot happen for a valid matrix: the simplex is compact
        raise RuntimeError(f"Nash LP failed: {res.message}")
    pi = np.clip(res.x[:n], 0.0, None)
    return pi / pi.sum(), float(res.x[-1])


def _nash_set_constraints(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A_ub q ≤ b_ub for the equilibrium set {q ∈ Δ : (qᵀP)_j ≥ ½ for all j}, value ½ − tol."""
    n = len(m)
    return -m.T, np.full(n, -(0.5 - 1e-9))


def nash_ranges(p) -> np.ndarray:
    """(n, 2): the least and the greatest probability of each response over ALL equilibria.

    2n small LPs. The equilibrium is unique iff every range has (numerically) zero width.
    Hand-worked: rock-paper-scissors → every range is [⅓, ⅓].
    """
    from scipy.optimize import linprog

    m = check_matrix(p)
    n = len(m)
    a_ub, b_ub = _nash_set_constraints(m)
    out = np.zeros((n, 2))
    for i in range(n):
        for k, sign in enumerate((1.0, -1.0)):
            c = np.zeros(n)
            c[i] = sign
            res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=np.ones((1, n)), b_eq=[1.0],
                          bounds=[(0, None)] * n, method="highs")
            if res.status != 0:
                raise RuntimeError(f"Nash range LP failed: {res.message}")
            out[i, k] = float(res.x[i])
    return out


def nash_distance(p, pi) -> tuple[float, np.ndarray]:
    """(½ min_{π* Nash} ‖π − π*‖₁, the nearest π*): total-variation distance to the equilibrium set.

    LP over (q, s): minimise Σ s subject to s ≥ π − q, s ≥ q − π, q a Nash equilibrium.
    Hand-worked: rock-paper-scissors, π = [1, 0, 0] → ⅔ (the set is the uniform point).
    """
    from scipy.optimize import linprog

    m = check_matrix(p)
    x = np.asarray(pi, dtype=np.float64)
    n = len(m)
    a_set, b_set = _nash_set_constraints(m)
    eye = np.eye(n)
    a_ub = np.vstack([
        np.hstack([a_set, np.zeros((n, n))]),  # q in the equilibrium set
        np.hstack([-eye, -eye]),  # π − q ≤ s
        np.hstack([eye, -eye]),  # q − π ≤ s
    ])
    b_ub = np.concatenate([b_set, -x, x])
    c = np.concatenate([np.zeros(n), np.ones(n)])
    a_eq = np.concatenate([np.ones(n), np.zeros(n)])[None, :]
    res = linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=[1.0],
                  bounds=[(0, None)] * (2 * n), method="highs")
    if res.status != 0:
        raise RuntimeError(f"Nash distance LP failed: {res.message}")
    q = np.clip(res.x[:n], 0.0, None)
    return 0.5 * float(np.abs(x - q).sum()), q / q.sum()


# --------------------------------------------------------------------- game builders


def from_advantage(a) -> np.ndarray:
    """P = ½ + A/2 for an antisymmetric A with entries in [−1, 1] (the skew-symmetric payoff)."""
    a = np.asarray(a, dtype=np.float64)
    return 0.5 + 0.5 * a


def bradley_terry(scores) -> np.ndarray:
    """The transitive game P[i, j] = σ(s_i − s_j) of a Bradley-Terry model (eq. 2.1)."""
    s = np.asarray(scores, dtype=np.float64)
    d = s[:, None] - s[None, :]
    return 0.5 * (1.0 + np.tanh(0.5 * d))  # σ(d), with P + Pᵀ = 1 exactly
