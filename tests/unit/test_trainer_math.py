"""The trainer's schedule and the chunked sequence log-probabilities."""

import pytest
import torch

from sppo_nemo.backends.chat_format import Encoded
from sppo_nemo.backends.seq_logps import sequence_logps
from sppo_nemo.maths.training import lr_factor


def test_lr_factor_hand_worked():
    # total 10, warmup 2, linear: 1/3, 2/3, then 1 − (s − 2)/8
    got = [lr_factor(s, 10, 2, "linear") for s in range(4)]
    assert got == pytest.approx([1 / 3, 2 / 3, 1.0, 0.875])
    assert lr_factor(9, 10, 2, "linear") == pytest.approx(0.125)
    assert lr_factor(5, 10, 0, "constant") == 1.0
    assert lr_factor(0, 10, 0, "cosine") == pytest.approx(1.0)
    assert lr_factor(5, 10, 0, "cosine") == pytest.approx(0.5)


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def naive(model, e: Encoded) -> float:
    ids = torch.tensor([e.prompt_ids + e.response_ids])
    logp = torch.log_softmax(model(ids).logits[0].double(), -1)
    p = len(e.prompt_ids)
    return sum(logp[pos - 1, ids[0, pos]].item() for pos in range(p, ids.shape[1]))


def test_sequence_logps_equals_full_log_softmax(tiny_model):
    batch = [Encoded([1, 2, 3], [4, 5]), Encoded([7, 8], [9, 10, 11, 12]), Encoded([5] * 6, [3])]
    got = sequence_logps(tiny_model, batch, pad_id=0, chunk=3)  # chunks smaller than one row
    want = [naive(tiny_model, e) for e in batch]
    assert got.tolist() == pytest.approx(want, abs=1e-4)


def test_sequence_logps_gradient_matches_naive(tiny_model):
    batch = [Encoded([1, 2, 3], [4, 5]), Encoded([7, 8], [9, 10, 11])]
    with torch.enable_grad():
        tiny_model.zero_grad()
        sequence_logps(tiny_model, batch, pad_id=0, chunk=2).sum().backward()
        g1 = [p.grad.clone() for p in tiny_model.parameters()]
        tiny_model.zero_grad()
        total = 0
        for e in batch:
            ids = torch.tensor([e.prompt_ids + e.response_ids])
            logp = torch.log_softmax(tiny_model(ids).logits[0], -1)
            total = total + sum(logp[pos - 1, ids[0, pos]] for pos in range(len(e.prompt_ids), ids.shape[1]))
        total.backward()
        g2 = [p.grad.clone() for p in tiny_model.parameters()]
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5)
