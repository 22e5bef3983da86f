"""Preference mathematics as pure numpy functions: from a judge's logits to the K×K matrix
P(y_i ≻ y_j | x), and from that matrix to the win rates P̂(y ≻ π_t | x) the losses need.

M[i, j] = P(y_i ≻ y_j | x) for K responses y_1..y_K ~ π_t(·|x) of one prompt.
Equations are those of Wu et al., SPPO, arXiv:2405.00675 (eq. 3.5 for the win rates). Every
function works on (K, K) or (..., K, K).

Logits to probabilities (PairRM)
--------------------------------
A pairwise judge such as PairRM gives a logit C[i, j] = s(y_i, y_j | x) for every ordered pair
("y_i is better than y_j" when positive), with C[i, i] = 0. It is *not* antisymmetric
(position bias), so both orders are used. ``probability`` chooses how M is made from C:

``symmetric`` (default)
    M[i, j] = σ((C[i, j] − C[j, i]) / 2): the paper's P = σ(s) (its "relative reward",
    appendix) with s made antisymmetric by averaging the two presentation orders, so M + Mᵀ = 1
    exactly and M[i, i] = ½. (llm-blender's ``compare(..., mode="[A,B]+[B,A]")`` returns the
    un-halved difference C[i, j] − C[j, i] as its logit.) A general preference: no per-response
    score explains it and it can be intransitive.
``score_diff``
    The reference SPPO scripts: llm-blender's ``Blender.rank(return_scores=True)`` aggregates
    s_i = (1/K) Σ_j (C[i, j] − C[j, i]) (K terms, the zero diagonal included), and
    ``compute_prob.py`` sets M[i, j] = σ(s_i − s_j). A Bradley-Terry reading of the judge. With
    ``loss.winrate: average`` this reproduces the reference scripts' P̂ exactly; it is a fixed
    point of ``loss.winrate: score_diff`` too (logit M[i, j] = s_i − s_j gives back the same s
    up to a constant).

Both readings of "one score per response" (from logits here, from probabilities in
:func:`score_diff_win_rates`) go through :func:`score_probabilities`.
"""

from __future__ import annotations

import numpy as np

PROBABILITIES = ("symmetric", "score_diff")
_EPS = 1e-6


# ----------------------------------------------------------------------------- logits → M
def sigmoid_antisymmetric(d: np.ndarray) -> np.ndarray:
    """σ(d) computed from |d| so that σ(−d) == 1 − σ(d) holds exactly for an antisymmetric d."""
    d = np.asarray(d, dtype=np.float64)
    p = 1.0 / (1.0 + np.exp(-np.abs(d)))
    return np.where(d >= 0, p, 1.0 - p)


def symmetric_probabilities(c: np.ndarray) -> np.ndarray:
    """M[i, j] = σ((C[i, j] − C[j, i]) / 2) for a K×K logit matrix C (diagonal ignored).

    Hand-worked: C = [[0, 2], [−1, 0]] gives M[0, 1] = σ(1.5) = 0.8175744762, M[1, 0] = 1 − that.
    """
    c = np.asarray(c, dtype=np.float64)
    return sigmoid_antisymmetric((c - np.swapaxes(c, -1, -2)) / 2.0)


def score_probabilities(s: np.ndarray) -> np.ndarray:
    """M[i, j] = σ(s_i − s_j) for one score per response (a Bradley-Terry matrix), M + Mᵀ = 1."""
    s = np.asarray(s, dtype=np.float64)
    return sigmoid_antisymmetric(s[..., :, None] - s[..., None, :])


