"""The PairRM backend on a tiny random DeBERTa: input construction and budgets, batching and
its FLOPs count, checkpoint layouts, bad input and bad files, the device workers, and (slow)
the full DeBERTa-v3-large shape end to end. The logits → probability formulas are
preference mathematics: tests/unit/test_preference.py."""

from __future__ import annotations

import json
import math
import random
import shutil

import numpy as np
import pytest

from sppo_nemo.backends.pairrm.checkpoint import read_checkpoint, save_pairrm
from sppo_nemo.backends.pairrm.errors import PairRMError
from sppo_nemo.backends.pairrm.inputs import (CHARS_PER_TOKEN_CUT, MIN_FILL, candidate_budget, deberta_forward_flops,
                                              executed_flops, make_batches)
from sppo_nemo.backends.pairrm.judge import PairRMJudge
from sppo_nemo.backends.pairrm.spm import read_spm_model
from sppo_nemo.backends.pairrm.tokenizer import PREFIX_TOKENS, SOURCE_PREFIX, load_pairrm_tokenizer, tokenizer_from_spm
from sppo_nemo.schema.errors import UserError
from sppo_nemo.maths.preference import aggregated_scores, symmetric_probabilities
from sppo_nemo.schema.protocols import Prompt, check_preference_matrix
from sppo_nemo.testing.pairrm import random_pairrm, save_test_tokenizer, tiny_deberta_config, train_test_tokenizer

pytestmark = pytest.mark.unit

SYL = ["ka", "lo", "mi", "tre", "su", "vin", "or", "el", "dag", "pu", "shi", "nor"]


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(SYL) for _ in range(rng.randint(1, 3))) for _ in range(n))


