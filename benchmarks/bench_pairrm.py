"""PairRM annotation benchmark on the shared workload (shared/bench-data/pairrm_k5.jsonl).

Same work as the reference figure in shared/bench-data/README.md: a full-size PairRM
(DeBERTa-v3-large shape: 24 layers, hidden 1024, 128005-token embedding; random weights, since no
hub is reachable), K = 5, all 20 ordered pairs of each prompt, ~494 tokens per ordered comparison.
The tokenizer is a DeBERTa-v3-style unigram tokenizer made in-process from the workload's words
(each word and punctuation mark one piece, as common English words are in deberta-v3's 128k
vocabulary), so sequence lengths match the real tokenizer's; the script prints the measured
tokens per comparison (the README's ~494).

It times, in ordered pairs per second:
- ours (``sppo_nemo.backends.pairrm``) on the CPU in fp32, called the way the annotate stage calls
  a judge (one call on a chunk of up to 64 prompts, here all the rows: 20 pairs each), with its CPU
  default batching (``auto``: 512 padded tokens per forward, i.e. one realistic sequence at a time)
  and with larger batches; then the opt-in bf16 on the CPU, with its largest logit deviation from
  fp32;
- llm-blender 0.0.2's ``Blender.rank`` (its own code, in the separate environment of
  scripts/blender_venv.sh, built on first use) at batch sizes 1 and 8 (prompts per batch; the
  reference SPPO scripts use 1);
- on a CUDA device, ours in bf16 with large batches, with achieved TFLOP/s (the encoder's matmul
  FLOPs, ``deberta_forward_flops``, on the padded batches actually run) against the device's peak.

    .venv/bin/python benchmarks/bench_pairrm.py [--rows 8] [--threads 2] [--batch-sizes auto,20] [--no-blender]

Reference (llm-blender 0.0.2 Blender.rank, full-size random PairRM, 2-core CPU, fp32): 0.37 pairs/s
at batch 1, 0.31 at batch 8. CPU figures move with whatever else the machine runs: the load
average before and after is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "bench-data" / "pairrm_k5.jsonl"
REFERENCE = {1: 0.37, 8: 0.31}
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value
    return None


def build_tokenizer(rows: list[dict], out: Path) -> Path:
    from sppo_nemo.testing.pairrm import save_test_tokenizer, train_test_tokenizer

    texts = [r["prompt"] for r in rows] + [c for r in rows for c in r["candidates"]]
    return save_test_tokenizer(train_test_tokenizer(texts, whole_words=True), out)


def time_ours(judge, prompts, cands):
    """Seconds, the judge's stats and the logit matrices for scoring every prompt in one call."""
    for key in judge.stats:
        judge.stats[key] = 0.0 if key in ("forward_s", "flops") else 0
    t0 = time.perf_counter()
    mats = judge.logit_matrices(prompts, cands)
    return time.perf_counter() - t0, dict(judge.stats), mats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", type=int, default=8, help="prompts of the workload to score (8 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="auto,20",
                    help="our CPU fp32 batch sizes: pairs per forward, or auto (the judge's CPU default)")
    ap.add_argument("--no-cpu-bf16", dest="cpu_bf16", action="store_false",
                    help="skip the opt-in bf16 CPU run (and its logit deviation from fp32)")
    ap.add_argument("--blender-batch-sizes", default="1,8")
    ap.add_argument("--no-blender", action="store_true", help="skip llm-blender (no separate environment)")
    ap.add_argument("--gpu-batch-sizes", default="20,64,160")
    ap.add_argument("--gpu-repeat", type=int, default=16, help="on CUDA, score the workload this many times over")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--size", default="large", choices=["large", "tiny"], help="tiny: a smoke test of this script")
    args = ap.parse_args()

    import numpy as np
    import torch

    from sppo_nemo.backends.pairrm.judge import AUTO_BATCH_TOKENS, PairRMJudge
    from sppo_nemo.backends.pairrm.tokenizer import load_pairrm_tokenizer
    from sppo_nemo.protocols import Prompt
    from sppo_nemo.testing.pairrm import random_pairrm

    if not args.data.is_file():
        print(f"missing workload {args.data}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench_pairrm_"))
    tok_dir = build_tokenizer(rows, tmp / "tok")
    rows = rows[:args.rows]
    prompts = [Prompt(str(r["id"]), r["prompt"]) for r in rows]
    cands = [r["candidates"] for r in rows]
    k = len(cands[0])
    pairs = len(rows) * k * (k - 1)
    tokens = load_pairrm_tokenizer(tok_dir)
    results: dict = {"rows": len(rows), "K": k, "pairs": pairs, "threads": args.threads,
                     "load_before": os.getloadavg()[0], "ours_cpu": [], "blender_cpu": [], "ours_gpu": []}

    t0 = time.perf_counter()
    net = random_pairrm(128005 if args.size == "large" else tokens.vocab_size, args.size, seed=0)
    print(f"{args.size} PairRM: {sum(p.numel() for p in net.parameters()) / 1e6:.0f}M parameters, "
          f"built in {time.perf_counter() - t0:.1f}s; {len(rows)} prompts x {k * (k - 1)} ordered pairs = {pairs}")
    judge = PairRMJudge.from_model(net, tokens, device="cpu", dtype="fp32")
    lens = [len(s[0]) for s in judge.encoder.ordered_pairs(prompts, cands)[0]]
    results["tokens_per_pair"] = sum(lens) / len(lens)
    print(f"tokens per ordered comparison: mean {results['tokens_per_pair']:.0f} (min {min(lens)}, max {max(lens)}); "
          f"load average {results['load_before']:.2f} on {os.cpu_count()} cores")
    judge.preference_matrices([Prompt("w", "warm up")], [["a", "b"]])

    reference_mats = None
    configs = [("fp32", b) for b in args.batch_sizes.split(",")] + ([("bf16", "auto")] if args.cpu_bf16 else [])
    for dtype, bs in configs:
        if dtype == "bf16":  # last: converts the model in place
            judge = PairRMJudge.from_model(net, tokens, device="cpu", dtype="bf16")
        if bs == "auto":
            judge.batch_size, judge.max_batch_tokens = 64, AUTO_BATCH_TOKENS[False]
        else:
            judge.batch_size, judge.max_batch_tokens = int(bs), int(bs) * 2048
        dt, st, mats = time_ours(judge, prompts, cands)
        r = {"dtype": dtype, "batch_size": bs, "max_batch_tokens": judge.max_batch_tokens, "seconds": dt,
             "pairs_per_s": pairs / dt, "padded_tokens": st["padded_tokens"], "tokens": st["tokens"],
             "gflop_per_s": st["flops"] / st["forward_s"] / 1e9}
        r["max_abs_logit"] = max(float(np.max(np.abs(m))) for m in mats)
        if reference_mats is None:
            reference_mats = mats
        else:
            r["max_abs_logit_diff_vs_first"] = max(float(np.max(np.abs(a - b))) for a, b in zip(mats, reference_mats))
        results["ours_cpu"].append(r)
        print(f"ours        CPU {dtype} batch {bs:>4} (max {judge.max_batch_tokens} tokens): {r['pairs_per_s']:.3f} "
              f"pairs/s ({dt:.1f}s, {r['gflop_per_s']:.0f} GFLOP/s, padding "
              f"{st['padded_tokens'] / st['tokens'] - 1:.1%})"
              + (f", max |Δ logit| vs fp32 {r['max_abs_logit_diff_vs_first']:.2g} (|logit| up to "
                 f"{r['max_abs_logit']:.2g})" if dtype == "bf16" else ""),
              flush=True)
    del judge, net

    if not args.no_blender:
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "blender_venv.sh")], capture_output=True, text=True)
        if proc.returncode != 0:
            print("llm-blender environment could not be built; skipped:\n" + proc.stderr[-1500:])
        else:
            py = Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "python"
            out = tmp / "blender.json"
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            cmd = [str(py), str(ROOT / "scripts" / "pairrm_reference.py"), "bench", "--tokenizer", str(tok_dir),
                   "--data", str(args.data), "--rows", str(len(rows)), "--batch-sizes", args.blender_batch_sizes,
                   "--threads", str(args.threads), "--out", str(out)]
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if p.returncode != 0:
                print("llm-blender benchmark failed:\n" + p.stderr[-3000:])
            else:
                for r in json.loads(out.read_text()):
                    results["blender_cpu"].append(r)
                    ref = REFERENCE.get(r["batch_size"])
                    print(f"llm-blender CPU fp32 batch {r['batch_size']:3d} (Blender.rank): {r['pairs_per_s']:.3f} "
                          f"pairs/s ({r['seconds']:.1f}s)" + (f"; README reference {ref}" if ref else ""))

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = peak_tflops(name)
        net = random_pairrm(128005 if args.size == "large" else tokens.vocab_size, args.size, seed=0)
        judge = PairRMJudge.from_model(net, tokens, device="cuda", dtype="bf16")
        many_p = prompts * args.gpu_repeat
        many_c = cands * args.gpu_repeat
        judge.preference_matrices(many_p[:4], many_c[:4])
        for bs in [int(b) for b in args.gpu_batch_sizes.split(",")]:
            judge.batch_size, judge.max_batch_tokens = bs, bs * 2048
            torch.cuda.synchronize()
            dt, st, _ = time_ours(judge, many_p, many_c)
            torch.cuda.synchronize()
            tflops = st["flops"] / dt / 1e12
            r = {"device": name, "batch_size": bs, "pairs": len(many_p) * k * (k - 1), "seconds": dt,
                 "pairs_per_s": len(many_p) * k * (k - 1) / dt, "tflop_per_s": tflops, "peak_tflop_per_s": peak}
            results["ours_gpu"].append(r)
            print(f"ours        {name} bf16 batch {bs:3d}: {r['pairs_per_s']:.1f} pairs/s, {tflops:.1f} TFLOP/s"
                  + (f" ({tflops / peak:.1%} of {peak:.0f} peak)" if peak else ""), flush=True)
    else:
        print("no CUDA device: GPU figures skipped")

    results["load_after"] = os.getloadavg()[0]
    print(f"load average after: {results['load_after']:.2f}")
    if results["blender_cpu"] and results["ours_cpu"]:
        best = max(r["pairs_per_s"] for r in results["ours_cpu"] if r["dtype"] == "fp32")
        base = next((r["pairs_per_s"] for r in results["blender_cpu"] if r["batch_size"] == 1),
                    results["blender_cpu"][0]["pairs_per_s"])
        print(f"ratio, ours (best fp32) / llm-blender (batch 1), same run: {best / base:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
