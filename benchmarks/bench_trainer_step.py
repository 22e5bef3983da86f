"""Training-step benchmark on the shared workload (shared/bench-data/pref64.jsonl): ours packed,
ours unpacked and TRL, side by side in one invocation.

Same work for each: SmolLM2-135M-Instruct, 4 preference pairs per optimizer step (micro-batch
--micro-batch × 4 / micro-batch accumulations), max length 256, reference log-probs computed
before the first step (excluded from the step time), pairwise hard-label SPPO loss (eq. B.1 with
P(y_w ≻ y_l) = 1, what TRL calls ``sppo_hard``), lr 5e-7, on the first --steps × 4 rows.

- ``packed``: our TorchTrainer with trainer.pack_prompts (a pair's prompt computed once);
- ``unpacked``: the same with pack_prompts off (each sequence carries its prompt);
- ``trl``: TRL 1.16 ``DPOTrainer(loss_type=["sppo_hard"], precompute_ref_log_probs=True)`` on
  the same texts (prompt through the same chat template), run in its own virtualenv
  (``scripts/trl_venv.sh``, built on first use; --trl-python to give another interpreter).

Each run is a fresh child process, so its peak RSS (ru_maxrss) is its own; --rounds N repeats the
runs alternately (packed, unpacked, trl, packed, ...) and reports medians, so a noisy neighbour
hits all of them alike. The step time is the median over steps 2.. of each run (the first is
warm-up). Printed: step time and peak RSS of each, tokens per step (packed vs unpacked: the
decoder's input tokens), and the ratios ours / TRL from this invocation.

    .venv/bin/python benchmarks/bench_trainer_step.py [--steps 6] [--threads 2] [--rounds 1]
        [--precision fp32|bf16] [--micro-batch 4] [--gradient-checkpointing] [--runs packed,unpacked,trl]

--backend megatron runs ours through the megatron trainer instead (TP=1, one torchrun worker;
without CUDA with the test-only CPU patches of cpu_patches/megatron_cpu_site), whose step time and peak
RSS are the worker's (the largest child process). Ours runs with sppo-run's allocator settings
(sppo_nemo/process/allocator.py; SPPO_MALLOC=system for glibc's defaults); --trl-malloc ours gives TRL's
run the same settings (GLIBC_TUNABLES). Other allocator settings (MALLOC_ARENA_MAX, LD_PRELOAD,
...) set in the environment pass to every child alike.

--trl-micro-batch and --trl-gradient-checkpointing run TRL at other settings than ours in the
same invocation: ``--micro-batch 1 --gradient-checkpointing --trl-micro-batch 4
--trl-gradient-checkpointing off`` sets ours, at its least memory, against TRL at the settings of
issue 14's figures (the header says when the settings differ).

Targets (issue 14): time ≤ 0.7× and memory ≤ 0.4× TRL's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "bench-data" / "pref64.jsonl"
LR, BETA = 5e-7, 1e-3  # β = 1/η: our eta 1e3


def peak_gib(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 2**20  # KiB → GiB


def load_rows(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()][:n]


# --------------------------------------------------------------------------- workers


def ours(args) -> dict:
    import torch

    from sppo_nemo.process.allocator import keep_freed_memory
    from sppo_nemo.backends.torch_trainer import TorchTrainer
    from sppo_nemo.schema.config import TrainerConfig
    from sppo_nemo.schema.protocols import PairRow
    from sppo_nemo.formats.rows import write_rows

    keep_freed_memory()  # as sppo-run does at start (SPPO_MALLOC=system: glibc's defaults)
    torch.set_num_threads(args.threads)
    pairs = [PairRow(str(r["id"]), r["prompt"], r["chosen"], r["rejected"], True, True, 1.0)
             for r in load_rows(args.data, 4 * args.steps)]
    cfg = TrainerConfig(lr=LR, warmup_ratio=0.0, batch_size=args.micro_batch, grad_accum=4 // args.micro_batch,
                        epochs=1, precision=args.precision, max_prompt_length=256, max_length=256,
                        gradient_checkpointing=args.gradient_checkpointing, pack_prompts=args.worker == "packed")
    if args.backend == "megatron":
        from sppo_nemo.backends.megatron.controller import MegatronTrainer

        cfg.backend = "megatron"
        if not torch.cuda.is_available():
            site = ROOT / "cpu_patches" / "megatron_cpu_site"
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        trainer = MegatronTrainer(cfg, "sppo_pair", eta=1 / BETA, system_prompt=None, seed=0)
    else:
        trainer = TorchTrainer(cfg, "sppo_pair", eta=1 / BETA, system_prompt=None, seed=0, device="cpu")
    with tempfile.TemporaryDirectory() as out:
        rows_file = Path(out) / "rows.jsonl"  # what the build stage writes, read by either backend
        write_rows(rows_file, pairs)
        result = trainer.train(Path(args.policy), rows_file, Path(out) / "policy")
    who = resource.RUSAGE_CHILDREN if args.backend == "megatron" else resource.RUSAGE_SELF
    return {"steps": [m["seconds"] for m in result.metrics], "tokens": [m["tokens"] for m in result.metrics],
            "reference_seconds": result.summary["reference_logps_seconds"], "peak_gib": peak_gib(who),
            "losses": [m["loss"] for m in result.metrics]}


def trl(args) -> dict:
    """TRL's DPOTrainer in its own venv: imports nothing of sppo_nemo."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.policy)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    rows = load_rows(args.data, 4 * args.steps)

    def prompt_text(p: str) -> str:  # our ChatFormat.prompt_text with no system prompt
        return tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)

    end = "<|im_end|>"  # our response ids end with the end-of-turn token
    data = Dataset.from_list([{"prompt": prompt_text(r["prompt"]), "chosen": r["chosen"] + end,
                               "rejected": r["rejected"] + end} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(args.policy, dtype=torch.float32)
    config = DPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.micro_batch,
                       gradient_accumulation_steps=4 // args.micro_batch, max_steps=args.steps, learning_rate=LR,
                       lr_scheduler_type="constant", warmup_steps=0, loss_type=["sppo_hard"], beta=BETA,
                       precompute_ref_log_probs=True, max_length=256, use_cpu=True, bf16=args.precision == "bf16",
                       gradient_checkpointing=args.gradient_checkpointing, save_strategy="no", report_to=[],
                       logging_steps=1, dataloader_num_workers=0, seed=0, max_grad_norm=1.0,
                       disable_tqdm=True)

    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    t0 = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tok, callbacks=[Timer()])
    ref_seconds = time.perf_counter() - t0  # precompute_ref_log_probs runs in __init__
    ds = trainer.train_dataset
    per_row = [2 * len(p) + len(c) + len(r) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])]
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": times, "tokens": [sum(per_row[4 * s:4 * s + 4]) for s in range(args.steps)],
            "reference_seconds": ref_seconds, "peak_gib": peak_gib(), "losses": losses}


