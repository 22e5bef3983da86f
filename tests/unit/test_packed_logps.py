"""Packed sequence log-probs (backends/hf.packed_sequence_logps) equal the unpacked ones
(sequence_logps) on the tiny random Llama's shape, values and parameter gradients, for sdpa and
eager attention, at real lengths; the reference pass's batches and the packed token count,
hand-worked. (A prompt cut by max_prompt_length, through the real tokenizer, and the trainer
end to end: tests/integration/test_torch_trainer_packing.py.)"""

from __future__ import annotations

import pytest
import torch

from sppo_nemo.backends.chat_format import Encoded, packed_tokens, row_tokens
from sppo_nemo.backends.hf import packed_sequence_logps
from sppo_nemo.backends.seq_logps import sequence_logps
from sppo_nemo.backends.torch_trainer import reference_batches
from sppo_nemo.schema.protocols import PointRow

pytestmark = pytest.mark.unit

TOL = 1e-5  # fp32


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    """The tiny random Llama's shape (sppo_nemo.testing.build_tiny_llama: hidden 32, 2 layers, 4
    heads, 2 key-value heads, its tokenizer's 384 ids), built in memory: no tokenizer to train."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, attn_implementation=request.param)
    m = LlamaForCausalLM(cfg)
    assert m.config._attn_implementation == request.param
    return m.eval()


def tokens(n: int, seed: int, vocab: int = 200) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def cases() -> dict[str, list[Encoded]]:
    p1, p2, p3 = tokens(180, 1), tokens(60, 2), tokens(5, 3)
    return {
        # a pair's chosen and rejected, real lengths, different response lengths
        "pairs": [Encoded(p1, tokens(240, 10)), Encoded(p1, tokens(37, 11)),
                  Encoded(p2, tokens(90, 12)), Encoded(p2, tokens(200, 13))],
        # SPPO's K = 5 point rows of one prompt
        "k5": [Encoded(p1, tokens(n, 20 + n)) for n in (120, 7, 256, 64, 181)],
        # prompts mixed in one micro-batch, a prompt coming back after another (not merged)
        "mixed": [Encoded(p2, tokens(30, 30)), Encoded(p3, tokens(12, 31)), Encoded(p3, tokens(50, 32)),
                  Encoded(p2, tokens(8, 33)), Encoded(p1, tokens(77, 34))],
        # single-token responses (an immediate end of turn), alone and beside long ones
        "single": [Encoded(p2, [5]), Encoded(p2, [6]), Encoded(p3, [7]), Encoded(p3, tokens(100, 40))],
    }


@pytest.mark.parametrize("case", list(cases()))
def test_packed_equals_unpacked(model, case):
    batch = cases()[case]
    with torch.no_grad():
        want = sequence_logps(model, batch, pad_id=0)
        got = packed_sequence_logps(model, batch, pad_id=0)
    assert got.shape == want.shape == (len(batch),)
    assert (got - want).abs().max().item() <= TOL, (got, want)


def test_packed_gradients_equal_unpacked(model):
    batch = cases()["pairs"][:2] + cases()["single"][2:]
    weights = torch.tensor([1.0, -0.5, 2.0, 0.25])  # a loss that weighs each sequence differently

    def grads(fn):
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            (fn(model, batch, 0, chunk=64) * weights).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want, got = grads(sequence_logps), grads(packed_sequence_logps)
    model.zero_grad(set_to_none=True)
    assert want.keys() == got.keys() and want
    for name in want:
        scale = max(1.0, want[name].abs().max().item())
        assert (got[name] - want[name]).abs().max().item() <= 1e-4 * scale, name
        assert torch.isfinite(got[name]).all(), name  # padding rows see themselves: no NaN


def test_pair_rows_count_the_prompt_once():
    seqs = [[Encoded([1, 2, 3], [4, 5]), Encoded([1, 2, 3], [6])], [Encoded([7], [8])]]
    assert row_tokens(seqs, [0, 1]) == 5 + 4 + 2
    assert packed_tokens(seqs, [0, 1]) == 3 + 2 + 1 + 2


def test_reference_batches_keep_a_prompts_rows_together():
    rows = [PointRow(p, "x", "y", True, 0.5) for p in "aabbbc"]
    assert reference_batches(rows, 4, keep_prompts=True) == [[0, 1], [2, 3, 4, 5]]
    assert reference_batches(rows, 4, keep_prompts=False) == [[0, 1, 2, 3], [4, 5]]
    # a prompt with more rows than a batch: full batches of it, the rest joins what follows
    rows = [PointRow(p, "x", "y", True, 0.5) for p in "aaaaabb"]
    assert reference_batches(rows, 2, keep_prompts=True) == [[0, 1], [2, 3], [4], [5, 6]]
    assert [i for b in reference_batches(rows, 3, True) for i in b] == list(range(7))


def test_an_sdpa_model_scores_unpacked_as_before_after_packing(model):
    """Packing switches an sdpa model to its packed attention, which is sdpa for other calls."""
    batch = cases()["mixed"]
    with torch.no_grad():
        before = sequence_logps(model, batch, 0)
        packed_sequence_logps(model, batch, 0)
        after = sequence_logps(model, batch, 0)
    assert torch.equal(before, after)
