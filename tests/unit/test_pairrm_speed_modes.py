"""PairRM's faster forward and its speed modes, on tiny random DeBERTas: the encoder of
sppo_nemo/backends/pairrm/encoder.py against transformers' own forward (every configuration
branch, lengths inside and beyond the log buckets, weights changed under its position cache),
batching that cannot change a logit, the executed-FLOPs count, and ``pairs: single``
(antisymmetric, half the model calls, the i < j half of both orders, what ``symmetric`` and
``score_diff`` then mean)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from sppo_nemo.backends.pairrm.inputs import deberta_forward_flops, executed_flops, make_batches, padding_fraction
from sppo_nemo.backends.pairrm.judge import PairRMJudge
from sppo_nemo.backends.pairrm.tokenizer import load_pairrm_tokenizer
from sppo_nemo.maths.preference import aggregated_scores, probabilities
from sppo_nemo.schema.protocols import Prompt, check_preference_matrix
from sppo_nemo.testing.pairrm import random_pairrm, save_test_tokenizer, tiny_deberta_config, train_test_tokenizer

pytestmark = pytest.mark.unit

SYL = ["ka", "lo", "mi", "tre", "su", "vin", "or", "el", "dag", "pu", "shi", "nor"]
TOL = 1e-5


def words(rng: random.Random, n: int) -> str:
    return " ".join("".join(rng.choice(SYL) for _ in range(rng.randint(1, 3))) for _ in range(n))


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    rng = random.Random(0)
    tok = train_test_tokenizer([words(rng, 50) for _ in range(200)], vocab_size=200)
    return load_pairrm_tokenizer(save_test_tokenizer(tok, tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="module")
def net(tokens):
    return random_pairrm(tokens.vocab_size, "tiny", seed=0)


def batch(lengths, vocab, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for r, n in enumerate(lengths):
        ids[r, :n] = torch.randint(5, vocab, (n,), generator=g)
        mask[r, :n] = 1
    pos = torch.tensor([[1, min(3, n - 1), n - 1] for n in lengths])
    return ids, mask, pos


def run(net, mode, ids, mask, pos):
    import torch

    net.attention = mode
    try:
        with torch.inference_mode():
            return net(ids, mask, pos[:, 0], pos[:, 1], pos[:, 2]).numpy()
    finally:
        net.attention = "auto"


# ----------------------------------------------------------------------------- the encoder
@pytest.mark.parametrize("overrides", [
    {},  # DeBERTa-v3's: shared keys, c2p and p2c, 256 log buckets
    {"share_att_key": False, "pos_att_type": ["c2p"]},
    {"share_att_key": False, "pos_att_type": ["p2c"]},
    {"position_buckets": -1, "max_relative_positions": 64},  # no buckets: clamped relative positions
], ids=["v3", "c2p-own-keys", "p2c-own-queries", "no-buckets"])
def test_encoder_equals_transformers_forward(overrides):
    """Lengths below the log buckets (|i − j| < 128), inside them and beyond 512 (clamped), in
    one padded batch: both encoder modes give transformers' logits."""
    net = random_pairrm(300, "tiny", seed=1, **overrides)
    ids, mask, pos = batch([560, 300, 129, 40, 4], 300)
    ref = run(net, "reference", ids, mask, pos)
    assert np.abs(ref).max() > 0.1
    for mode in ("per_sequence", "padded"):
        np.testing.assert_allclose(run(net, mode, ids, mask, pos), ref, atol=TOL, rtol=0)
    one = np.concatenate([run(net, "reference", ids[r:r + 1, :n], mask[r:r + 1, :n], pos[r:r + 1])
                          for r, n in enumerate([560, 300, 129, 40, 4])])
    np.testing.assert_allclose(run(net, "auto", ids, mask, pos), one, atol=TOL, rtol=0)


def test_position_cache_follows_the_weights(net):
    """Changing a projection in place, or the dtype, rebuilds the cached position projections."""
    import copy

    import torch

    net = copy.deepcopy(net)
    ids, mask, pos = batch([60, 33], 200)
    run(net, "per_sequence", ids, mask, pos)  # fills the cache
    with torch.no_grad():
        net.pretrained_model.encoder.layer[0].attention.self.key_proj.weight.mul_(1.5)
        net.pretrained_model.encoder.rel_embeddings.weight.add_(0.3)
    np.testing.assert_allclose(run(net, "per_sequence", ids, mask, pos), run(net, "reference", ids, mask, pos),
                               atol=TOL, rtol=0)
    net.to(torch.float64)
    np.testing.assert_allclose(run(net, "per_sequence", ids, mask, pos), run(net, "reference", ids, mask, pos),
                               atol=1e-10, rtol=0)


