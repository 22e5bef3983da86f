"""Our PairRM backend against llm-blender's own PairRM code, same weights, same inputs, fp32.

llm-blender 0.0.2 does not import on transformers 5, so its side runs in a separate virtualenv
built once by scripts/blender_venv.sh (cached under ~/.cache/sppo-nemo/blender-venv, or
$SPPO_BLENDER_VENV; about a minute on a 2-core machine, pip from the package registry) and is
driven through scripts/pairrm_reference.py. Weights cross both ways:

- ours → theirs: a random tiny PairRM made here, saved in the PairRM-hf layout (read by
  llm-blender's ``DebertaV2PairRM.from_pretrained``) and in the original llm-blender/PairRM layout
  with a bare sentencepiece backbone tokenizer (read by ``Blender.loadranker``, run through its
  collator and ``_full_predict``, and ``Blender.rank`` for the aggregated scores);
- theirs → ours: a random ``DebertaV2PairRM`` made and saved by llm-blender, loaded here.

The test is skipped only when that environment cannot be built because the package registry is
unreachable; any other failure to build it fails the test.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sppo_nemo.backends.pairrm.checkpoint import save_pairrm
from sppo_nemo.backends.pairrm.inputs import candidate_budget
from sppo_nemo.backends.pairrm.judge import PairRMJudge
from sppo_nemo.backends.pairrm.tokenizer import load_pairrm_tokenizer
from sppo_nemo.maths.preference import aggregated_scores
from sppo_nemo.schema.protocols import Prompt
from sppo_nemo.testing.pairrm import random_pairrm, save_test_tokenizer, train_test_tokenizer
from tests.helpers import side_venv_python

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-5
SYLLABLES = ["ka", "lo", "mi", "tre", "su", "vin", "or", "el", "dag", "pu", "shi", "nor", "bel", "qua", "ix", "zo"]


def words(rng: random.Random, n: int) -> str:
    out = []
    for i in range(n):
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3)))
        out.append(w + ("." if i % 11 == 10 else ("," if i % 7 == 6 else "")))
    return " ".join(out)


@pytest.fixture(scope="module")
def blender_python() -> Path:
    return side_venv_python("blender_venv.sh")


def reference(python: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([str(python), str(ROOT / "scripts" / "pairrm_reference.py"), *args], capture_output=True,
                          text=True, timeout=1200, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        raise AssertionError(f"pairrm_reference.py {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout


def make_cases() -> list[dict]:
    """Several prompts, K = 2, 3, 5, lengths that reach each budget (checked in the test below).

    Long sequences cost most of this test's time (DeBERTa's attention is quadratic even at
    hidden size 32), so the long texts sit in small-K cases and K = 5 gets short ones."""
    rng = random.Random(7)
    return [
        # short everything, K = 2
        {"prompt": "What is the capital of " + words(rng, 3) + "?",
         "candidates": ["It is " + words(rng, 4) + ".", words(rng, 9)]},
        # short source, K = 3: one candidate beyond its enlarged budget 412 + (1224 - |source|) // 2;
        # an empty candidate
        {"prompt": words(rng, 12), "candidates": [words(rng, 1400), words(rng, 60), ""]},
        # source beyond 1224 tokens (cut to 1224, so candidates get exactly 412), both candidates
        # beyond 412: sequences of exactly 2048 tokens; K = 2
        {"prompt": words(rng, 1500), "candidates": [words(rng, 500), words(rng, 450)]},
        # mid-size source: a candidate budget between 412 and 1022, one candidate beyond it; K = 3
        {"prompt": words(rng, 250), "candidates": [words(rng, 900), words(rng, 5), words(rng, 40)]},
        # K = 5, short: a literal [SEP], whitespace only, unicode (NFKC material), newlines and tabs
        {"prompt": "Résumé of the ﬁrst ＡＢＣ chapter:\n\n" + words(rng, 40),
         "candidates": ["Caf\u00e9 déjà vu —  " + words(rng, 30), "line one\nline two\r\n\ttab " + words(rng, 10),
                        "Yes [SEP] no " + words(rng, 20), "   \n\t ", "ＡＢＣ " + words(rng, 15)]},
    ]


@pytest.fixture(scope="module")
def setup(blender_python, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairrm_eq")
    rng = random.Random(0)
    corpus = [words(rng, 60) for _ in range(300)] + ["Résumé café déjà vu line tab ＡＢＣ ﬁrst capital What is"]
    # PairRM-hf layout: tokenizer.json with the prefix tokens
    tok_dir = save_test_tokenizer(train_test_tokenizer(corpus, vocab_size=300), tmp / "tok")
    tokens = load_pairrm_tokenizer(tok_dir)
    ours = random_pairrm(tokens.vocab_size, "tiny", seed=0)
    hf_ours = save_pairrm(ours, tok_dir, tmp / "ours_hf")
    # original layout: a bare spm.model backbone (like microsoft/deberta-v3-large), trained by
    # sentencepiece in the reference environment
    (tmp / "corpus.txt").write_text("\n".join(corpus))
    reference(blender_python, "train-spm", "--corpus", str(tmp / "corpus.txt"), "--out", str(tmp / "spm"),
              "--vocab-size", "300")
    spm_tokens = load_pairrm_tokenizer(tmp / "spm")
    ours_orig = random_pairrm(spm_tokens.vocab_size, "tiny", seed=1)
    orig_ours = save_pairrm(ours_orig, tmp / "spm", tmp / "ours_original", layout="original",
                            backbone_dir=tmp / "backbone")
    # theirs → ours
    cfg = {k: v for k, v in ours.config.to_dict().items()
           if k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                    "relative_attention", "max_relative_positions", "position_buckets", "norm_rel_ebd",
                    "share_att_key", "pos_att_type", "position_biased_input", "pad_token_id", "pooler_hidden_size")}
    (tmp / "cfg.json").write_text(json.dumps(cfg))
    reference(blender_python, "make-hf", "--config", str(tmp / "cfg.json"), "--tokenizer", str(tok_dir),
              "--out", str(tmp / "theirs_hf"), "--seed", "3")
    cases = make_cases()
    (tmp / "cases.json").write_text(json.dumps(cases))
    return {"tmp": tmp, "cases": cases, "ours_hf": hf_ours, "ours_original": orig_ours, "theirs_hf": tmp / "theirs_hf"}


def theirs(blender_python, setup, layout: str, model: Path) -> dict:
    out = setup["tmp"] / f"ref_{model.name}.json"
    reference(blender_python, "logits", "--layout", layout, "--model", str(model), "--cases",
              str(setup["tmp"] / "cases.json"), "--out", str(out))
    return json.loads(out.read_text())


def ours(model: Path, cases: list[dict], **kw):
    judge = PairRMJudge(str(model), device="cpu", **kw)
    prompts = [Prompt(f"p{n}", c["prompt"]) for n, c in enumerate(cases)]
    return judge, judge.logit_matrices(prompts, [c["candidates"] for c in cases])


def max_diff(a: list, b: list) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))


def test_cases_hit_every_budget(setup):
    """The cases reach each truncation budget: a 1224-token source with 412-token candidates next
    to it (2048 tokens in all), a candidate at its enlarged budget next to a short source, and
    one at an intermediate budget."""
    enc = PairRMJudge(str(setup["ours_hf"]), device="cpu").encoder
    cases = setup["cases"]
    src = enc.encode_sources([c["prompt"] for c in cases])
    cands = [enc.encode_candidates(c["candidates"]) for c in cases]

    def pair(n, i, j):  # (sequence length, tokens of the first candidate)
        ids, _, p1, p2 = enc.pair(src[n], cands[n][i], cands[n][j])
        return len(ids), p2 - p1

    assert len(src[2]) == 1224 and pair(2, 0, 1) == (2048, 412) and pair(2, 1, 0) == (2048, 412)
    assert len(src[1]) < 100 and pair(1, 0, 1)[1] == candidate_budget(len(src[1])) > 1000
    b3 = candidate_budget(len(src[3]))
    assert 412 < b3 < 1000 and pair(3, 0, 1)[1] == b3
    assert [len(c["candidates"]) for c in cases] == [2, 3, 2, 3, 5]


@pytest.mark.parametrize("direction", ["ours_hf", "ours_original", "theirs_hf"])
def test_same_logits_as_llm_blender(blender_python, setup, direction):
    layout = "original" if direction == "ours_original" else "hf"
    model = setup[direction]
    ref = theirs(blender_python, setup, layout, model)
    judge, mats = ours(model, setup["cases"])
    assert [m.shape[0] for m in mats] == [2, 3, 2, 3, 5]
    diff = max_diff(mats, ref["logits"])
    scale = max(float(np.max(np.abs(m))) for m in mats)
    print(f"\n{direction}: max |Δ logit| = {diff:.3g} over {sum(m.size - m.shape[0] for m in mats)} ordered pairs "
          f"(|logit| up to {scale:.3g}); llm-blender took {ref['seconds']:.1f}s, ours {judge.stats['forward_s']:.1f}s")
    assert scale > 0.1  # logits are O(1), so the tolerance means something
    assert diff <= TOL
    if ref["scores"]:  # Blender.rank's aggregated scores (float32 there)
        sdiff = max_diff([aggregated_scores(m) for m in mats], ref["scores"])
        print(f"{direction}: max |Δ Blender.rank score| = {sdiff:.3g}")
        assert sdiff <= TOL


@pytest.mark.parametrize("probability", ["symmetric", "score_diff"])
def test_optional_llm_blender_backend_agrees(blender_python, setup, probability):
    """judge.backend=llm_blender (our wrapper around llm-blender, run where llm-blender imports)
    gives the pairrm backend's matrices."""
    out = setup["tmp"] / f"judge_{probability}.json"
    reference(blender_python, "judge", "--model", str(setup["ours_original"]), "--cases",
              str(setup["tmp"] / "cases.json"), "--out", str(out), "--probability", probability)
    got = json.loads(out.read_text())
    cases = setup["cases"]
    judge = PairRMJudge(str(setup["ours_original"]), device="cpu", probability=probability)
    prompts = [Prompt(f"p{n}", c["prompt"]) for n, c in enumerate(cases)]
    mats = judge.preference_matrices(prompts, [c["candidates"] for c in cases])
    assert max_diff(mats, got["matrices"]) <= TOL
    assert max_diff(judge.logit_matrices(prompts, [c["candidates"] for c in cases]), got["logits"]) <= TOL
    assert got["compare"][0] == pytest.approx(1 - got["compare"][1], abs=1e-12)
    assert got["compare"][0] == pytest.approx(mats[0][0, 1], abs=TOL)


