"""Training-step benchmark on the shared workload (shared/bench-data/pref64.jsonl).

Same work as the reference figure in shared/bench-data/README.md: SmolLM2-135M-Instruct, fp32,
4 preference pairs per optimizer step, max length 256, reference log-probs computed before the
first step (excluded from the step time), pairwise hard-label SPPO loss (eq. B.1 with
P(y_w ≻ y_l) = 1, what TRL calls `sppo_hard`). It runs our TorchTrainer end to end on the first
--steps × 4 rows and reads the per-step wall time from the trainer's own metrics; peak memory
is this process's maximum resident set size.

    .venv/bin/python benchmarks/bench_trainer_step.py [--steps 6] [--threads 2] [--backend megatron]

--backend megatron runs the same rows through the megatron trainer (TP=1, one torchrun worker;
without CUDA with the test-only CPU patches of tests/megatron_cpu_site), whose step time and
peak RSS are the worker's (the largest child process).

Reference (TRL 1.16 DPOTrainer(loss_type=["sppo_hard"]), same machine class): 15.3 s per step,
7.8 GiB peak RSS. Targets: time ≤ 1.0× and memory ≤ 0.4× of that.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

TRL_STEP_SECONDS = 15.3
TRL_PEAK_GIB = 7.8
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "bench-data" / "pref64.jsonl"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--steps", type=int, default=6, help="optimizer steps (the first is reported apart as warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--backend", default="torch", choices=["torch", "megatron"])
    ap.add_argument("--micro-batch", type=int, default=4,
                    help="pairs per forward/backward; 4 // micro-batch accumulation steps make one step of 4")
    args = ap.parse_args()

    import torch

    from sppo_nemo.backends.hf import smollm2_checkpoint
    from sppo_nemo.backends.torch_trainer import TorchTrainer
    from sppo_nemo.config import TrainerConfig
    from sppo_nemo.protocols import PairRow
    from sppo_nemo.rows import write_rows

    torch.set_num_threads(args.threads)
    if not args.data.is_file():
        print(f"missing workload {args.data}", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in args.data.read_text().splitlines()][: 4 * args.steps]
    pairs = [PairRow(str(r["id"]), r["prompt"], r["chosen"], r["rejected"], True, True, 1.0) for r in rows]
    policy = smollm2_checkpoint()
    if 4 % args.micro_batch:
        ap.error("--micro-batch must divide 4")
    cfg = TrainerConfig(lr=5e-7, warmup_ratio=0.0, batch_size=args.micro_batch, grad_accum=4 // args.micro_batch, epochs=1, precision=args.precision,
                        max_prompt_length=256, max_length=256, gradient_checkpointing=args.gradient_checkpointing)
    if args.backend == "megatron":
        import os

        from sppo_nemo.backends.megatron.controller import MegatronTrainer

        cfg.backend = "megatron"
        if not torch.cuda.is_available():
            site = Path(__file__).resolve().parents[1] / "tests" / "megatron_cpu_site"
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        trainer = MegatronTrainer(cfg, "sppo_pair", eta=1e3, system_prompt=None, seed=0)
    else:
        trainer = TorchTrainer(cfg, "sppo_pair", eta=1e3, system_prompt=None, seed=0, device="cpu")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.time()
    with tempfile.TemporaryDirectory() as out:
        rows_file = Path(out) / "rows.jsonl"  # what the build stage writes, read by either backend
        write_rows(rows_file, pairs)
        result = trainer.train(policy, rows_file, Path(out) / "policy")
    total = time.time() - t0
    who = resource.RUSAGE_CHILDREN if args.backend == "megatron" else resource.RUSAGE_SELF
    peak = resource.getrusage(who).ru_maxrss / 2**20  # KiB → GiB
    steps = [m["seconds"] for m in result.metrics]
    steady = steps[1:] or steps
    tokens = statistics.mean(m["tokens"] for m in result.metrics)
    step = statistics.median(steady)
    print(f"backend: {args.backend}; workload: {args.data.name}, {len(pairs)} pairs, batch 4 (micro-batch {args.micro_batch}), "
          f"max length 256, {args.precision}, "
          f"{args.threads} threads, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}")
    print(f"reference log-probs (once, before step 1): {result.summary['reference_logps_seconds']:.2f} s")
    print(f"step seconds: first {steps[0]:.2f}, median of the rest {step:.2f} "
          f"(min {min(steady):.2f}, max {max(steady):.2f}); {tokens:.0f} tokens per step, "
          f"{tokens / step:.0f} tokens/s")
    print(f"peak RSS: {peak:.2f} GiB (after model load {rss_before:.2f} GiB); whole run {total:.1f} s")
    print(f"vs TRL sppo_hard: time {step / TRL_STEP_SECONDS:.2f}x (target <= 1.0), "
          f"memory {peak / TRL_PEAK_GIB:.2f}x (target <= 0.4)")
    print(f"losses: {[round(m['loss'], 1) for m in result.metrics]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