# ----------------------------------------------------------------------------- driver


def trl_python(given: str | None) -> str:
    if given:
        return given
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "trl_venv.sh")], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit("scripts/trl_venv.sh failed (run it alone to see why, or pass --runs packed,unpacked):\n"
                         + proc.stderr[-2000:])
    return str(Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "python")


def trl_settings(args) -> tuple[int, bool]:
    """TRL's (micro-batch, gradient checkpointing): ours unless --trl-micro-batch /
    --trl-gradient-checkpointing say otherwise."""
    gc = {"same": args.gradient_checkpointing, "on": True, "off": False}[args.trl_gradient_checkpointing]
    return args.trl_micro_batch or args.micro_batch, gc


def child(kind: str, args, python: str) -> dict:
    micro, gc = trl_settings(args) if kind == "trl" else (args.micro_batch, args.gradient_checkpointing)
    cmd = [python, str(Path(__file__).resolve()), "--worker", kind, "--policy", args.policy, "--data", str(args.data),
           "--steps", str(args.steps), "--threads", str(args.threads), "--precision", args.precision,
           "--micro-batch", str(micro), "--backend", args.backend]
    if gc:
        cmd.append("--gradient-checkpointing")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if kind == "trl" and args.trl_malloc == "ours":
        from sppo_nemo.process.allocator import glibc_tunables

        env["GLIBC_TUNABLES"] = glibc_tunables()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the {kind} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(results: list[dict]) -> dict:
    steady = [statistics.median(r["steps"][1:] or r["steps"]) for r in results]
    return {"step": statistics.median(steady), "steps": steady, "peak": statistics.median(r["peak_gib"] for r in results),
            "tokens": statistics.mean(t for r in results for t in r["tokens"]),
            "ref": statistics.median(r["reference_seconds"] for r in results), "losses": results[0]["losses"]}


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
    ap.add_argument("--runs", default="packed,unpacked,trl", help="which runs, in the order of each round")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the runs alternately; medians reported")
    ap.add_argument("--trl-malloc", default="default", choices=["default", "ours"],
                    help="ours: TRL's run gets our allocator settings too (GLIBC_TUNABLES; ours always has them "
                         "unless SPPO_MALLOC=system)")
    ap.add_argument("--trl-micro-batch", type=int, help="TRL's micro-batch, when it differs from ours (default: ours)")
    ap.add_argument("--trl-gradient-checkpointing", default="same", choices=["same", "on", "off"],
                    help="TRL's gradient checkpointing: as ours (same), or on/off whatever ours is")
    ap.add_argument("--trl-python", help="an interpreter with trl installed (default: scripts/trl_venv.sh's)")
    ap.add_argument("--worker", choices=["packed", "unpacked", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--policy", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if 4 % args.micro_batch or 4 % (args.trl_micro_batch or 1):
        ap.error("--micro-batch and --trl-micro-batch must divide 4")
    if not args.data.is_file():
        print(f"missing workload {args.data}", file=sys.stderr)
        return 2
    if args.worker:
        print(json.dumps(trl(args) if args.worker == "trl" else ours(args)))
        return 0

    from sppo_nemo.backends.hf import smollm2_checkpoint

    args.policy = str(smollm2_checkpoint())
    kinds = [k.strip() for k in args.runs.split(",") if k.strip()]
    python = {k: trl_python(args.trl_python) if k == "trl" else sys.executable for k in set(kinds)}
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k in kinds:
            results[k].append(child(k, args, python[k]))
    s = {k: summarise(v) for k, v in results.items()}
    malloc = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k in ("LD_PRELOAD",)}
    print(f"workload: {args.data.name}, {4 * args.steps} pairs, batch 4 (micro-batch {args.micro_batch}), max length "
          f"256, {args.precision}, {args.threads} threads, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, ours on {args.backend}; {args.rounds} round(s)"
          + (f"; env {malloc}" if malloc else "") + f"; TRL's malloc: {args.trl_malloc}")
    if "trl" in s and trl_settings(args) != (args.micro_batch, args.gradient_checkpointing):
        micro, gc = trl_settings(args)
        print(f"TRL's settings differ from ours: micro-batch {micro}, gradient checkpointing {'on' if gc else 'off'}")
    for k, v in s.items():
        print(f"{k:>9}: step {v['step']:.2f} s (per round {[round(x, 2) for x in v['steps']]}), peak RSS "
              f"{v['peak']:.2f} GiB, {v['tokens']:.0f} tokens per step ({v['tokens'] / 4:.0f} per pair), "
              f"reference pass {v['ref']:.1f} s; losses {[round(x, 4) for x in v['losses']]}")
    if "packed" in s and "unpacked" in s:
        print(f"packed / unpacked: time {s['packed']['step'] / s['unpacked']['step']:.2f}x, "
              f"tokens {s['packed']['tokens'] / s['unpacked']['tokens']:.2f}x, "
              f"memory {s['packed']['peak'] / s['unpacked']['peak']:.2f}x")
    if "trl" in s:
        for k in ("packed", "unpacked"):
            if k in s:
                print(f"{k} vs TRL sppo_hard (this run): time {s[k]['step'] / s['trl']['step']:.2f}x (target <= 0.7), "
                      f"memory {s[k]['peak'] / s['trl']['peak']:.2f}x (target <= 0.4)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
