"""The megatron trainer on CUDA, with no CPU patches: NCCL, Float16Module, megatron's bf16
distributed optimizer, and Transformer Engine when importable (skipped without a GPU)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def _rows(path: Path, n: int) -> Path:
    from sppo_nemo.schema.protocols import PointRow
    from sppo_nemo.formats.rows import write_rows

    rng = random.Random(0)
    write_rows(path, [PointRow(f"p{i}", f"What is {i} + {i}?", f"It is {2 * i}." + " Indeed." * (i % 4), True,
                               rng.random(), None) for i in range(n)])
    return path


def _cfg(precision: str, backend: str, transformer_engine: str = "auto"):
    from sppo_nemo.schema.config import MegatronConfig, TrainerConfig

    return TrainerConfig(backend=backend, lr=1e-3, warmup_ratio=0.0, batch_size=4, grad_accum=2, epochs=2,
                         precision=precision, max_prompt_length=64, max_length=96,
                         megatron=MegatronConfig(transformer_engine=transformer_engine))


def _has_te() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


# Transformer Engine computes every fp32 GEMM in TF32 (its cublaslt_gemm.cu takes
# CUBLAS_COMPUTE_32F_FAST_TF32 for all but fp8-e5m2 inputs, whatever torch's allow_tf32 says), so the
# comparison with torch's fp32 is exact-kernel-order only without TE; with TE, TF32's 10-bit mantissa
# bounds it (about 1e-3 per product, a few products deep).
@pytest.mark.parametrize("te, tolerance", [("off", 1e-3), ("on", 2e-2)])
def test_megatron_fp32_on_cuda_matches_torch_backend(tmp_path: Path, te: str, tolerance: float):
    from sppo_nemo.backends.megatron.controller import MegatronTrainer
    from sppo_nemo.backends.torch_trainer import TorchTrainer
    from sppo_nemo.testing import build_tiny_llama

    if te == "on" and not _has_te():
        pytest.skip("Transformer Engine is not importable here (the NGC image has it)")
    model = build_tiny_llama(tmp_path / "tiny")
    rows = _rows(tmp_path / "rows.jsonl", 16)
    torch_res = TorchTrainer(_cfg("fp32", "torch"), "sppo", 10.0, None, seed=1, device="cuda").train(
        model, rows, tmp_path / "torch" / "policy")
    mg_res = MegatronTrainer(_cfg("fp32", "megatron", te), "sppo", 10.0, None, seed=1).train(
        model, rows, tmp_path / "mg" / "policy")
    a = [m["loss"] for m in torch_res.metrics]
    b = [m["loss"] for m in mg_res.metrics]
    assert len(a) == len(b) == 4
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < tolerance, (a, b)


def test_megatron_bf16_on_cuda_fits_and_exports_bf16(tmp_path: Path):
    import torch
    from safetensors import safe_open

    from sppo_nemo.backends.megatron.controller import MegatronTrainer
    from sppo_nemo.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    cfg = _cfg("bf16", "megatron")
    cfg.epochs = 6
    cfg.lr = 3e-3
    res = MegatronTrainer(cfg, "sppo", 1.0, None, seed=0).train(model, _rows(tmp_path / "rows.jsonl", 16),
                                                                 tmp_path / "out")
    losses = res.summary["epoch_losses"]
    assert losses[-1] < 0.5 * losses[0], losses
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.bfloat16
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    import transformers

    transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