def test_unsupported_configuration_or_mask_runs_transformers(net):
    """A left-padded mask (not what score_batches builds) takes transformers' forward, unchanged."""
    import torch

    from sppo_nemo.backends.pairrm.model import attention_mode

    ids, mask, pos = batch([20, 20], 200)
    mask[1, 0] = 0
    assert attention_mode(net, ids, mask) == "reference"
    assert attention_mode(net, ids, torch.ones_like(mask)) == "per_sequence"
    conv = random_pairrm(200, "tiny", seed=0, conv_kernel_size=3)
    assert attention_mode(conv, ids, torch.ones_like(mask)) == "reference"


# ----------------------------------------------------------------------------- batching
def test_cpu_batches_are_encoded_in_cache_sized_chunks(monkeypatch):
    """A per_sequence batch over CHUNK_TOKENS padded tokens is encoded chunk by chunk (consecutive
    sequences, each chunk padded to its own longest): the same logits as one forward, and the
    hand-worked chunk ranges."""
    from sppo_nemo.backends.pairrm import encoder

    assert encoder._chunks([500, 490, 480, 470, 300], 2048) == [(0, 4), (4, 5)]
    assert encoder._chunks([3000, 10, 10], 2048) == [(0, 1), (1, 3)]  # too long: alone
    assert encoder._chunks([7], 1) == [(0, 1)]
    net = random_pairrm(300, "tiny", seed=2)
    lengths = [200, 150, 140, 60, 30, 5]
    ids, mask, pos = batch(lengths, 300)
    whole = run(net, "per_sequence", ids, mask, pos)
    calls = []
    real = encoder.encode_rows
    monkeypatch.setattr(encoder, "CHUNK_TOKENS", 320)  # → [200] [150, 140] [60, 30, 5]
    monkeypatch.setattr(encoder, "encode_rows", lambda d, i, n, r, m="per_sequence": calls.append(list(n))
                        or real(d, i, n, r, m))
    chunked = run(net, "per_sequence", ids, mask, pos)
    np.testing.assert_allclose(chunked, whole, atol=TOL, rtol=0)
    assert calls[0] == lengths and calls[1:] == [[200], [150, 140], [60, 30, 5]]


def test_batching_never_changes_a_logit(net, tokens):
    """Batch 1, the CPU's automatic token budget and batches of 20 give the same logits; batches of 20
    really are one forward per prompt here."""
    rng = random.Random(3)
    prompts = [Prompt(f"p{i}", words(rng, 30 + 20 * i)) for i in range(2)]
    resp = [[words(rng, rng.randint(40, 60)) for _ in range(4)] for _ in prompts]
    out = {}
    for name, kw in {"one": dict(batch_size=1), "auto": {}, "twenty": dict(batch_size=20, max_batch_tokens=20 * 2048)}.items():
        j = PairRMJudge.from_model(net, tokens, device="cpu", **kw)
        out[name] = (j.logit_matrices(prompts, resp), dict(j.stats))
    for name in ("auto", "twenty"):
        for a, b in zip(out["one"][0], out[name][0]):
            np.testing.assert_allclose(a, b, atol=TOL, rtol=0)
    assert out["one"][1]["pairs"] == out["twenty"][1]["pairs"] == 24
    assert out["one"][1]["padded_tokens"] == out["one"][1]["tokens"]


def test_padding_fraction_and_why_batches_lost():
    """Padding is not why transformers' batch 20 lost on pairrm_k5 (~494 ± 15 tokens a pair): length-
    sorted batches of 20 pad a few per cent. What grew was the padded B×16×L×L attention block,
    15.6 MB a sequence at L = 494, past a 32 MB L3 from batch 3 on."""
    assert padding_fraction([10, 8, 5], [[0, 1], [2]]) == pytest.approx(2 / 23)
    assert padding_fraction([], []) == 0.0
    rng = random.Random(0)
    lengths = [rng.randint(480, 510) for _ in range(160)]
    assert padding_fraction(lengths, make_batches(lengths, 20, 20 * 2048)) < 0.05
    block = 16 * 494 * 494 * 4
    assert block / 2 ** 20 == pytest.approx(14.9, abs=0.1) and 2 * block < 32 * 2 ** 20 < 3 * block


