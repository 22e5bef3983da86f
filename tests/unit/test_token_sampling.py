"""The token sampler (sppo_nemo/backends/token_sampling.py): the hand-worked two-level inverse
CDF, never a zero-probability token, and the distribution transformers samples (temperature,
top-p nucleus) within sampling error."""

from __future__ import annotations

import pytest
import torch

from sppo_nemo.backends.token_sampling import draw, inverse_cdf

pytestmark = pytest.mark.unit


def test_hand_worked_and_frequencies():
    # probs [0.1, 0.0, 0.6, 0.3], blocks of 2: u·total in [0, 0.1) → 0, [0.1, 0.7) → 2, [0.7, 1) → 3
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).repeat(100_000, 1)
    got = inverse_cdf(probs, torch.Generator().manual_seed(0), block=2)
    freq = torch.bincount(got, minlength=4).double() / len(got)
    assert freq[1] == 0  # zero mass: never drawn
    assert torch.allclose(freq, torch.tensor([0.1, 0.0, 0.6, 0.3], dtype=torch.float64), atol=0.006)  # ~4σ


def test_a_vocabulary_not_a_multiple_of_the_block_and_empty_blocks():
    v = 1000  # 4 blocks of 256, the last padded; all mass in two entries of different blocks
    probs = torch.zeros(20_000, v)
    probs[:, 3], probs[:, 999] = 0.25, 0.75
    got = inverse_cdf(probs, torch.Generator().manual_seed(1))
    assert set(got.tolist()) == {3, 999}
    assert abs((got == 999).double().mean().item() - 0.75) < 0.015


def test_draw_applies_temperature_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(50_000, 1)
    rng = torch.Generator().manual_seed(2)
    nucleus = draw(logits, 1.0, 0.7, rng)  # the smallest set reaching 0.7: {0, 1}, renormalised
    assert set(nucleus.tolist()) == {0, 1}
    assert abs((nucleus == 0).double().mean().item() - 0.5 / 0.8) < 0.01
    hot = draw(logits, 2.0, 1.0, rng)  # p ∝ p^(1/2)
    expect = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    expect = (expect / expect.sum()).double()
    assert torch.allclose(torch.bincount(hot, minlength=4).double() / len(hot), expect, atol=0.01)


def test_same_generator_state_same_tokens():
    logits = torch.randn(8, 49152)
    a = draw(logits, 1.0, 1.0, torch.Generator().manual_seed(5))
    b = draw(logits, 1.0, 1.0, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.min() >= 0 and a.max() < 49152
