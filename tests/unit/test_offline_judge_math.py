"""Pure-math tests of the offline judge: no model is loaded, everything runs in milliseconds."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from sppo_nemo.backends.offline_judge import (
                                              CRITERIA,
                                              DEFAULT_TAUS,
                                              DEFAULT_WEIGHTS,
                                              EMPTY_PENALTY,
                                              OfflineJudge,
                                              answer_correct,
                                              cleanliness,
                                              concision,
                                              criterion_scores,
                                              extract_numbers,
                                              matrix_from_scores,
                                              pairwise_prob,
                                              parse_number,
                                              preference_margin,
                                              repeated_trigram_fraction,
                                              )
from sppo_nemo.schema.protocols import Prompt, check_preference_matrix

pytestmark = pytest.mark.unit

ONES = {c: 1.0 for c in CRITERIA}


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def random_features(rng: random.Random) -> dict[str, float]:
    return {c: rng.uniform(-3, 3) for c in CRITERIA if rng.random() < 0.9}


# ----------------------------------------------------------------------------- combination
def test_pairwise_prob_hand_worked():
    """One criterion, w = 1, τ = 0.5, d = 1: s = tanh(2) = 0.964028, P = σ(0.964028) = 0.723927.

    With α = 2: P = σ(1.928055) = 0.873034.
    """
    fa, fb = {"concise": 0.0}, {"concise": -1.0}
    taus = {**DEFAULT_TAUS, "concise": 0.5}
    assert preference_margin(fa, fb, ONES, taus) == pytest.approx(0.964028, abs=1e-6)
    assert pairwise_prob(fa, fb, ONES, taus) == pytest.approx(0.723927, abs=1e-6)
    assert pairwise_prob(fa, fb, ONES, taus, alpha=2.0) == pytest.approx(0.873034, abs=1e-6)


def test_saturation_bounds_each_criterion():
    """A huge margin on one criterion counts at most w_c: tanh(1000) = 1, so s = 1 − tanh(1) = 0.238406."""
    fa = {"concise": 1000.0, "clean": 0.0}
    fb = {"concise": 0.0, "clean": 1.0}
    assert preference_margin(fa, fb, ONES, ONES) == pytest.approx(1 - math.tanh(1), abs=1e-12)


def test_antisymmetry_is_exact_and_diagonal_half():
    rng = random.Random(0)
    for _ in range(2000):
        fa, fb = random_features(rng), random_features(rng)
        alpha = rng.uniform(0.1, 5)
        p, q = pairwise_prob(fa, fb, DEFAULT_WEIGHTS, DEFAULT_TAUS, alpha), pairwise_prob(
            fb, fa, DEFAULT_WEIGHTS, DEFAULT_TAUS, alpha)
        assert p + q == 1.0 and q == 1.0 - p and 0.0 <= p <= 1.0
        assert pairwise_prob(fa, fa, DEFAULT_WEIGHTS, DEFAULT_TAUS, alpha) == 0.5


def test_criteria_missing_or_zero_weight_are_skipped():
    """'reference' only in fa, 'correct' weighted 0: both ignored, so P = ½."""
    fa = {"reference": 0.9, "correct": 1.0, "concise": 0.0}
    fb = {"correct": 0.0, "concise": 0.0}
    assert pairwise_prob(fa, fb, {**ONES, "correct": 0.0}, DEFAULT_TAUS) == 0.5


def test_condorcet_cycle_generic():
    """Three criteria, w = τ = 1, A = (3, 1, 2), B = (2, 3, 1), C = (1, 2, 3).

    Every pair is won 2 criteria to 1 by margins (+1, +1, −2) in some order:
    s = 2·tanh(1) − tanh(2) = 1.523188 − 0.964028 = 0.559161, P = σ(0.559161) = 0.636258.
    So P(A≻B) = P(B≻C) = P(C≻A) = 0.636 > ½: no utility u has P = σ(u_a − u_b) (that would need
    u_A > u_B > u_C > u_A), i.e. the judge is not Bradley-Terry.
    """
    a = {"reference": 3.0, "concise": 1.0, "clean": 2.0}
    b = {"reference": 2.0, "concise": 3.0, "clean": 1.0}
    c = {"reference": 1.0, "concise": 2.0, "clean": 3.0}
    for x, y in ((a, b), (b, c), (c, a)):
        assert pairwise_prob(x, y, ONES, ONES) == pytest.approx(0.636258, abs=1e-6)
    m = matrix_from_scores([a, b, c], ONES, ONES)
    assert m[0, 1] > 0.5 and m[1, 2] > 0.5 and m[2, 0] > 0.5


def test_condorcet_cycle_with_default_weights():
    """The same cycle under the defaults (w = 1, τ_ref = 0.1, τ_concise = 1, τ_clean = 0.25).

    reference 0.3/0.2/0.1, concise −2/0/−1, clean −0.25/−0.5/0: scaled margins are again
    (+1, −2, +1), (+1, +1, −2), (−2, +1, +1); equal 'correct' and 'on_topic' add 0; P = 0.636258.
    """
    common = {"correct": 1.0, "on_topic": 0.5}
    a = {**common, "reference": 0.3, "concise": -2.0, "clean": -0.25}
    b = {**common, "reference": 0.2, "concise": 0.0, "clean": -0.5}
    c = {**common, "reference": 0.1, "concise": -1.0, "clean": 0.0}
    for x, y in ((a, b), (b, c), (c, a)):
        assert pairwise_prob(x, y, DEFAULT_WEIGHTS, DEFAULT_TAUS) == pytest.approx(0.636258, abs=1e-6)


def test_matrix_from_scores_is_a_preference_matrix():
    rng = random.Random(1)
    scores = [random_features(rng) for _ in range(7)]
    m = matrix_from_scores(scores, DEFAULT_WEIGHTS, DEFAULT_TAUS, 1.3)
    check_preference_matrix(m)
    assert np.array_equal(m + m.T, np.ones((7, 7)))
    assert np.all(np.diag(m) == 0.5)
    assert matrix_from_scores(scores[:1], DEFAULT_WEIGHTS, DEFAULT_TAUS).tolist() == [[0.5]]


# ----------------------------------------------------------------------------- correctness
@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 1,000.", [1000.0]),
        ("12 + 30 = 42", [12.0, 30.0, 42.0]),
        ("x = -3, y = 2.5 and -.5", [-3.0, 2.5, -0.5]),
        ("pages 3-4 cost $1,234,567.89", [3.0, 4.0, 1234567.89]),
        ("1,2,3", [1.0, 2.0, 3.0]),
        ("no numbers here", []),
    ],
)
def test_extract_numbers(text, expected):
    assert extract_numbers(text) == expected


def test_parse_number():
    assert parse_number("1,000") == 1000.0
    assert parse_number(" $42. ") == 42.0
    assert parse_number("-3.5") == -3.5
    assert parse_number("50%") == 50.0
    assert parse_number("Paris") is None
    assert parse_number("42 apples") is None


@pytest.mark.parametrize(
    "response, answer, expected",
    [
        ("The answer is 1,000.", "1000", 1.0),
        ("The answer is 1000", "1,000", 1.0),
        ("12 + 30 = 42", "42", 1.0),
        ("42.0", "42", 1.0),
        ("x = -3", "-3", 1.0),
        ("The result is \\boxed{42}", "42", 1.0),
        ("42? No wait. The answer is: **42**", "42", 1.0),
        ("12 + 30 = 44", "42", 0.0),  # the answer never appears
        ("The answer is 44, not 42.", "42", 0.0),  # a different stated final answer
        ("Maybe 42. Final answer: 44", "42", 0.0),
        ("x = 3", "-3", 0.0),
        ("The capital of France is paris.", "Paris", 1.0),  # words: case-insensitive
        ("Parisian cafes are nice.", "Paris", 0.0),  # ...and whole-word only
        ("I love New York!", "new york", 1.0),
        ("Anything at all", "", 0.0),
    ],
)
def test_answer_correct(response, answer, expected):
    assert answer_correct(response, answer) == expected


# ----------------------------------------------------------------------------- concision, clean
def test_concision_values():
    """ref_words = max(words(reference), 10), or 27 without one; f = −clip(words/ref_words − 1.5, 0, 3)."""
    assert concision(words(40), None) == 0.0  # 40/27 = 1.48 < 1.5
    assert concision(words(54), None) == pytest.approx(-0.5)  # 54/27 − 1.5
    assert concision(words(50), words(20)) == pytest.approx(-1.0)  # 50/20 − 1.5
    assert concision(words(25), words(4)) == pytest.approx(-1.0)  # ref floored to 10: 2.5 − 1.5
    assert concision(words(200), words(20)) == -3.0  # 8.5, clipped
    assert concision(words(2), words(20)) == 0.0
    for empty in ("", "   \n", "42"):
        assert concision(empty, words(20)) == EMPTY_PENALTY == -4.0


def test_repeated_trigrams_and_template_tokens():
    """'a b c a b c' has trigrams abc, bca, cab, abc: 1 of 4 repeats -> 0.25."""
    assert repeated_trigram_fraction("a b c a b c") == 0.25
    assert repeated_trigram_fraction("one two") == 0.0
    assert repeated_trigram_fraction("la " * 12) == pytest.approx(9 / 10)
    assert cleanliness("The answer is 42.") == 0.0
    assert cleanliness("a b c a b c") == -0.25
    assert cleanliness("The answer is 42.<|im_end|>") == -1.0
    assert cleanliness("<|im_start|>assistant\nThe answer is 42.") == -1.0
    assert cleanliness("Sure.\nassistant\nThe answer is 42.") == -1.0
    assert cleanliness("The assistant says 42.") == 0.0
    # 13 words, 11 trigrams of which 2 distinct: repeat = 9/11, plus 1 for the template token
    assert cleanliness(("la " * 12) + "<|im_end|>") == pytest.approx(-(9 / 11) - 1.0)


def test_criterion_scores_skip_what_does_not_apply():
    bare = criterion_scores(Prompt("p", "Say hi."), "Hello there!")
    assert set(bare) == {"concise", "clean"}
    p = Prompt("q", "What is 12 + 30?", reference="12 + 30 = 42", answer="42")
    e = np.array([1.0, 0.0])
    full = criterion_scores(p, "It is 42.", e, np.array([0.6, 0.8]), np.array([0.0, 1.0]))
    assert full == {"concise": 0.0, "clean": 0.0, "correct": 1.0, "reference": 0.0, "on_topic": 0.6}


# ----------------------------------------------------------------------------- the judge, no model
def test_judge_validates_without_loading_the_model():
    with pytest.raises(ValueError, match="unknown criteria"):
        OfflineJudge(weights={"length": 1.0})
    with pytest.raises(ValueError):
        OfflineJudge(temperature=0.0)
    with pytest.raises(ValueError):
        OfflineJudge(weights={"correct": -1.0})
    judge = OfflineJudge(weights={"on_topic": 0.0}, temperature=0.5)
    assert judge.name == "offline" and judge.alpha == 2.0 and judge.weights["on_topic"] == 0.0
    p = Prompt("p", "What is 2 + 2?")
    with pytest.raises(TypeError, match=r"responses\[0\]\[1\]"):
        judge.preference_matrices([p], [["4", None]])
    with pytest.raises(TypeError, match="list of str, got a str"):
        judge.preference_matrices([p], ["4"])
    with pytest.raises(ValueError, match="lengths differ"):
        judge.preference_matrices([p, p], [["4"]])
    with pytest.raises(TypeError, match=r"b\[0\]"):
        judge.compare([p], ["4"], [4])
    with pytest.raises(ValueError, match="lengths differ"):
        judge.compare([p, p], ["4"], ["5", "6"])
    told = []
    single, empty = judge.preference_matrices([p, p], [["4"], []], progress=told.append)
    assert single.tolist() == [[0.5]] and empty.shape == (0, 0) and told == [1, 1]
    assert judge.compare([], [], []).shape == (0,)
    assert judge._model is None  # nothing above needed the encoder
    judge.close()
