"""The torch trainer with shared-prompt packing and bf16 autocast, on the tiny random Llama
(sppo_nemo.testing.build_tiny_llama) through its real tokenizer:

- a prompt cut by max_prompt_length scores the same packed and unpacked;
- training packed (trainer.pack_prompts) follows the same steps as unpacked: same losses within
  float noise, fewer tokens, the same π_{t+1};
- trainer.precision=bf16 keeps fp32 master weights: an update at lr 5e-7, far below the weights'
  bf16 spacing, still moves them, and π_{t+1} is saved in fp32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sppo_nemo.backends.chat_format import ChatFormat
from sppo_nemo.backends.hf import load_causal_lm, load_tokenizer, packed_sequence_logps
from sppo_nemo.backends.seq_logps import sequence_logps
from sppo_nemo.schema.config import TrainerConfig
from sppo_nemo.schema.protocols import PointRow
from sppo_nemo.formats.rows import write_rows

pytestmark = pytest.mark.integration

ETA = 100.0


def test_a_cut_prompt_scores_the_same_packed(tiny_model: Path):
    fmt = ChatFormat(load_tokenizer(str(tiny_model)), None)
    model = load_causal_lm(str(tiny_model)).eval()
    long = " ".join(["Explain why the sky is blue and the sea is green."] * 20)
    batch = [fmt.encode(long, "Because of scattering.", True, max_prompt=24, max_length=64),
             fmt.encode(long, "Nobody knows, really.", False, max_prompt=24, max_length=64),
             fmt.encode("Short one?", "Yes.", True, max_prompt=24, max_length=64)]
    assert len(fmt.prompt_ids(long)) > 24 and len(batch[0].prompt_ids) == 24
    assert batch[0].prompt_ids == batch[1].prompt_ids
    with torch.no_grad():
        diff = packed_sequence_logps(model, batch, 0) - sequence_logps(model, batch, 0)
    assert diff.abs().max().item() <= 1e-5


def k5_rows() -> list[PointRow]:
    """4 prompts × 5 point rows, adjacent per prompt as the build stage writes them."""
    rows = []
    for i in range(4):
        for k in range(5):
            rows.append(PointRow(f"p{i}", f"What is {i} plus {i}? Say it in words.", f"It is {2 * i + k}." * (k + 1),
                                 k != 3, [0.9, 0.1, 0.6, 0.4, 0.5][k]))
    return rows


def train(tiny_model: Path, tmp_path: Path, rows, **cfg):
    from sppo_nemo.backends.torch_trainer import TorchTrainer

    tmp_path.mkdir(parents=True, exist_ok=True)
    write_rows(tmp_path / "rows.jsonl", rows)
    c = TrainerConfig(**{"lr": 1e-3, "warmup_ratio": 0.0, "batch_size": 5, "grad_accum": 2, "epochs": 2,
                         "max_prompt_length": 64, "max_length": 96, **cfg})
    return TorchTrainer(c, "sppo", ETA, None, seed=0, device="cpu").train(
        tiny_model, tmp_path / "rows.jsonl", tmp_path / "policy")


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_packed_reference_and_training_agree_at_step_0(tiny_model: Path, tmp_path: Path):
    rows = k5_rows()
    packed = train(tiny_model, tmp_path / "packed", rows, pack_prompts=True)
    plain = train(tiny_model, tmp_path / "plain", rows, pack_prompts=False)
    # the plans differ (groups shuffled vs rows shuffled), the step count does not
    assert len(packed.metrics) == len(plain.metrics) == 4  # 20 rows × 2 epochs / 10
    got = [m["loss"] for m in packed.metrics]
    # step 0 is at π = π_t: with the packed reference pass equal to the packed training pass its
    # loss is the rows' alone, (η(P̂ − ½))² averaged; packed, a step holds whole prompts (2 of
    # them, each with the same 5 targets) so it is the mean over one prompt's rows
    for result in (packed, plain):
        assert result.metrics[0]["log_ratio_abs_max"] < 1e-4
    assert got[0] == pytest.approx(sum((ETA * (r.win_prob - 0.5)) ** 2 for r in rows[:10]) / 10, rel=1e-3)
    assert all(a["tokens"] < b["tokens"] for a, b in zip(packed.metrics, plain.metrics))


def test_packing_changes_nothing_but_the_tokens(tiny_model: Path, tmp_path: Path, monkeypatch):
    """The same plan (pack_prompts on), scored packed and unpacked: the same losses, gradient norms
    and π_{t+1}, to float noise."""
    import sppo_nemo.backends.torch_trainer as tt

    rows = k5_rows()
    packed = train(tiny_model, tmp_path / "packed", rows)
    monkeypatch.setattr(tt, "packs_prompts", lambda model: False)  # the unpacked scorer, same plan
    plain = train(tiny_model, tmp_path / "plain", rows)
    for a, b in zip(packed.metrics, plain.metrics):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
        assert a["tokens"] < b["tokens"]
    wa, wb = weights(tmp_path / "packed" / "policy"), weights(tmp_path / "plain" / "policy")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_bf16_keeps_fp32_master_weights(tiny_model: Path, tmp_path: Path):
    rows = k5_rows()[:5]
    result = train(tiny_model, tmp_path, rows, lr=5e-7, precision="bf16", batch_size=5, grad_accum=1, epochs=1)
    # at π = π_t the log-ratio is bf16 noise only (reference and training batches alike)
    assert result.metrics[0]["log_ratio_abs_max"] < 0.5
    before, after = weights(tiny_model), weights(tmp_path / "policy")
    assert {v.dtype for v in after.values()} == {torch.float32}
    moved = [(after[k] != before[k]).float().mean().item() for k in before
             if before[k].ndim == 2 and "embed_tokens" not in k]  # an embedding row moves only if its token is seen
    # Adam's first step moves each weight by ~lr = 5e-7, ~100× below the bf16 spacing of weights
    # ~0.02 (2⁻⁸ · 0.02 ≈ 8e-5): bf16 weights would not move at all; fp32 masters move nearly all
    assert min(moved) > 0.5, moved