def test_executed_flops_hand_worked_and_batch_independent():
    cfg = tiny_deberta_config(100)
    assert executed_flops(cfg, [10], 10, per_sequence=True) == 298_432.0  # the docstring's hand count
    assert executed_flops(cfg, [10], 10, True) < deberta_forward_flops(cfg, 1, 10)
    # per sequence, a batch's attention costs what its sequences cost alone; only the padded rows'
    # matmuls are added: (layers − 1)·(8H² + 4HI) + 4H² per padded token
    h, i = cfg.hidden_size, cfg.intermediate_size
    alone = executed_flops(cfg, [10], 10, True) + executed_flops(cfg, [7], 7, True)
    together = executed_flops(cfg, [10, 7], 10, True)
    assert together - alone == 3 * ((cfg.num_hidden_layers - 1) * (8 * h * h + 4 * h * i) + 4 * h * h)
    assert executed_flops(cfg, [10, 7], 10, per_sequence=False) > together


# ----------------------------------------------------------------------------- pairs: single
def test_single_is_the_upper_half_of_both_antisymmetric_with_half_the_calls(net, tokens):
    rng = random.Random(5)
    prompts = [Prompt("a", words(rng, 12)), Prompt("b", words(rng, 25)), Prompt("c", "alone")]
    resp = [[words(rng, n) for n in (3, 20, 50, 9)], [words(rng, 7), words(rng, 8)], ["only"]]
    both = PairRMJudge.from_model(net, tokens, device="cpu")
    single = PairRMJudge.from_model(net, tokens, device="cpu", pairs="single")
    told = []
    cb = both.logit_matrices(prompts, resp)
    cs = single.logit_matrices(prompts, resp, progress=told.append)
    assert both.stats["pairs"] == 12 + 2 and single.stats["pairs"] == 6 + 1  # K(K−1)/2 model calls a prompt
    assert sum(told) == 3
    for b, s in zip(cb, cs):
        np.testing.assert_array_equal(s, -s.T)  # antisymmetric by construction, diagonal 0
        upper = np.triu_indices(s.shape[0], 1)
        np.testing.assert_allclose(s[upper], b[upper], atol=TOL, rtol=0)
    assert np.abs(cb[0] + cb[0].T).max() > 1e-3  # the random judge has a position bias; single drops it


def test_single_probability_conventions(net, tokens):
    """With C antisymmetric, ``symmetric`` is σ(C[i, j]) and ``score_diff`` σ(s_i − s_j) with
    s_i = (2/K) Σ_j C[i, j]; both are valid preference matrices."""
    rng = random.Random(6)
    p, rs = Prompt("p", words(rng, 10)), [words(rng, n) for n in (4, 30, 12)]
    c = PairRMJudge.from_model(net, tokens, device="cpu", pairs="single").logit_matrices([p], [rs])[0]
    for conv in ("symmetric", "score_diff"):
        m = PairRMJudge.from_model(net, tokens, device="cpu", pairs="single", probability=conv).preference_matrices(
            [p], [rs])[0]
        check_preference_matrix(m)
        s = 2 * c.sum(axis=1) / 3
        np.testing.assert_allclose(aggregated_scores(c), s, atol=1e-12)
        want = (lambda i, j: c[i, j]) if conv == "symmetric" else (lambda i, j: s[i] - s[j])
        for i in range(3):
            for j in range(3):
                if i != j:
                    assert m[i, j] == pytest.approx(1 / (1 + math.exp(-want(i, j))), abs=1e-9)


def test_single_equals_both_for_a_judge_without_position_bias():
    """When C[j, i] = −C[i, j] already (no position bias), the upper half rebuilt antisymmetric is
    C itself, so every probability is the both-orders one exactly."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    c = a - a.T
    single = np.triu(c, 1) - np.triu(c, 1).T
    for conv in ("symmetric", "score_diff"):
        np.testing.assert_array_equal(probabilities(single, conv), probabilities(c, conv))


def test_pairs_reach_the_judge_and_bad_values_are_refused():
    from sppo_nemo.backends import JudgeSpec, make_judge
    from sppo_nemo.schema.config import JudgeConfig

    assert make_judge(JudgeSpec(JudgeConfig(backend="pairrm", pairs="single"), None)).pairs == "single"
    assert make_judge(JudgeSpec(JudgeConfig(backend="pairrm"), None)).pairs == "both"
    with pytest.raises(ValueError, match="pairs"):
        PairRMJudge(pairs="half")