def sigma(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def one(judge, prompt, responses):
    return judge.preference_matrices([prompt], [responses])[0]


@pytest.fixture(scope="module")
def bare_tok_dir(tmp_path_factory):
    """A DeBERTa-v3-like tokenizer without PairRM's prefix tokens (like deberta-v3-large's)."""
    rng = random.Random(0)
    tok = train_test_tokenizer([words(rng, 50) for _ in range(200)], vocab_size=200, with_prefix_tokens=False)
    return save_test_tokenizer(tok, tmp_path_factory.mktemp("bare"))


@pytest.fixture(scope="module")
def tok_dir(bare_tok_dir, tmp_path_factory):
    """The same tokenizer with the prefix tokens saved in it (like PairRM-hf's)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(bare_tok_dir / "tokenizer.json"))
    tok.add_tokens(list(PREFIX_TOKENS))
    return save_test_tokenizer(tok, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tiny(tok_dir, tmp_path_factory):
    tokens = load_pairrm_tokenizer(tok_dir)
    net = random_pairrm(tokens.vocab_size, "tiny", seed=0)
    hf = save_pairrm(net, tok_dir, tmp_path_factory.mktemp("m") / "hf")
    return {"tokens": tokens, "net": net, "hf": hf}


@pytest.fixture()
def judge(tiny):
    return PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu")


# ----------------------------------------------------------------------------- budgets, batches, FLOPs
def test_candidate_budget_and_total():
    assert candidate_budget(1224) == 412
    assert candidate_budget(3) == 412 + 1221 // 2 == 1022
    for src in range(3, 1225):
        assert src + 2 * candidate_budget(src) <= 2048


def test_make_batches_caps_and_covers():
    lengths = [5, 100, 7, 100, 60, 2048, 3]
    batches = make_batches(lengths, batch_size=2, max_batch_tokens=200)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches[0] == [5]  # longer than the cap: alone
    for b in batches:
        assert len(b) <= 2 and (len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 200)
        assert lengths[b[0]] == max(lengths[i] for i in b)
        assert min(lengths[i] for i in b) >= MIN_FILL * lengths[b[0]]
    assert [1, 3] in batches and [4] in batches  # 60 is too short to ride with 100
    assert make_batches([10] * 5, batch_size=8, max_batch_tokens=10**6) == [[0, 1, 2, 3, 4]]


def test_flops_formula_hand_worked():
    cfg = tiny_deberta_config(vocab_size=50)  # H = 32, I = 64, 2 layers, 256 position buckets
    # per layer 8·10·32² + 4·10·32·64 + 4·10²·32 + 8·10·256·32 + 8·256·32² = 2,929,152
    assert deberta_forward_flops(cfg, 1, 10) == 2 * 2_929_152
    assert deberta_forward_flops(cfg, 3, 10) == 3 * 2 * 2_929_152


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
    assert p2 - p1 == len(cands[0]) and len(ids) - p2 + 1 == candidate_budget(len(src[0]))


def test_ordered_pairs_cover_every_pair_once(judge):
    enc = judge.encoder
    prompts = [Prompt("a", "first"), Prompt("b", "second")]
    seqs, where = enc.ordered_pairs(prompts, [["x", "y", "z"], ["u", "v"]])
    assert where == [(0, 0, 1), (0, 0, 2), (0, 1, 0), (0, 1, 2), (0, 2, 0), (0, 2, 1), (1, 0, 1), (1, 1, 0)]
    src = enc.encode_sources(["second"])[0]
    u, v = enc.encode_candidates(["u", "v"])
    assert seqs[7] == enc.pair(src, v, u)


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
    assert len(text) > CHARS_PER_TOKEN_CUT * 1224
    full = enc.tokens.tokenizer.encode(SOURCE_PREFIX + text, add_special_tokens=False).ids
    assert enc.encode_sources([text])[0] == [enc.tokens.cls_id, *full[:1222], enc.tokens.sep_id]


# ----------------------------------------------------------------------------- judge
def test_preference_matrix_is_valid_and_consistent(judge):
    rng = random.Random(1)
    p = Prompt("p", "Explain " + words(rng, 20))
    rs = [words(rng, n) for n in (5, 40, 12, 80, 1)]
    m = one(judge, p, rs)
    check_preference_matrix(m)
    assert m.shape == (5, 5) and np.all(np.diag(m) == 0.5)
    assert np.abs(m - 0.5).max() > 0  # random weights: content barely matters, but it does
    ab = judge.compare([p, p], [rs[0], rs[1]], [rs[1], rs[0]])
    assert ab[0] == pytest.approx(m[0, 1], abs=1e-6) and ab[0] + ab[1] == pytest.approx(1.0, abs=1e-6)
    c = judge.logit_matrices([p], [rs])[0]
    np.testing.assert_allclose(m, symmetric_probabilities(c), atol=1e-6)
    assert np.all(np.diag(c) == 0) and np.all(c[~np.eye(5, dtype=bool)] != 0)  # every ordered pair scored


def test_stats_count_the_batches_actually_run(tiny):
    """FLOPs, pairs and tokens are exactly those of the forwards the network received."""
    j = PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu", batch_size=4, max_batch_tokens=10**6)
    shapes = []
    batches = []

    def seen(_m, args):
        shapes.append(tuple(args[0].shape))
        batches.append((args[1].sum(dim=1).tolist(), args[0].shape[1]))

    hook = j.network.register_forward_pre_hook(seen)
    try:
        rng = random.Random(12)
        prompts = [Prompt("a", words(rng, 9)), Prompt("b", words(rng, 30)), Prompt("c", "alone")]
        resp = [[words(rng, n) for n in (3, 20, 50)], [words(rng, 7), words(rng, 8)], ["only"]]
        j.logit_matrices(prompts, resp)
    finally:
        hook.remove()
    cfg = j.network.config
    assert len(shapes) > 1 and all(b <= 4 for b, _ in shapes)
    assert j.stats["flops"] == sum(executed_flops(cfg, lens, w, per_sequence=True) for lens, w in batches)
    assert all(executed_flops(cfg, lens, w, True) < deberta_forward_flops(cfg, len(lens), w) for lens, w in batches)
    assert j.stats["pairs"] == sum(b for b, _ in shapes) == 3 * 2 + 2 * 1
    assert j.stats["padded_tokens"] == sum(b * w for b, w in shapes)
    seqs, _ = j.encoder.ordered_pairs(prompts[:2], resp[:2])
    assert j.stats["tokens"] == sum(len(s[0]) for s in seqs) <= j.stats["padded_tokens"]


def test_score_diff_mode(tiny):
    j = PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu", probability="score_diff")
    p = Prompt("p", "why")
    rs = ["one two", "three", "four five six"]
    m = one(j, p, rs)
    s = aggregated_scores(j.logit_matrices([p], [rs])[0])
    assert m[0, 2] == pytest.approx(sigma(s[0] - s[2]), abs=1e-6)
    check_preference_matrix(m)


def test_batching_and_many_prompts_agree_and_progress_counts_prompts(tiny):
    rng = random.Random(2)
    prompts = [Prompt(f"p{i}", words(rng, 10 + 40 * i)) for i in range(4)]
    resp = [[words(rng, rng.randint(0, 300)) for _ in range(k)] for k in (2, 3, 4, 1)]
    single = PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu", batch_size=1)
    big = PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu", batch_size=64, max_batch_tokens=4000)
    told = []
    a = single.preference_matrices(prompts, resp, progress=told.append)
    assert sum(told) == 4 and told[0] == 1  # the K = 1 prompt first, then each as its last pair is scored
    assert single.stats["pairs"] == 2 + 6 + 12 and len(told) == 4
    b = [one(big, p, r) for p, r in zip(prompts, resp)]
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert big.stats["padded_tokens"] >= big.stats["tokens"]


def test_bad_input_is_defined_or_a_clear_error(tmp_path):
    j = PairRMJudge(str(tmp_path / "nothing-here"))  # never loaded below
    p = Prompt("p", "q")
    np.testing.assert_array_equal(one(j, p, ["only one"]), [[0.5]])
    assert one(j, p, []).shape == (0, 0)
    assert j.compare([], [], []).shape == (0,)
    with pytest.raises(TypeError, match=r"responses\[0\]\[1\] must be str"):
        one(j, p, ["a", None])
    with pytest.raises(TypeError, match=r"responses\[0\]\[0\] must be str"):
        one(j, p, [b"bytes", "x"])
    with pytest.raises(TypeError, match="list of str, got a str"):
        j.preference_matrices([p], ["ab"])
    with pytest.raises(TypeError, match=r"prompts\[0\]"):
        one(j, Prompt("p", None), ["a", "b"])
    with pytest.raises(ValueError, match="lengths differ"):
        j.compare([p], ["a"], ["b", "c"])
    assert j._encoder is None and j.network is None
    with pytest.raises(UserError, match=r"judge.model: .*nothing-here.* is not a directory"):
        one(j, p, ["a", "b"])
    with pytest.raises(ValueError, match="probability"):
        PairRMJudge(probability="bt")
    with pytest.raises(ValueError, match="batch_size"):
        PairRMJudge(batch_size=0)
    with pytest.raises(ValueError, match="dtype"):
        PairRMJudge(dtype="int8")


def test_empty_whitespace_and_overlong_responses_score(judge):
    rng = random.Random(4)
    m = one(judge, Prompt("p", "q"), ["", "   \n", words(rng, 5000), "fine"])
    check_preference_matrix(m)
    assert np.all(np.isfinite(m))


# ----------------------------------------------------------------------------- checkpoints
def test_hf_and_original_layouts_round_trip(tiny, bare_tok_dir, tmp_path):
    p = Prompt("p", "a question")
    rs = ["first answer", "second", "a third one"]
    base = PairRMJudge.from_model(tiny["net"], tiny["tokens"], device="cpu")
    want = base.logit_matrices([p], [rs])[0]
    hf = PairRMJudge(str(tiny["hf"]), device="cpu")
    np.testing.assert_allclose(hf.logit_matrices([p], [rs])[0], want, atol=1e-6)
    cfg = json.loads((tiny["hf"] / "config.json").read_text())
    assert cfg["architectures"] == ["DebertaV2PairRM"] and cfg["cand1_prefix_id"] == tiny["tokens"].cand1_id
    assert read_checkpoint(tiny["hf"]).layout == "hf"
    # the original layout: backbone tokenizer without the prefix tokens, added at load time
    orig = save_pairrm(tiny["net"], bare_tok_dir, tmp_path / "orig", layout="original", backbone_dir=tmp_path / "bb")
    assert load_pairrm_tokenizer(tmp_path / "bb").cand2_id == tiny["tokens"].cand2_id
    assert json.loads((orig / "config.json").read_text())["ranker_type"] == "pairranker"
    ckpt = read_checkpoint(orig)
    assert ckpt.layout == "original" and ckpt.backbone == tmp_path / "bb"
    j = PairRMJudge(str(orig), device="cpu")
    np.testing.assert_allclose(j.logit_matrices([p], [rs])[0], want, atol=1e-6)


def copy_of(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_mismatched_checkpoints_are_refused(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    bad = copy_of(tiny["hf"], tmp_path / "bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["cand1_prefix_id"] = 7
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PairRMError, match="cand1_prefix_id=7 but the tokenizer gives"):
        read_checkpoint(bad)
    sd = load_file(str(tiny["hf"] / "model.safetensors"))
    sd.pop("head_layer.4.weight")
    sd["extra.weight"] = sd["head_layer.4.bias"].clone()
    bad2 = copy_of(tiny["hf"], tmp_path / "bad2")
    save_file(sd, str(bad2 / "model.safetensors"))
    with pytest.raises(PairRMError, match=r"missing \['head_layer.4.weight'\], unexpected \['extra.weight'\]"):
        PairRMJudge(str(bad2), device="cpu").logit_matrices([Prompt("p", "q")], [["a", "b"]])
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text(json.dumps({"ranker_type": "summareranker"}))
    with pytest.raises(PairRMError, match="only PairRM \\(pairranker\\)"):
        read_checkpoint(tmp_path / "rm")
    (tmp_path / "rm" / "config.json").write_text(json.dumps({"ranker_type": "pairranker",
                                                             "model_name": str(tmp_path / "no-backbone")}))
    with pytest.raises(UserError, match="judge.backbone: PairRM backbone .*no-backbone"):
        read_checkpoint(tmp_path / "rm")


def test_missing_and_corrupt_files_are_user_errors(tiny, tmp_path):
    """Every broken file ends in a PairRMError (exit 1) that names it, never a raw traceback."""
    from sppo_nemo.backends.pairrm.checkpoint import load_weights

    cases = {
        "config.json": ("{not json", "config.json: not valid JSON"),
        "model.safetensors": (b"\x00" * 40, "model.safetensors: unreadable weights"),
        "tokenizer.json": ("[1, 2", "tokenizer.json: not a readable tokenizer"),
    }
    for name, (content, message) in cases.items():
        d = copy_of(tiny["hf"], tmp_path / name)
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(PairRMError, match=message) as got:
            load_weights(read_checkpoint(d))
        assert got.value.exit_code == 1 and "download" in str(got.value)
    d = copy_of(tiny["hf"], tmp_path / "no-weights")
    (d / "model.safetensors").unlink()
    with pytest.raises(PairRMError, match="no model.safetensors or pytorch_model.bin"):
        load_weights(read_checkpoint(d))
    d = copy_of(tiny["hf"], tmp_path / "no-tokenizer")
    (d / "tokenizer.json").unlink()
    with pytest.raises(PairRMError, match="no tokenizer.json or spm.model"):
        read_checkpoint(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PairRMError, match="no config.json"):
        read_checkpoint(tmp_path / "empty")


def test_spm_model_reader_matches_sentencepiece(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    rng = random.Random(9)
    (tmp_path / "c.txt").write_text("\n".join(words(rng, 40) for _ in range(300)))
    spm.SentencePieceTrainer.train(input=str(tmp_path / "c.txt"), model_prefix=str(tmp_path / "spm"),
                                   vocab_size=150, model_type="unigram", pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                                   pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]", unk_piece="[UNK]",
                                   minloglevel=2)
    model = read_spm_model(tmp_path / "spm.model")
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "spm.model"))
    assert len(model.pieces) == sp.get_piece_size() and model.unk_id == 3 and model.precompiled_charsmap
    assert [p for p, _, _ in model.pieces[:4]] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    tok = tokenizer_from_spm(tmp_path / "spm.model")
    for text in [words(rng, 30), "  leading and   inner spaces ", "ＡＢＣ ﬁ café"]:
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text)
    assert tok.token_to_id("[MASK]") == sp.get_piece_size()
    data = (tmp_path / "spm.model").read_bytes()
    (tmp_path / "cut.model").write_bytes(data[:len(data) // 2])  # a truncated download
    with pytest.raises(PairRMError, match="cut.model: not a readable sentencepiece model"):
        read_spm_model(tmp_path / "cut.model")


# ----------------------------------------------------------------------------- device workers
@pytest.mark.slow
def test_device_workers_match_one_device_and_persist(tiny, tmp_path):
    """Two worker processes (CPU standing in for two GPUs) give the in-process matrices, stay up
    between calls, report progress per prompt, and stop on close()."""
    rng = random.Random(8)
    prompts = [Prompt(f"id{i}", words(rng, 8)) for i in range(5)]
    resp = [[words(rng, rng.randint(1, 40)) for _ in range(3)] for _ in prompts]
    want = PairRMJudge(str(tiny["hf"]), device="cpu").preference_matrices(prompts, resp)
    j = PairRMJudge(str(tiny["hf"]), devices=["cpu", "cpu"], batch_size=4)
    told = []
    got = j.preference_matrices(prompts[:3], resp[:3], progress=told.append)
    assert sum(told) == 3
    pool = j._pool
    procs = [proc for _, proc, _ in pool._workers]
    assert j.network is None and len(procs) == 2 and all(p.is_alive() for p in procs)
    got += j.preference_matrices(prompts[3:], resp[3:])
    assert j._pool is pool and all(p.is_alive() for p in procs)  # the same workers served both calls
    for x, y in zip(got, want):
        np.testing.assert_allclose(x, y, atol=1e-6)
    assert j.stats["pairs"] == 5 * 6 and j.stats["flops"] > 0
    j.close()
    assert j._pool is None and not any(p.is_alive() for p in procs)


@pytest.mark.slow
def test_a_failing_worker_is_a_user_error_and_stops_the_others(tiny):
    j = PairRMJudge(str(tiny["hf"]), devices=["cpu", "cuda:99"])
    with pytest.raises(PairRMError, match=r"worker on cuda:99 failed") as got:
        j.preference_matrices([Prompt("p", "q")], [["a", "b"]])
    assert "judge.batch_size" in str(got.value)
    assert j._pool is None and j._encoder is None


# ----------------------------------------------------------------------------- full size
@pytest.mark.slow
def test_full_size_pairrm_end_to_end(tok_dir):
    """DeBERTa-v3-large shape (24 layers, hidden 1024, 128005-token embedding), random weights,
    two prompts with K = 3 on the CPU."""
    import torch

    tokens = load_pairrm_tokenizer(tok_dir)
    net = random_pairrm(128005, "large", seed=0)
    assert sum(p.numel() for p in net.parameters()) > 430e6
    j = PairRMJudge.from_model(net, tokens, device="cpu")
    assert j.dtype == torch.float32
    rng = random.Random(11)
    prompts = [Prompt("a", "Please " + words(rng, 15)), Prompt("b", words(rng, 25))]
    mats = j.preference_matrices(prompts, [[words(rng, n) for n in (10, 25, 0)] for _ in prompts])
    for m in mats:
        check_preference_matrix(m)
        assert m.shape == (3, 3)
    assert j.stats["pairs"] == 12


# ----------------------------------------------------------------------------- optional backend, hub
def test_llm_blender_backend_imports_nothing_until_used():
    import importlib
    import sys

    mod = importlib.import_module("sppo_nemo.backends.llm_blender_judge")
    assert "llm_blender" not in sys.modules
    j = mod.LLMBlenderJudge()
    assert j.name == "llm_blender"
    told = []
    np.testing.assert_array_equal(j.preference_matrices([Prompt("p", "q")], [["one"]], told.append)[0], [[0.5]])
    assert told == [1]
    with pytest.raises(ValueError, match="probability"):
        mod.LLMBlenderJudge(probability="x")
    with pytest.raises(ValueError, match="dtype"):
        mod.LLMBlenderJudge(dtype="bf16")
    with pytest.raises(TypeError, match=r"responses\[0\]\[1\]"):
        j.preference_matrices([Prompt("p", "q")], [["a", 3]])
    if importlib.util.find_spec("llm_blender") is None:
        with pytest.raises(UserError, match="judge.backend=pairrm"):
            j.preference_matrices([Prompt("p", "q")], [["a", "b"]])
    j.close()


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(UserError, match=r"judge.model: .*huggingface-cli download llm-blender/PairRM-hf"):
        read_checkpoint("llm-blender/PairRM-hf")
