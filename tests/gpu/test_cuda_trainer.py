"""The torch trainer and HF generation on CUDA in bf16 (skipped without a GPU)."""

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_bf16_training_on_cuda_fits_the_sppo_targets(tmp_path: Path):
    from sppo_nemo.backends.torch_trainer import TorchTrainer
    from sppo_nemo.protocols import PointRow
    from sppo_nemo.recipe import TrainerConfig
    from sppo_nemo.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    rows = [PointRow(f"p{i}", f"What is {i} + {i}?", f"It is {2 * i}.", True, p, None)
            for i, p in zip(range(16), [1.0, 0.0] * 8)]
    cfg = TrainerConfig(lr=3e-3, warmup_ratio=0.0, batch_size=8, epochs=6, precision="bf16",
                        max_prompt_length=64, max_length=96)
    result = TorchTrainer(cfg, "sppo", eta=1.0, system_prompt=None, seed=0, device="cuda").train(
        model, rows, tmp_path / "out")
    losses = result.summary["epoch_losses"]
    assert losses[-1] < 0.5 * losses[0], losses
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16


def test_generation_on_cuda_is_seeded(tmp_path: Path):
    from sppo_nemo.backends.hf import HFGenerator
    from sppo_nemo.protocols import Prompt, SamplingParams
    from sppo_nemo.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    gen = HFGenerator(str(model), None, device="cuda")
    prompts = [Prompt("a", "Hello?"), Prompt("b", "What is 2 + 2?")]
    params = SamplingParams(1.0, 1.0, 8, seed=3, batch_size=4)
    assert gen.generate(prompts, 2, params) == gen.generate(prompts, 2, params)
