"""Shared-prompt packing in the megatron trainer (trainer.pack_prompts): packed equals unpacked.

Every megatron process is a real torchrun worker over gloo with the CPU patches of
cpu_patches/megatron_cpu_site (as in test_megatron.py), on the tiny random Llama. The rows mix what
packing meets: pairs whose chosen and rejected differ in length, two pairs of one prompt (four
responses behind it), K point rows of one prompt, and lone prompts, cut into micro-batches that
hold several prompts and split some of them. Tolerances: sequence and per-token log-probs within
1e-5 (fp32; only the order of sums differs), one backward pass's loss within 1e-5 relative and its
gradients within 1e-5; the worker's own reference pass within 1e-5 and its optimizer steps' losses
and gradient norms within 1e-4 relative over 2 epochs (Adam amplifies float32 rounding step by step).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sppo_nemo.schema.protocols import PairRow, PointRow
from tests.integration.test_megatron import point_rows, rows_file
from cpu_patches.megatron_cpu import ROOT, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBE = ROOT / "tests" / "integration" / "megatron_packing_probe.py"


def torchrun(n: int, *args) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}", str(PROBE),
           *map(str, args)]
    proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def shared_point_rows() -> list[PointRow]:
    """K = 3 rows for each of two prompts (responses of different lengths), between lone prompts."""
    base = point_rows(6, seed=2)
    rows = [base[0]]
    for src, k in ((base[1], 3), (base[2], 3)):
        rows += [PointRow(prompt_id=src.prompt_id, prompt=src.prompt, response=src.response[: 12 + 17 * j],
                          finished=j % 2 == 0, win_prob=(j + 1) / 4) for j in range(k)]
    return rows + base[3:]  # 10 rows


def shared_pair_rows() -> list[PairRow]:
    """Pairs with chosen and rejected of different lengths; prompt 1 has two pairs."""
    base = point_rows(5, seed=4)
    rows = []
    for n, r in enumerate(base):
        for k in range(2 if n == 1 else 1):
            rows.append(PairRow(prompt_id=r.prompt_id, prompt=r.prompt, chosen=r.response[: 60 - 20 * k],
                                rejected=r.response[::-1][: 25 + 10 * k], chosen_finished=True,
                                rejected_finished=k == 0, pair_prob=0.75))
    return rows  # 6 rows


def rows_for(loss: str, tmp: Path) -> Path:
    return rows_file(tmp / "rows.jsonl", shared_point_rows() if loss == "sppo" else shared_pair_rows())


@pytest.mark.parametrize("loss,n,args", [
    ("sppo", 1, []), ("sppo", 1, ["--attention", "local"]), ("sppo", 2, ["--tp", 2]), ("sppo", 2, ["--pp", 2]),
    ("sppo", 2, []), ("dpo", 1, []), ("dpo", 2, ["--tp", 2]), ("dpo", 2, ["--pp", 2]),
], ids=["sppo-tp1", "sppo-local", "sppo-tp2", "sppo-pp2", "sppo-dp2", "dpo-tp1", "dpo-tp2", "dpo-pp2"])
def test_packed_logps_loss_and_gradients_equal_unpacked(loss, n, args, tiny_model, tmp_path: Path) -> None:
    rows = rows_for(loss, tmp_path)
    torchrun(n, tiny_model, rows, tmp_path / "probe.pt", "--loss", loss, "--micro", 4, *args)
    got = torch.load(tmp_path / "probe.pt")
    plain, packed = got["unpacked"], got["packed"]
    assert plain["n_packed"] == 0 and packed["n_packed"] >= 1  # the packed pass really packed
    assert packed["logps"].shape == plain["logps"].shape == ((10, 1) if loss == "sppo" else (6, 2))
    seq = (packed["logps"] - plain["logps"]).abs().max().item()
    assert seq < 1e-5, f"sequence log-probs differ by {seq}"
    assert plain["logps"].abs().min().item() > 1.0  # real sums, not zeros
    for a, b in zip(packed["tokens"], plain["tokens"]):
        for x, y in zip(a, b):
            assert x.shape == y.shape and x.numel() > 0
            assert (x - y).abs().max().item() < 1e-5
    assert abs(packed["loss"] - plain["loss"]) <= 1e-5 * abs(plain["loss"]) and plain["loss"] > 0
    assert set(packed["grads"]) == set(plain["grads"])
    assert max(g.abs().max().item() for g in plain["grads"].values()) > 1e-2  # a real gradient
    grad = max((packed["grads"][k] - plain["grads"][k]).abs().max().item() for k in plain["grads"])
    assert grad < 1e-5, f"gradients differ by {grad}"
    norm = [torch.sqrt(sum((g.double() ** 2).sum() for g in r["grads"].values())).item() for r in (packed, plain)]
    assert abs(norm[0] - norm[1]) <= 1e-5 * norm[1]


@pytest.mark.parametrize("loss,n,args", [("sppo", 1, []), ("sppo", 2, ["--tp", 2]), ("dpo", 2, ["--pp", 2])],
                         ids=["sppo-tp1", "sppo-tp2", "dpo-pp2"])
def test_worker_reference_pass_and_steps_packed_equal_unpacked(loss, n, args, tiny_model, tmp_path: Path) -> None:
    """The worker's own reference pass and optimizer steps, packed as with trainer.pack_prompts,
    against the same plan with unpacked micro-batches."""
    rows = rows_for(loss, tmp_path)
    batch = 3 if loss == "sppo" else 2  # 10 rows → 4 micro-batches an epoch, 6 rows → 3: ≥ 3 steps of 2 in all
    torchrun(n, tiny_model, rows, tmp_path / "steps.pt", "--loss", loss, "--steps", batch, *args)
    got = torch.load(tmp_path / "steps.pt")
    packed, plain = got["packed"], got["unpacked"]
    assert plain["n_packed"] == 0 and packed["n_packed"] >= 2  # in the reference pass and in training
    assert (packed["reference"] - plain["reference"]).abs().max().item() < 1e-5
    assert plain["reference"].abs().min().item() > 1.0
    assert len(packed["metrics"]) == len(plain["metrics"]) >= 3
    for a, b in zip(packed["metrics"], plain["metrics"]):
        assert a["tokens"] == b["tokens"]
        for key in ("loss", "grad_norm", "log_ratio_mean"):
            assert abs(a[key] - b[key]) <= 1e-4 * max(abs(b[key]), 1e-3), (key, a, b)
    assert plain["metrics"][-1]["loss"] < plain["metrics"][0]["loss"] or loss == "dpo"
