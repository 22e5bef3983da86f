"""The real `sppo-run` loop annotated by our PairRM backend (a tiny random checkpoint in the
PairRM-hf layout), through the recipe keys judge.backend/model/probability."""

from __future__ import annotations

import json
import random

import pytest

from .conftest import TINY_RECIPE, sppo_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_pairrm(tmp_path_factory):
    from sppo_nemo.backends import pairrm as P

    rng = random.Random(0)
    texts = [" ".join(rng.choice("alpha beta gamma delta kilo meter answer capital".split()) for _ in range(40))
             for _ in range(200)]
    tok = P.train_test_tokenizer(texts, vocab_size=200, with_prefix_tokens=True)
    tok_dir = P.save_test_tokenizer(tok, tmp_path_factory.mktemp("tok"))
    tokens = P.load_pairrm_tokenizer(tok_dir)
    net = P.random_pairrm(tokens.vocab_size, "tiny", seed=0)
    return P.save_pairrm(net, tok_dir, tmp_path_factory.mktemp("pairrm") / "hf")


@pytest.mark.parametrize("probability", ["symmetric", "score_diff"])
def test_loop_with_pairrm_judge(tiny_model, tiny_pairrm, tmp_path, probability):
    sppo_run(tiny_model, TINY_RECIPE, f"output_dir={tmp_path}", "T=1", "judge.backend=pairrm",
             f"judge.model={tiny_pairrm}", f"judge.probability={probability}", "judge.batch_size=8")
    run = tmp_path / "tiny_sppo"
    manifest = json.loads((run / "iter_01/annotate/manifest.json").read_text())
    assert manifest["result"]["judge"] == "pairrm"
    assert manifest["fingerprint"]["judge.probability"] == probability
    for line in (run / "iter_01/annotate/matrices.jsonl").read_text().splitlines():
        m = json.loads(line)["matrix"]
        assert len(m) == 4 and all(abs(m[i][j] + m[j][i] - 1) < 1e-6 for i in range(4) for j in range(4))
    assert json.loads((run / "iter_01/evaluate/metrics.json").read_text())["win_rate_vs_base"] > 0
