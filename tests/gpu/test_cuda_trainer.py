"""The torch trainer and HF generation on CUDA in bf16 (skipped, saying why, without a GPU)."""

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

ETA = 1.0


def fit_sppo_targets(tmp_path: Path, device: str, precision: str):
    """16 point rows with P̂ = 1 or 0 fitted for 6 epochs: the square loss of eq. (3.7)."""
    from sppo_nemo.backends.torch_trainer import TorchTrainer
    from sppo_nemo.schema.config import TrainerConfig
    from sppo_nemo.schema.protocols import PointRow
    from sppo_nemo.formats.rows import write_rows
    from sppo_nemo.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    rows = [PointRow(f"p{i}", f"What is {i} + {i}?", f"It is {2 * i}.", True, p, None)
            for i, p in zip(range(16), [1.0, 0.0] * 8)]
    write_rows(tmp_path / "rows.jsonl", rows)
    cfg = TrainerConfig(lr=3e-3, warmup_ratio=0.0, batch_size=8, epochs=6, precision=precision,
                        max_prompt_length=64, max_length=96)
    trainer = TorchTrainer(cfg, "sppo", eta=ETA, system_prompt=None, seed=0, device=device)
    return trainer.train(model, tmp_path / "rows.jsonl", tmp_path / "out")


def test_bf16_training_on_cuda_fits_the_sppo_targets(tmp_path: Path):
    result = fit_sppo_targets(tmp_path, "cuda", "bf16")
    # Before the first update π = π_t, so each row's loss is (0 − η(P̂ − ½))² = ¼ (η = 1, P̂ ∈ {0, 1});
    # bf16 log-probabilities of two forwards over differently padded batches may differ a little.
    assert result.summary["first_loss"] == pytest.approx((ETA * 0.5) ** 2, abs=0.05)
    losses = result.summary["epoch_losses"]
    assert losses[-1] < 0.5 * losses[0], losses
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:  # the fp32 master weights
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_fp32_training_on_cuda_follows_the_cpu_run(tmp_path: Path):
    """fp32 on CUDA takes the flat-buffer path with the LM head / embedding gradients added in place
    (flat_state.py) and fused AdamW over those buffers with its step counter on the device: the
    same fit as on the CPU, step for step, up to the two devices' summation orders."""
    cpu = fit_sppo_targets(tmp_path / "cpu", "cpu", "fp32").summary["epoch_losses"]
    cuda = fit_sppo_targets(tmp_path / "cuda", "cuda", "fp32").summary["epoch_losses"]
    assert cuda == pytest.approx(cpu, rel=2e-3, abs=1e-5), (cuda, cpu)
    assert cuda[-1] < 0.5 * cuda[0], cuda


def test_generation_on_cuda_is_seeded(tmp_path: Path):
    from sppo_nemo.backends.hf import HFGenerator
    from sppo_nemo.schema.protocols import Prompt, SamplingParams
    from sppo_nemo.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    gen = HFGenerator(str(model), None, device="cuda")
    prompts = [Prompt("a", "Hello?"), Prompt("b", "What is 2 + 2?")]
    params = SamplingParams(1.0, 1.0, 8, seed=3, batch_size=4)
    first = gen.generate(prompts, 2, params)
    assert gen.generate(prompts, 2, params) == first
    assert gen.generate(prompts, 2, SamplingParams(1.0, 1.0, 8, seed=4, batch_size=4)) != first
    assert all(1 <= s.num_tokens <= 8 for ss in first for s in ss)
