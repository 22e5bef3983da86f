"""Shared-prompt packing and the streaming export of the megatron worker on one GPU (world size 1:
one GPU allows no TP or PP > 1; the CPU tier runs those over gloo), in fp32 and bf16, with
torch SDPA and, where importable, Transformer Engine (skipped without CUDA, saying why).

Every check runs in one torchrun worker per attention kind (tests/gpu/megatron_cuda_probe.py):

- packing: the worker's own reference pass and 2 epochs of steps with trainer.pack_prompts, against
  the same plan forced unpacked. Under SDPA the packed run must really pack (a prompt's K responses
  behind it, block mask through SDPA's masked CUDA kernel) and match: reference log-probs and step
  losses / gradient norms. Under TE the worker shares no prompt (``Setup.shares_prompts``: TE's
  fused kernels take no block mask), so nothing is packed and the runs still match; in bf16 TE's
  last attention choice must not be its unfused kernel (finding 5 of issue 24);
- export: ``weights.export_hf`` streamed onto rank 0 over NCCL. Before the first step it gives back
  π_t's tensors exactly (fp32) or π_t in bf16 exactly (bf16); after training, transformers loads
  the export and reproduces the trained megatron model's sequence log-probs of every row.

Tolerances: fp32 without TE differs from unpacked only by kernel and summation order (1e-4 on the
reference, 1e-3 relative on step figures after Adam); TE computes fp32 GEMMs in TF32 and bf16 keeps
8 bits of mantissa, so there 2e-2 and 5e-2. These have not yet been run on a GPU: a first failure
by a small margin is a tolerance to widen with the figures it printed, not a bug by itself.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).resolve().parent / "megatron_cuda_probe.py"


def _has_te() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def shared_prompt_rows():
    """K = 3 point rows for each of two prompts (responses of different lengths) between lone
    prompts: what packing meets in an SPPO iteration."""
    from sppo_nemo.formats.data import builtin_prompts_path
    from sppo_nemo.schema.protocols import PointRow

    src = [json.loads(x) for x in builtin_prompts_path().read_text().splitlines()][:6]
    rng = random.Random(3)
    rows = [PointRow(src[0]["id"], src[0]["prompt"], src[0]["reference"][:50], True, rng.random())]
    for r in src[1:3]:
        rows += [PointRow(r["id"], r["prompt"], r["reference"][: 12 + 17 * j], j % 2 == 0, (j + 1) / 4)
                 for j in range(3)]
    rows += [PointRow(r["id"], r["prompt"], r["reference"][: 40 + 9 * i], i % 2 == 0, rng.random())
             for i, r in enumerate(src[3:])]
    return rows  # 10 rows, 6 prompts


def run_probe(tmp_path: Path, te: str) -> dict:
    from sppo_nemo.formats.rows import write_rows
    from sppo_nemo.testing import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny")
    rows = tmp_path / "rows.jsonl"
    write_rows(rows, shared_prompt_rows())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", str(PROBE),
           str(model), str(rows), str(tmp_path), "--te", te]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(tmp_path / "probe.pt", weights_only=False)


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-3)


def _tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def hf_logps(policy: str, rows_file: Path, dtype: torch.dtype, device: str) -> torch.Tensor:
    """transformers' sequence log-probs of every row (rows, 1), the encoding the worker uses."""
    from sppo_nemo.backends.chat_format import ChatFormat, encode_rows
    from sppo_nemo.backends.hf import load_causal_lm, load_tokenizer
    from sppo_nemo.backends.seq_logps import sequence_logps
    from sppo_nemo.formats.rows import read_rows

    tok = load_tokenizer(policy)
    seqs = encode_rows(ChatFormat(tok, None), read_rows(rows_file), 96, 128)
    model = load_causal_lm(policy, dtype).to(device).eval()
    with torch.no_grad():
        lp = sequence_logps(model, [e for s in seqs for e in s], tok.pad_token_id)
    return lp.float().cpu().view(len(seqs), -1)


@pytest.mark.parametrize("te", ["off", "on"], ids=["sdpa", "transformer-engine"])
def test_packed_steps_and_streamed_export_on_cuda(tmp_path: Path, te: str):
    if te == "on" and not _has_te():
        pytest.skip("Transformer Engine is not importable here (the NGC image has it)")
    check_probe(run_probe(tmp_path, te), te, tmp_path, "cuda")


def check_probe(got: dict, te: str, tmp_path: Path, device: str) -> None:
    """The assertions on the probe's figures (``device``: where transformers scores the export)."""
    initial = _tensors(str(tmp_path / "tiny"))
    for precision, r in got.items():
        packed, plain = r["packed"], r["unpacked"]
        losses = {k: [round(m["loss"], 5) for m in v["metrics"]] for k, v in (("packed", packed), ("unpacked", plain))}
        print(f"{te} {precision}: packed micro-batches {packed['n_packed']}/{packed['n_micro']}; losses {losses}; "
              f"TE attention {r.get('te_attention')}")
        loose = te == "on" or precision == "bf16"
        # packing: SDPA packs, TE does not (worker.Setup.shares_prompts)
        assert packed["te"] is (te == "on") and plain["n_packed"] == 0
        if te == "on":
            assert packed["shares_prompts"] is False and packed["n_packed"] == 0
        else:
            assert packed["shares_prompts"] is True and packed["n_packed"] >= 2
        ref_tol = 2e-2 if loose else 1e-4
        diff = (packed["reference"] - plain["reference"]).abs().max().item()
        assert diff <= ref_tol * plain["reference"].abs().max().item(), (precision, diff)
        assert plain["reference"].abs().min().item() > 1.0  # real sums, not zeros
        step_tol = 5e-2 if loose else 1e-3
        assert len(packed["metrics"]) == len(plain["metrics"]) >= 3
        for a, b in zip(packed["metrics"], plain["metrics"]):
            assert a["tokens"] == b["tokens"]
            for key in ("loss", "grad_norm"):
                assert _rel(a[key], b[key]) <= step_tol, (precision, key, a, b)
        half = len(packed["metrics"]) // 2  # the second epoch's steps take the first epoch's rows again
        assert sum(m["loss"] for m in packed["metrics"][half:]) < sum(m["loss"] for m in packed["metrics"][:half])
        # TE in bf16: a fused attention kernel, not the unfused L×L one (where TE says which it took)
        chosen = r.get("te_attention")
        if te == "on" and precision == "bf16" and chosen:
            assert chosen.get("use_flash_attention") or chosen.get("use_fused_attention"), chosen

        # the streamed export, before training: π_t itself
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        exported = _tensors(r["export_initial"])
        assert set(exported) == set(initial)
        for k, v in initial.items():
            assert exported[k].dtype == dtype and torch.equal(exported[k], v.to(dtype)), k
        # ... and after: the trained weights, which transformers scores as megatron did
        trained = _tensors(r["export_trained"])
        assert max((trained[k].float() - initial[k]).abs().max().item() for k in initial) > 1e-4
        cfg = json.loads((Path(r["export_trained"]) / "config.json").read_text())
        assert cfg["torch_dtype"] == ("bfloat16" if precision == "bf16" else "float32")
        hf = hf_logps(r["export_trained"], tmp_path / "rows.jsonl", dtype, device)
        mg = r["after_logps"]
        assert hf.shape == mg.shape
        tol = 5e-2 if loose else 1e-3
        diff = (hf - mg).abs().max().item()
        assert diff <= tol * mg.abs().max().item(), (precision, diff, hf.flatten().tolist(), mg.flatten().tolist())
