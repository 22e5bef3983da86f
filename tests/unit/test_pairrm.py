"""The PairRM backend on a tiny random DeBERTa: probability formulas with hand-worked numbers,
input construction and budgets, batching, checkpoint layouts, bad input, sharded resumable
annotation, and (slow) the full DeBERTa-v3-large shape end to end."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from sppo_nemo.backends import pairrm as P
from sppo_nemo.protocols import Prompt, check_preference_matrix

SYL = ["ka", "lo", "mi", "tre", "su", "vin", "or", "el", "dag", "pu", "shi", "nor"]


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(SYL) for _ in range(rng.randint(1, 3))) for _ in range(n))


def sigma(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.fixture(scope="module")
def bare_tok_dir(tmp_path_factory):
    """A DeBERTa-v3-like tokenizer without PairRM's prefix tokens (like deberta-v3-large's)."""
    rng = random.Random(0)
    tok = P.train_test_tokenizer([words(rng, 50) for _ in range(200)], vocab_size=200, with_prefix_tokens=False)
    return P.save_test_tokenizer(tok, tmp_path_factory.mktemp("bare"))


@pytest.fixture(scope="module")
def tok_dir(bare_tok_dir, tmp_path_factory):
    """The same tokenizer with the prefix tokens saved in it (like PairRM-hf's)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bare_tok_dir / "tokenizer.json"))
    tok.add_tokens(list(P.PREFIX_TOKENS))
    return P.save_test_tokenizer(tok, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tiny(tok_dir, tmp_path_factory):
    tokens = P.load_pairrm_tokenizer(tok_dir)
    net = P.random_pairrm(tokens.vocab_size, "tiny", seed=0)
    hf = P.save_pairrm(net, tok_dir, tmp_path_factory.mktemp("m") / "hf")
    return {"tokens": tokens, "net": net, "hf": hf}


@pytest.fixture()
def judge(tiny):
    return P.PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu", progress=False)


# ----------------------------------------------------------------------------- formulas
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
    np.testing.assert_allclose(m + m.T, 1.0, atol=1e-15)
    check_preference_matrix(m)


def test_aggregated_scores_are_llm_blender_rank_scores():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(5, 5))
    np.fill_diagonal(c, 0.0)
    np.testing.assert_allclose(P.aggregated_scores(c), (c - c.T).mean(axis=-1))  # get_scores_from_cmps


def test_symmetric_is_exactly_antisymmetric_and_can_be_intransitive():
    rng = np.random.default_rng(1)
    c = rng.normal(scale=3, size=(6, 6))
    m = P.symmetric_probabilities(c)
    check_preference_matrix(m, atol=1e-12)
    # a cycle: 0 ≻ 1 ≻ 2 ≻ 0
    cyc = np.array([[0, 2, -2], [-2, 0, 2], [2, -2, 0]], dtype=float)
    mc = P.symmetric_probabilities(cyc)
    assert mc[0, 1] > 0.5 and mc[1, 2] > 0.5 and mc[2, 0] > 0.5
    with pytest.raises(ValueError, match="probability"):
        P.probabilities(c, "bogus")


def test_candidate_budget_and_total():
    assert P.candidate_budget(1224) == 412
    assert P.candidate_budget(3) == 412 + 1221 // 2 == 1022
    for src in range(3, 1225):
        assert src + 2 * P.candidate_budget(src) <= 2048


def test_make_batches_caps_and_covers():
    lengths = [5, 100, 7, 100, 60, 2048, 3]
    batches = P.make_batches(lengths, batch_size=2, max_batch_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [5]  # longer than the cap: alone
    for b in batches:
        assert len(b) <= 2 and (len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 200)
        assert lengths[b[0]] == max(lengths[i] for i in b)
        assert min(lengths[i] for i in b) >= P.MIN_FILL * lengths[b[0]]
    assert [1, 3] in batches and [4] in batches  # 60 is too short to ride with 100
    assert P.make_batches([10] * 5, batch_size=8, max_batch_tokens=10**6) == [[0, 1, 2, 3, 4]]


def test_flops_formula_counts_projections():
    cfg = P.tiny_deberta_config(vocab_size=50)
    f1, f2 = P.deberta_forward_flops(cfg, 1, 10), P.deberta_forward_flops(cfg, 2, 10)
    assert f2 == 2 * f1 and f1 > 2 * 10 * 2 * (4 * 32 * 32 + 2 * 32 * 64)


# ----------------------------------------------------------------------------- inputs
def test_encoder_builds_pairrm_inputs(judge):
    enc = judge.encoder
    t = enc.tokens
    rng = random.Random(3)
    src = enc.encode_sources(["short question", words(rng, 2000)])
    assert src[0][:2] == [t.cls_id, t.source_id] and src[0][-1] == t.sep_id
    assert len(src[1]) == 1224 and src[1][-1] == t.sep_id  # cut at the end, [SEP] kept
    cands = enc.encode_candidates(["an answer", words(rng, 2000)])
    assert cands[0][:2] == [t.cls_id, t.cand_id] and len(cands[1]) == 1022
    ids, p0, p1, p2 = enc.pair(src[1], cands[1], cands[0])
    assert (ids[p0], ids[p1], ids[p2]) == (t.source_id, t.cand1_id, t.cand2_id)
    assert p2 - p1 == 412 and ids[p2 - 2:p2] == [t.sep_id, t.cls_id] and ids[-1] == t.sep_id
    ids, _, p1, p2 = enc.pair(src[0], cands[0], cands[1])
    assert p2 - p1 == len(cands[0]) and len(ids) - p2 + 1 == P.candidate_budget(len(src[0]))


def test_encoder_scrubs_separator_and_prefix_strings(judge):
    enc = judge.encoder
    t = enc.tokens
    for text in ["a [SEP] b", "x <|source|> y <|candidate1|> z <|candidate|>"]:
        ids = enc.encode_candidates([text])[0]
        assert ids.count(t.sep_id) == 1 and ids.count(t.cand_id) == 1
        assert t.source_id not in ids and t.cand1_id not in ids


def test_very_long_text_cut_keeps_the_same_tokens(judge):
    enc = judge.encoder
    rng = random.Random(5)
    text = words(rng, 30000)  # far beyond 16 characters per budget token
    assert len(text) > P._CHARS_PER_TOKEN_CUT * 1224
    full = enc.tokens.tokenizer.encode(P.SOURCE_PREFIX + text, add_special_tokens=False).ids
    assert enc.encode_sources([text])[0] == [enc.tokens.cls_id, *full[:1222], enc.tokens.sep_id]


# ----------------------------------------------------------------------------- judge
def test_preference_matrix_is_valid_and_consistent(judge):
    rng = random.Random(1)
    p = Prompt("p", "Explain " + words(rng, 20))
    rs = [words(rng, n) for n in (5, 40, 12, 80, 1)]
    m = judge.preference_matrix(p, rs)
    check_preference_matrix(m)
    assert m.shape == (5, 5) and np.all(np.diag(m) == 0.5)
    assert np.abs(m - 0.5).max() > 0  # random weights: content barely matters, but it does
    ab = judge.compare([p, p], [rs[0], rs[1]], [rs[1], rs[0]])
    assert ab[0] == pytest.approx(m[0, 1], abs=1e-6) and ab[0] + ab[1] == pytest.approx(1.0, abs=1e-6)
    c = judge.logit_matrices([p], [rs])[0]
    np.testing.assert_allclose(m, P.symmetric_probabilities(c), atol=1e-6)
    np.testing.assert_allclose(judge.scores(p, rs), P.aggregated_scores(c), atol=1e-5)
    raw = judge.logits([p, p], [rs[0], rs[1]], [rs[1], rs[0]])
    np.testing.assert_allclose(raw, [c[0, 1], c[1, 0]], atol=1e-5)
    assert judge.stats["pairs"] > 0 and judge.stats["flops"] > 0


def test_score_diff_mode(tiny):
    j = P.PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu", progress=False, probability="score_diff")
    p = Prompt("p", "why")
    rs = ["one two", "three", "four five six"]
    m = j.preference_matrix(p, rs)
    s = P.aggregated_scores(j.logit_matrices([p], [rs])[0])
    assert m[0, 2] == pytest.approx(sigma(s[0] - s[2]), abs=1e-6)
    check_preference_matrix(m)


def test_batching_and_many_prompts_agree(tiny):
    rng = random.Random(2)
    prompts = [Prompt(f"p{i}", words(rng, 10 + 40 * i)) for i in range(3)]
    resp = [[words(rng, rng.randint(0, 300)) for _ in range(k)] for k in (2, 3, 4)]
    one = P.PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu", progress=False, batch_size=1)
    big = P.PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu", progress=False, batch_size=64,
                                   max_batch_tokens=4000)
    a = one.preference_matrices(prompts, resp)
    b = [big.preference_matrix(p, r) for p, r in zip(prompts, resp)]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert big.stats["padded_tokens"] >= big.stats["tokens"]


def test_bad_input_is_defined_or_a_clear_error(tmp_path):
    j = P.PairRMJudge(str(tmp_path / "nothing-here"), progress=False)  # never loaded below
    p = Prompt("p", "q")
    np.testing.assert_array_equal(j.preference_matrix(p, ["only one"]), [[0.5]])
    assert j.preference_matrix(p, []).shape == (0, 0)
    assert j.compare([], [], []).shape == (0,)
    with pytest.raises(TypeError, match=r"responses\[0\]\[1\] must be str"):
        j.preference_matrix(p, ["a", None])
    with pytest.raises(TypeError, match=r"responses\[0\]\[0\] must be str"):
        j.preference_matrix(p, [b"bytes", "x"])
    with pytest.raises(TypeError, match="list of str, got a str"):
        j.preference_matrices([p], ["ab"])
    with pytest.raises(TypeError, match=r"prompts\[0\]"):
        j.preference_matrix(Prompt("p", None), ["a", "b"])
    with pytest.raises(ValueError, match="lengths differ"):
        j.compare([p], ["a"], ["b", "c"])
    assert j._net is None
    with pytest.raises(FileNotFoundError, match="not a directory"):
        j.preference_matrix(p, ["a", "b"])
    with pytest.raises(ValueError, match="probability"):
        P.PairRMJudge(probability="bt")
    with pytest.raises(ValueError, match="batch_size"):
        P.PairRMJudge(batch_size=0)


def test_empty_whitespace_and_overlong_responses_score(judge):
    rng = random.Random(4)
    m = judge.preference_matrix(Prompt("p", "q"), ["", "   \n", words(rng, 5000), "fine"])
    check_preference_matrix(m)
    assert np.all(np.isfinite(m))


# ----------------------------------------------------------------------------- checkpoints
def test_hf_and_original_layouts_round_trip(tiny, bare_tok_dir, tmp_path):
    p = Prompt("p", "a question")
    rs = ["first answer", "second", "a third one"]
    base = P.PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu", progress=False)
    want = base.logit_matrices([p], [rs])[0]
    hf = P.PairRMJudge(str(tiny["hf"]), device="cpu", progress=False)
    np.testing.assert_allclose(hf.logit_matrices([p], [rs])[0], want, atol=1e-6)
    cfg = json.loads((tiny["hf"] / "config.json").read_text())
    assert cfg["architectures"] == ["DebertaV2PairRM"] and cfg["cand1_prefix_id"] == tiny["tokens"].cand1_id
    # the original layout: backbone tokenizer without the prefix tokens, added at load time
    orig = P.save_pairrm(tiny["net"], bare_tok_dir, tmp_path / "orig", layout="original", backbone_dir=tmp_path / "bb")
    assert P.load_pairrm_tokenizer(tmp_path / "bb").cand2_id == tiny["tokens"].cand2_id
    assert json.loads((orig / "config.json").read_text())["ranker_type"] == "pairranker"
    j = P.PairRMJudge(str(orig), device="cpu", progress=False)
    assert P.load_pairrm(orig).layout == "original"
    np.testing.assert_allclose(j.logit_matrices([p], [rs])[0], want, atol=1e-6)


def test_mismatched_checkpoints_are_refused(tiny, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny["hf"], bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["cand1_prefix_id"] = 7
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="cand1_prefix_id"):
        P.load_pairrm(bad)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tiny["hf"] / "model.safetensors"))
    sd.pop("head_layer.4.weight")
    sd["extra.weight"] = sd["head_layer.4.bias"].clone()
    shutil.copytree(tiny["hf"], tmp_path / "bad2")
    save_file(sd, str(tmp_path / "bad2" / "model.safetensors"))
    with pytest.raises(ValueError, match="head_layer.4.weight"):
        P.load_pairrm(tmp_path / "bad2")
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text(json.dumps({"ranker_type": "summareranker"}))
    with pytest.raises(ValueError, match="pairranker"):
        P.load_pairrm(tmp_path / "rm")


