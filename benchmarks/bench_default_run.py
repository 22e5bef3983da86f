"""End-to-end benchmark of the embedded default recipe (the main job on a fresh machine).

Runs `sppo-run recipes/smollm2_sppo_3iter.yaml` in a fresh output directory and prints wall
time per stage, peak memory, the precisions `precision: auto` resolved to, and per iteration the
held-out win rates with 95% intervals, the KL estimate and response lengths. Goal on 2 cores, with
the final win rate vs π_1 inside [0.736, 0.843]: at most 6 minutes where the run computes in bf16
(a CPU with native bf16 matrix products), at most 8 where it computes in fp32 (AVX2-only CPUs).
The machine is shared: run it in a quiet window, and give `--recipe` and overrides (e.g.
generation.precision=fp32 trainer.precision=fp32 evaluation.kl_precision=fp32, the fp32 class's run
on any CPU) to time other settings in the same window; SPPO_MALLOC=system in the environment runs it
on glibc's allocator defaults (sppo_nemo/process/allocator.py). After the run it measures this machine's
fp32 and bf16 matmul rates (torch.mm, 2048², the run's threads): a wall time is only comparable
between machines, or windows, of the same rates.

    .venv/bin/python benchmarks/bench_default_run.py [--out DIR] [--recipe VARIANT.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2_sppo_3iter.yaml"
GOAL_SECONDS = {"bf16": 360, "fp32": 480}  # by the precision the run computed in


def matmul_rates() -> str:
    """This machine's torch.mm GFLOP/s in fp32 and bf16, measured in a child process (after the run,
    so the run's rusage is not touched)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "matmul_peak.py"), "--cpu"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return "not measured (" + (proc.stderr.strip().splitlines() or ["no output"])[-1] + ")"
    fp32, bf16 = proc.stdout.split()
    return f"{fp32} GFLOP/s fp32, {bf16} GFLOP/s bf16"


def resolved_precisions(run: Path) -> dict[str, str]:
    """The precisions the run computed in, from its resolved recipe (``auto`` already decided)."""
    from omegaconf import OmegaConf

    r = OmegaConf.load(run / "recipe.resolved.yaml")
    return {"generation": r.generation.precision, "trainer": r.trainer.precision,
            "kl": r.evaluation.kl_precision}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="output_dir (default: a new temporary folder)")
    ap.add_argument("--recipe", type=Path, default=RECIPE, help="a variant of the default, e.g. "
                    "recipes/smollm2_sppo_3iter_vllm.yaml")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="sppo-bench-"))
    cmd = [sys.executable, "-m", "sppo_nemo", str(args.recipe), f"output_dir={out}", "--no-progress", *args.overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = usage.ru_maxrss / 2**20
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        return proc.returncode
    run = next(p for p in out.iterdir() if p.is_dir())  # the one run folder, output_dir/<recipe name>
    print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min); peak RSS: {peak:.2f} GiB; run dir {run}")
    print(f"CPU: user {usage.ru_utime:.0f} s, system {usage.ru_stime:.0f} s; {usage.ru_minflt / 1e6:.2f} M minor page "
          f"faults (allocator: {os.environ.get('SPPO_MALLOC') or 'sppo_nemo/process/allocator.py'})")
    print("\nseconds per stage:")
    per_stage: dict[str, list[float]] = {}
    for manifest in sorted(run.glob("iter_*/*/manifest.json")):
        m = json.loads(manifest.read_text())
        per_stage.setdefault(m["stage"].split("/")[1], []).append(m["seconds"])
        print(f"  {m['stage']:<18} {m['seconds']:7.1f}")
    print("  totals: " + ", ".join(f"{k} {sum(v):.0f}" for k, v in per_stage.items()))
    print()
    print(proc.stdout[proc.stdout.index("| iter |"):].strip())
    final = json.loads(sorted(run.glob("iter_*/evaluate/metrics.json"))[-1].read_text())
    win = final["win_rate_vs_base"]
    precisions = resolved_precisions(run)
    goal = GOAL_SECONDS["bf16" if "bf16" in precisions.values() else "fp32"]
    ok = 0.736 <= win <= 0.843 and wall <= goal
    print(f"\nprecisions: " + ", ".join(f"{k}={v}" for k, v in precisions.items()))
    print(f"this machine's torch.mm: {matmul_rates()}")
    print(f"goal (final win vs π_1 {win:.3f} inside [0.736, 0.843], wall {wall:.0f} s ≤ {goal} s): "
          f"{'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
