"""What one step checkpoint of the torch trainer costs (sppo_nemo/formats/step_checkpoints.py): bytes on
disk, seconds to write it (torch.save, fsync, sha256, rename) and to verify and read it back, for
the default recipe's policy (SmolLM2-135M, fp32 weights and AdamW's two moments), beside the
seconds of one optimizer step of the same trainer on a batch of the default recipe's shape.

    .venv/bin/python benchmarks/checkpoint_cost.py [--model smollm2|DIR] [--dir TMPDIR]

The machine's fp32 and bf16 matmul rates are printed after (benchmarks/matmul_peak.py --cpu).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sppo_nemo.backends import policy_location  # noqa: E402
from sppo_nemo.backends.flat_state import adamw_state, flatten  # noqa: E402
from sppo_nemo.backends.hf import load_causal_lm  # noqa: E402
from sppo_nemo.schema.config import SHIPPED_SMOLLM2, TrainerConfig  # noqa: E402
from sppo_nemo.formats.step_checkpoints import StepCheckpoints  # noqa: E402
from sppo_nemo.maths.training import make_optimizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=SHIPPED_SMOLLM2)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--rows", type=int, default=8, help="sequences in the timed step (trainer.batch_size)")
    ap.add_argument("--length", type=int, default=96, help="tokens per sequence in the timed step")
    args = ap.parse_args()
    model = load_causal_lm(str(policy_location(args.model)), dtype=torch.float32)
    state = flatten(model)
    opt = make_optimizer([{"params": state.params}], TrainerConfig(), fused=True)
    adamw_state(opt, state)
    ids = torch.randint(0, model.config.vocab_size, (args.rows, args.length))
    started = time.perf_counter()
    loss = model(input_ids=ids).logits.float().log_softmax(-1).mean()
    loss.backward()
    opt.step()
    state.zero_grad()
    step_seconds = time.perf_counter() - started

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ck = StepCheckpoints(Path(tmp), plan_steps=10)
        payload = {"step": 0, "params": state.data, "optimizer": opt.state_dict()}
        t0 = time.perf_counter()
        folder = ck.save(0, lambda d: torch.save(payload, d / "state.pt"))
        write = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        t0 = time.perf_counter()
        found = ck.latest()
        torch.load(found.folder / "state.pt", weights_only=True)
        read = time.perf_counter() - t0
    n = sum(p.numel() for p in state.params)
    print(f"model: {args.model} ({n / 1e6:.1f} M trainable parameters, fp32)")
    print(f"checkpoint: {size / 2**30:.2f} GiB; write {write:.2f} s ({size / 2**20 / write:.0f} MiB/s, with fsync and "
          f"sha256); verify + read back {read:.2f} s")
    print(f"one optimizer step ({args.rows} × {args.length} tokens, fp32, forward + backward + AdamW): "
          f"{step_seconds:.2f} s; a checkpoint costs {write / step_seconds:.1f} steps")
    rates = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "matmul_peak.py"), "--cpu"],
                           capture_output=True, text=True)
    print(rates.stdout.strip())


if __name__ == "__main__":
    main()