def test_spm_model_reader_matches_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    rng = random.Random(9)
    (tmp_path / "c.txt").write_text("\n".join(words(rng, 40) for _ in range(300)))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "c.txt"), model_prefix=str(tmp_path / "spm"),
                                   vocab_size=150, model_type="unigram", pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                                   pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
                                   minloglevel=2)
    model = P.read_spm_model(tmp_path / "spm.model")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))
    assert len(model.pieces) == sp.get_piece_size() and model.unk_id == 3 and model.precompiled_charsmap
    assert [p for p, _, _ in model.pieces[:4]] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    tok = P.tokenizer_from_spm(tmp_path / "spm.model")
    for text in [words(rng, 30), "  leading and   inner spaces ", "ＡＢＣ ﬁ café"]:
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text)
    assert tok.token_to_id("[MASK]") == sp.get_piece_size()


# ----------------------------------------------------------------------------- sharded annotation
def test_annotate_resumes_from_shard_files(tiny, tmp_path):
    rng = random.Random(6)
    prompts = [Prompt(f"id{i}", words(rng, 8)) for i in range(5)]
    resp = [[words(rng, rng.randint(1, 30)) for _ in range(3)] for _ in prompts]
    j = P.PairRMJudge(str(tiny["hf"]), device="cpu", progress=False)
    want = j.preference_matrices(prompts, resp)
    work = tmp_path / "ann"
    first = j.annotate(prompts[:2], resp[:2], work, devices=["cpu"], chunk_prompts=1)
    assert len(P.read_shards(work)) == 2
    with open(work / "shard_0.jsonl", "a") as f:
        f.write('{"index": 2, "prompt_id": "id2", "logi')  # a crash mid-write
    calls = []
    orig = j.logit_matrices
    j.logit_matrices = lambda ps, rs: (calls.append([p.id for p in ps]), orig(ps, rs))[1]
    got = j.annotate(prompts, resp, work, devices=["cpu"], chunk_prompts=2)
    assert calls == [["id2", "id3"], ["id4"]]  # only the unfinished prompts
    for x, y in zip([*first, *got[2:]], want):
        np.testing.assert_allclose(x, y, atol=1e-6)
    for x, y in zip(got, want):
        np.testing.assert_allclose(x, y, atol=1e-6)
    with pytest.raises(RuntimeError, match="delete the folder"):
        j.annotate([Prompt("other", "x"), *prompts[1:]], resp, work, devices=["cpu"])