def scored_from_logits(logit_matrices, probability: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(M, aggregated scores) per prompt from a logit judge's K×K logit matrices, M by the judge's
    ``probability`` convention (:func:`probabilities`), the scores by :func:`aggregated_scores`."""
    return [(probabilities(c, probability), aggregated_scores(c)) for c in logit_matrices]


def aggregated_scores(c: np.ndarray) -> np.ndarray:
    """llm-blender's ``Blender.rank`` scores: s_i = (1/K) Σ_j (C[i, j] − C[j, i]), diagonal 0.

    Hand-worked: C = [[0, 2, 1], [0, 0, 0], [−1, 3, 0]] gives s = [4/3, −5/3, 1/3].
    """
    c = np.array(c, dtype=np.float64)
    k = c.shape[-1]
    c[..., np.arange(k), np.arange(k)] = 0.0
    return (c - np.swapaxes(c, -1, -2)).mean(axis=-1)


def score_diff_probabilities(c: np.ndarray) -> np.ndarray:
    """M[i, j] = σ(s_i − s_j) with s = :func:`aggregated_scores` (the reference SPPO scripts)."""
    return score_probabilities(aggregated_scores(c))


def probabilities(c: np.ndarray, method: str) -> np.ndarray:
    """The judge's ``probability`` convention applied to a logit matrix (K ≤ 1: all ½)."""
    c = np.asarray(c, dtype=np.float64)
    if c.shape[-1] <= 1:
        return np.full(c.shape, 0.5)
    match method:
        case "symmetric":
            return symmetric_probabilities(c)
        case "score_diff":
            return score_diff_probabilities(c)
        case _:
            raise ValueError(f"probability={method!r}; use one of {PROBABILITIES}")


# ----------------------------------------------------------------------------- M → win rates
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

    The diagonal is taken as ½ whatever the input holds.

    Hand-worked (K = 3): M = [[½, 1, 1], [0, ½, 1], [0, 0, ½]] (a strict order) gives
    P̂ = [2.5/3, 1.5/3, 0.5/3] = [0.8333, 0.5, 0.1667], the (i − ½)/K of appendix E.
    """
    return _with_half_diagonal(m).mean(axis=-1)


def matrix_scores(m: np.ndarray) -> np.ndarray:
    """One score per response read back from a probability matrix: s_i = (1/K) Σ_k logit M[i, k]
    (diagonal ½, logit 0; M clipped to [1e-6, 1 − 1e-6]), for judges that give no logits.

    On a ``symmetric`` PairRM matrix this is exactly half of :func:`aggregated_scores` of the
    logits (logit σ(d/2) = d/2), so it ranks the responses as the judge's scores do; on a
    ``score_diff`` matrix it gives the scores back up to a constant. Both hold only while no
    |logit| exceeds the clip (about 13.8) and the 8-decimal rounding of stored matrices: beyond
    that the stored matrix has lost the logit, which is why the annotate stage keeps the judge's
    own scores (``matrices.jsonl`` "scores") where it has logits.

    Hand-worked: M = [[½, σ(2)], [σ(−2), ½]] gives s = [1, −1].
    """
    m = _with_half_diagonal(m)
    return (np.log(np.clip(m, _EPS, 1 - _EPS)) - np.log(np.clip(1 - m, _EPS, 1 - _EPS))).mean(axis=-1)


def score_win_rates(s: np.ndarray) -> np.ndarray:
    """P̂_i = (1/K) Σ_j σ(s_i − s_j) (diagonal σ(0) = ½): the reference SPPO scripts' win rate
    (uclaml/SPPO ``compute_prob.py``) from one score per response.

    Hand-worked: s = [1, −1]: [(½ + σ(2))/2, (½ + σ(−2))/2] = [0.6904, 0.3096].
    """
    return score_probabilities(s).mean(axis=-1)


def score_diff_win_rates(m: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """The reference SPPO scripts' convention, offered for comparison (not the paper's eq. 3.5).

    The reference scripts never use the pairwise probabilities directly: they take one aggregated
    PairRM score per response, s_i = (1/K) Σ_k (C[i, k] − C[k, i]) (appendix C; llm-blender's
    ``Blender.rank(return_scores=True)``), rebuild P'(y_i ≻ y_j) = σ(s_i − s_j) and average P' over
    j (:func:`score_win_rates`). A Bradley-Terry reading of the judge: intransitive preferences
    are flattened into one score per response.

    ``scores``: the judge's own aggregated scores (what the annotate stage stores for PairRM and
    llm-blender); with them this equals the reference scripts exactly, on either
    ``judge.probability``. Without them (judges that give no logits) the scores are read back
    from ``m`` by :func:`matrix_scores`, which on a ``symmetric`` PairRM matrix are half the
    judge's scores and so give other P̂ (up to 0.12 apart): exact only on a ``score_diff`` matrix.

    Hand-worked (K = 2): M = [[½, σ(2)], [σ(−2), ½]]: s = [1, −1], P'(1 ≻ 2) = σ(2) ≈ 0.8808,
    P̂ = [(0.5 + 0.8808)/2, (0.5 + 0.1192)/2] = [0.6904, 0.3096].
    """
    return score_win_rates(matrix_scores(m) if scores is None else np.asarray(scores, dtype=np.float64))


def estimate(m: np.ndarray, method: str, scores: np.ndarray | None = None) -> np.ndarray:
    """Dispatch on the recipe's ``loss.winrate``: ``average`` (eq. 3.5) or ``score_diff`` (with the
    judge's ``scores`` when it gave them)."""
    match method:
        case "average":
            return win_rate_estimates(m)
        case "score_diff":
            return score_diff_win_rates(m, scores)
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


def best_worst(m: np.ndarray, scores: np.ndarray | None = None, rank_by: str = "win_rate") -> tuple[int, int]:
    """Indices of the winner y_w and loser y_l (appendix C), by ``rank_by``:

    ``win_rate``: the average preference P̂ (eq. 3.5);
    ``score``: the judge's aggregated score s_i = (1/K) Σ_k (C[i, k] − C[k, i]) of its logits, as
        the paper (section 4.1: "the highest and lowest PairRM score") and the reference code
        rank; ``scores`` None (a judge without logits): :func:`matrix_scores` of ``m``.

    On a transitive matrix the two orderings agree; on intransitive ones they can differ (P̂
    averages probabilities, the score averages logits). Ties resolve to the lowest index, so the
    choice is deterministic; for K ≥ 2 the two indices differ even when every response ties.

    Hand-worked: P̂ = [0.4, 0.7, 0.4] → (1, 0).
    """
    if rank_by == "score":
        key = matrix_scores(m) if scores is None else np.asarray(scores, dtype=np.float64)
    elif rank_by == "win_rate":
        key = win_rate_estimates(m)
    else:
        raise ValueError(f"rank_by={rank_by!r}; use win_rate or score")
    best = int(np.argmax(key))
    rest = [i for i in range(len(key)) if i != best]
    worst = rest[int(np.argmin(key[rest]))]
    return best, worst


def estimator_sample(k: int, best: int, worst: int, n: int | None) -> list[int]:
    """The responses that estimate P̂ and log Z (appendix D.3): all K (n None), or the winner,
    the loser and the first n − 2 others in sampled order (the samples are i.i.d., so the first
    ones are a random choice).

    Hand-worked: K = 5, winner 3, loser 1, n = 3 → [3, 1, 0]; n = 2 → [3, 1].
    """
    if n is None or n >= k:
        return list(range(k))
    others = [i for i in range(k) if i not in (best, worst)]
    return [best, worst] + others[:n - 2]
