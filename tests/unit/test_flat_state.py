"""The torch trainer's memory layout (backends/flat_state.py) changes where the bytes live, not the
arithmetic: against the same model trained the plain way (parameters where HF put them, autograd's
own gradients, AdamW's lazy state), the accumulated gradients and the parameters after AdamW steps
agree, for tied and untied embeddings, fp32 and bf16 autocast, with and without activation
checkpointing, packed and unpacked scoring; the buffers really are shared and stay in place."""

from __future__ import annotations

import copy

import pytest
import torch

from sppo_nemo.backends.flat_state import FlatState, accumulate_in_place, adamw_state, flatten
from sppo_nemo.backends.chat_format import Encoded
from sppo_nemo.backends.hf import packed_sequence_logps
from sppo_nemo.backends.seq_logps import sequence_logps

pytestmark = pytest.mark.unit


def tiny(tied: bool, pad: int | None = 1):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=tied, pad_token_id=pad, attn_implementation="sdpa")
    m = LlamaForCausalLM(cfg)
    assert (m.lm_head.weight is m.model.embed_tokens.weight) == tied
    return m


def batch(seed: int, pad: int = 1) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        t = torch.randint(3, 384, (n,), generator=g).tolist()
        t[n // 2] = pad  # the padding id as a real token: nn.Embedding gives its row no gradient
        return t

    p1, p2 = ids(40), ids(9)
    return [Encoded(p1, ids(30)), Encoded(p1, ids(7)), Encoded(p2, ids(25)), Encoded(p2, ids(3))]


def micro_batches(model, score, autocast: bool, steps: int = 1):
    """``steps`` optimizer-less accumulations of two micro-batches (what a step of grad_accum 2 does)."""
    ctx = torch.autocast("cpu", torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    for s in range(steps):
        for b in (batch(10 * s), batch(10 * s + 1)):
            with ctx:
                logp = score(model, b, 0, chunk=16)  # chunk < tokens: several LM-head chunks
            (logp.float().sum() / 2).backward()


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointed"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_gradients_equal_plain_autograd(tied, autocast, checkpointing, packed):
    plain = tiny(tied)
    if checkpointing:
        plain.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    plain.train()
    ours = copy.deepcopy(plain)
    state = flatten(ours)
    assert accumulate_in_place(ours) == ["lm_head", "embed_tokens"]
    score = packed_sequence_logps if packed else sequence_logps
    micro_batches(plain, score, autocast)
    micro_batches(ours, score, autocast)
    want, got = grads(plain), grads(ours)
    assert want.keys() == got.keys()
    tol = 2e-2 if autocast else 1e-5  # bf16: the same products, summed in another order
    for n in want:
        scale = want[n].abs().max().item() + 1e-12
        assert (got[n] - want[n]).abs().max().item() <= tol * scale, n
    emb = ours.get_input_embeddings()
    if not tied:  # the padding id's row gets nothing from the input embedding, as nn.Embedding
        assert got["model.embed_tokens.weight"][1].abs().max() == 0
    assert emb.weight.grad.data_ptr() >= state.grads.data_ptr()  # still a view of the buffer


def test_flatten_shares_buffers_and_keeps_values():
    m = tiny(tied=True)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    state = flatten(m)
    assert isinstance(state, FlatState)
    params = list(m.parameters())
    assert len(state.params) == len(params)  # the tied weight once
    base, gbase = state.data.untyped_storage().data_ptr(), state.grads.untyped_storage().data_ptr()
    for n, p in m.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
        assert p.untyped_storage().data_ptr() == base and p.grad.untyped_storage().data_ptr() == gbase, n
        assert p.data_ptr() % 64 == 0  # aligned views
        assert p.grad.abs().max() == 0
    assert m.lm_head.weight is m.model.embed_tokens.weight
    total = sum(p.numel() for p in params)
    assert total <= state.data.numel() < total + 16 * len(params)
    # in place across backward and zero_grad: the views never move
    ptrs = [p.grad.data_ptr() for p in params]
    micro_batches(m, packed_sequence_logps, autocast=False)
    assert [p.grad.data_ptr() for p in params] == ptrs and state.grads.abs().sum() > 0
    state.zero_grad()
    assert state.grads.abs().max() == 0 and [p.grad.data_ptr() for p in params] == ptrs
    state.release()
    for n, p in m.named_parameters():
        assert p.grad is None and torch.equal(p.detach(), before[n])
        assert p.untyped_storage().data_ptr() != base
    assert m.lm_head.weight is m.model.embed_tokens.weight


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_steps_equal_plain_adamw(fused):
    """Three steps of clipped AdamW (two decay groups, as the trainer builds them): the flat state's
    parameters equal the plain run's; the moments are views of one buffer."""
    plain = tiny(tied=True)
    start = plain.lm_head.weight.detach().clone()
    ours = copy.deepcopy(plain)
    state = flatten(ours)
    accumulate_in_place(ours)

    def optimizer(model):
        decay = [p for p in model.parameters() if p.ndim >= 2]
        rest = [p for p in model.parameters() if p.ndim < 2]
        return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                 lr=1e-2, fused=fused)

    o_plain, o_ours = optimizer(plain), optimizer(ours)
    moments = adamw_state(o_ours, state)
    assert moments is not None and moments.numel() == 2 * state.data.numel()
    for step in range(3):
        for model, opt in ((plain, o_plain), (ours, o_ours)):
            micro_batches(model, packed_sequence_logps, autocast=False, steps=1)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
        o_plain.zero_grad(set_to_none=True)
        state.zero_grad()
    for (n, a), b in zip(plain.named_parameters(), ours.parameters()):
        assert (a - b).abs().max().item() <= 1e-5, n
        assert o_ours.state[b]["exp_avg"].untyped_storage().data_ptr() == moments.untyped_storage().data_ptr()
        assert float(o_ours.state[b]["step"]) == 3.0
    assert (ours.lm_head.weight - start).abs().max() > 1e-3  # the steps did move the weights


def test_adamw_state_leaves_other_optimizers_alone():
    m = tiny(tied=True)
    state = flatten(m)
    assert adamw_state(torch.optim.RMSprop(m.parameters()), state) is None
    assert adamw_state(torch.optim.AdamW(m.parameters(), amsgrad=True), state) is None
    other = torch.nn.Linear(2, 2)
    assert adamw_state(torch.optim.AdamW(list(m.parameters()) + list(other.parameters())), state) is None


def test_no_grad_forward_unchanged():
    """The reference pass (no_grad) scores the same through the in-place functions."""
    plain = tiny(tied=True).eval()
    ours = copy.deepcopy(plain)
    flatten(ours)
    accumulate_in_place(ours)
    with torch.no_grad():
        assert torch.equal(packed_sequence_logps(plain, batch(3), 0), packed_sequence_logps(ours, batch(3), 0))