def test_batching_does_not_change_logits(setup):
    """Length-sorted, padded batches give the logits of one-at-a-time unpadded runs."""
    _, one = ours(setup["ours_hf"], setup["cases"], batch_size=1)
    _, many = ours(setup["ours_hf"], setup["cases"], batch_size=64, max_batch_tokens=10**6)
    assert max_diff(one, many) <= TOL


def test_single_order_is_llm_blenders_upper_half(blender_python, setup):
    """judge.pairs: single scores each (i, j) with i < j exactly as llm-blender scores that order,
    and sets C[j, i] = −C[i, j]."""
    ref = theirs(blender_python, setup, "hf", setup["ours_hf"])
    judge, mats = ours(setup["ours_hf"], setup["cases"], pairs="single")
    assert judge.stats["pairs"] == sum(len(c["candidates"]) * (len(c["candidates"]) - 1) // 2 for c in setup["cases"])
    for m, r in zip(mats, ref["logits"]):
        r = np.asarray(r)
        upper = np.triu_indices(len(r), 1)
        assert float(np.max(np.abs(m[upper] - r[upper]))) <= TOL
        np.testing.assert_array_equal(m, -m.T)


def test_encoder_modes_agree_on_every_budget(setup):
    """The faster encoder, per sequence and padded (a GPU's path, here on the CPU), against
    transformers' own forward on the cases that reach every truncation budget (2048 tokens)."""
    judge, fast = ours(setup["ours_hf"], setup["cases"], batch_size=64, max_batch_tokens=10**6)
    for mode in ("padded", "reference"):
        judge.set_attention(mode)
        prompts = [Prompt(f"p{n}", c["prompt"]) for n, c in enumerate(setup["cases"])]
        other = judge.logit_matrices(prompts, [c["candidates"] for c in setup["cases"]])
        assert max_diff(fast, other) <= TOL, mode