@pytest.mark.slow
def test_annotate_two_processes(tiny, tmp_path):
    rng = random.Random(8)
    prompts = [Prompt(f"id{i}", words(rng, 8)) for i in range(4)]
    resp = [[words(rng, 10) for _ in range(2)] for _ in prompts]
    j = P.PairRMJudge(str(tiny["hf"]), device="cpu", progress=False)
    got = j.annotate(prompts, resp, tmp_path / "ann", devices=["cpu", "cpu"])
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == ["shard_0.jsonl", "shard_1.jsonl"]
    for x, y in zip(got, j.preference_matrices(prompts, resp)):
        np.testing.assert_allclose(x, y, atol=1e-6)


# ----------------------------------------------------------------------------- full size
@pytest.mark.slow
def test_full_size_pairrm_end_to_end(tok_dir):
    """DeBERTa-v3-large shape (24 layers, hidden 1024, 128005-token embedding), random weights,
    two prompts with K = 3 on the CPU."""
    import torch

    tokens = P.load_pairrm_tokenizer(tok_dir)
    net = P.random_pairrm(128005, "large", seed=0)
    assert sum(p.numel() for p in net.parameters()) > 430e6
    j = P.PairRMJudge.from_model(net, tokens, device="cpu", progress=False)
    assert j.dtype == torch.float32
    rng = random.Random(11)
    prompts = [Prompt("a", "Please " + words(rng, 15)), Prompt("b", words(rng, 25))]
    mats = j.preference_matrices(prompts, [[words(rng, n) for n in (10, 25, 0)] for _ in prompts])
    for m in mats:
        check_preference_matrix(m)
        assert m.shape == (3, 3)
    assert j.stats["pairs"] == 12


# ----------------------------------------------------------------------------- optional backend
def test_llm_blender_backend_imports_nothing_until_used():
    import importlib
    import sys

    mod = importlib.import_module("sppo_nemo.backends.llm_blender_judge")
    assert "llm_blender" not in sys.modules
    j = mod.LLMBlenderJudge(progress=False)
    assert j.name == "llm_blender"
    np.testing.assert_array_equal(j.preference_matrix(Prompt("p", "q"), ["one"]), [[0.5]])
    with pytest.raises(ValueError, match="probability"):
        mod.LLMBlenderJudge(probability="x")
    with pytest.raises(ValueError, match="dtype"):
        mod.LLMBlenderJudge(dtype="bf16")
    with pytest.raises(TypeError, match=r"responses\[0\]\[1\]"):
        j.preference_matrix(Prompt("p", "q"), ["a", 3])
    if importlib.util.find_spec("llm_blender") is None:
        with pytest.raises(ImportError, match="judge.backend=pairrm"):
            j.preference_matrix(Prompt("p", "q"), ["a", "b"])


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(FileNotFoundError, match="could not be fetched from the hub"):
        P.load_pairrm("llm-blender/PairRM-hf")
