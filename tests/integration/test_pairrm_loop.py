"""The real `sppo-run` loop annotated and evaluated by our PairRM backend (a tiny random checkpoint
in the PairRM-hf layout), through the recipe keys judge.backend/model/probability: the stored
matrices and win rates must be the judge's own on the stored responses."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from sppo_nemo.schema.protocols import Prompt, check_preference_matrix

from tests.helpers import TINY_RECIPE, sppo_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_pairrm(tmp_path_factory):
    from sppo_nemo.testing.pairrm import tiny_pairrm_checkpoint

    rng = random.Random(0)
    texts = [" ".join(rng.choice("alpha beta gamma delta kilo meter answer capital".split()) for _ in range(40))
             for _ in range(200)]
    return tiny_pairrm_checkpoint(texts, tmp_path_factory.mktemp("pairrm") / "hf")


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def prompts_and_texts(path):
    rows = read_rows(path)
    return [Prompt(r["prompt_id"], r["prompt"]) for r in rows], [[s["text"] for s in r["samples"]] for r in rows]


@pytest.mark.parametrize("probability", ["symmetric", "score_diff"])
def test_loop_with_pairrm_judge(tiny_model, tiny_pairrm, tmp_path, probability):
    from sppo_nemo.backends.pairrm.judge import PairRMJudge

    sppo_run(tiny_model, TINY_RECIPE, f"output_dir={tmp_path}", "T=1", "K=4", "data.split_size=24", "judge.backend=pairrm",
             f"judge.model={tiny_pairrm}", f"judge.probability={probability}", "judge.batch_size=8")
    run = tmp_path / "tiny_sppo"
    manifest = json.loads((run / "iter_01/annotate/manifest.json").read_text())
    assert manifest["result"]["judge"] == "pairrm"
    judge = PairRMJudge(str(tiny_pairrm), device="cpu", probability=probability)

    # annotate: every stored matrix is the judge's matrix of that prompt's generated responses
    prompts, texts = prompts_and_texts(run / "iter_01/generate/responses.jsonl")
    stored = read_rows(run / "iter_01/annotate/matrices.jsonl")
    assert [r["prompt_id"] for r in stored] == [p.id for p in prompts] and len(stored) == 24
    want = judge.preference_matrices(prompts, texts)
    for row, w in zip(stored, want):
        m = np.asarray(row["matrix"])
        assert m.shape == (4, 4)
        check_preference_matrix(m)
        np.testing.assert_allclose(m, w, atol=1e-6)
    if probability == "score_diff":  # a Bradley-Terry matrix: logit M[i, k] = logit M[i, j] + logit M[j, k]
        m = np.asarray(stored[0]["matrix"])
        lg = np.log(m) - np.log1p(-m)
        np.testing.assert_allclose(lg[0, 2], lg[0, 1] + lg[1, 2], atol=1e-5)

    # evaluate: the win rate against π_1 is the judge's P(own_i ≻ base_i), averaged per prompt then over prompts
    eval_prompts, own = prompts_and_texts(run / "iter_01/evaluate/responses.jsonl")
    _, base = prompts_and_texts(run / "iter_00/evaluate/responses.jsonl")
    n = len(own[0])
    p = judge.compare([q for q in eval_prompts for _ in range(n)], [t for ts in own for t in ts],
                      [t for ts in base for t in ts])
    per_prompt = p.reshape(len(eval_prompts), n).mean(axis=1)
    judged = [r for r in read_rows(run / "iter_01/evaluate/judgements.jsonl") if r["opponent"] == "base"]
    np.testing.assert_allclose([r["win_prob"] for r in judged], per_prompt, atol=1e-6)
    metrics = json.loads((run / "iter_01/evaluate/metrics.json").read_text())
    assert metrics["win_rate_vs_base"] == pytest.approx(per_prompt.mean(), abs=1e-6)
    assert not np.allclose(per_prompt, 0.5)  # the responses differ, so the judge's verdicts do
