"""PairRM annotation benchmark on the shared workload (shared/bench-data/pairrm_k5.jsonl), ours
against llm-blender side by side in ONE invocation.

Same work as the reference figure in shared/bench-data/README.md: a full-size PairRM
(DeBERTa-v3-large shape: 24 layers, hidden 1024, 128005-token embedding; random weights, since no
hub is reachable), K = 5, all 20 ordered pairs of each prompt, ~494 tokens per ordered comparison.
The tokenizer is a DeBERTa-v3-style unigram tokenizer made in-process from the workload's words
(each word and punctuation mark one piece, as common English words are in deberta-v3's 128k
vocabulary), so sequence lengths match the real tokenizer's.

Row by row (one prompt, 20 ordered pairs, one judge call each, the order of the runs rotated from
row to row so that drift in the machine's load falls on all of them alike) it times, in ordered
pairs per second:

- ours (``sppo_nemo.backends.pairrm``), CPU fp32, at each ``--batch-sizes`` (``auto``: the judge's
  CPU default token budget; a number: that many pairs per forward);
- ours with ``judge.pairs: single`` (each unordered pair once: 10 model calls a prompt; its pairs/s
  counts the 20 ordered pairs it answers for);
- ``--reference-batch-sizes``: ours on transformers' own DeBERTa forward (``attention =
  "reference"``), what the judge ran before; batch 20 there is the figure that lost to batch 1;
- llm-blender 0.0.2's ``Blender.rank`` (its own code, in the separate environment of
  scripts/blender_venv.sh, built on first use, kept running beside this process:
  ``pairrm_reference.py bench --serve``) at ``--blender-batch-sizes`` (prompts per batch; the
  reference SPPO scripts use 1);
- ours in bf16 on the CPU (opt-in there), with its largest logit deviation from fp32;
- an fp32 ``torch.mm`` (2048²) each row, the machine's matmul rate in the same window.

Then it prints the ratio ours / llm-blender (batch 1) from the same run; each run's matmul
FLOP/s (those it executed) as a fraction of the measured ``torch.mm`` rate, and its pairs/s as a
fraction of the "FLOP bound" — the mm rate over transformers' FLOPs per pair
(``deberta_forward_flops``), which our forward can pass because it does less work; padding per
batch size; and ``single``'s disagreement with both orders: max and mean |ΔM| of the probability
matrices (``symmetric`` and ``score_diff``) and how many prompts change their best or worst
response (by ``win_rate_estimates``). On random weights the position bias is random too, so the
disagreement figures say how far single is from both here, not on the trained PairRM.

    .venv/bin/python benchmarks/bench_pairrm.py                      # every row, ~30 min on 2 quiet cores
    .venv/bin/python benchmarks/bench_pairrm.py --rows 2 --reference-batch-sizes 1,20

On a CUDA device it also times ours in bf16 with large batches, with executed TFLOP/s as a fraction
of the bf16 matmul rate measured on that device in the same run (``--gpu-only``: just those, as
benchmarks/gpu_check.sh runs it). CPU figures move with whatever else the machine runs: the load average before
and after is printed with them.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from matmul_peak import cpu_mm_gflops  # noqa: E402  (benchmarks/, this script's folder)

DEFAULT_DATA = ROOT.parent / "shared" / "bench-data" / "pairrm_k5.jsonl"
REFERENCE = {1: 0.37, 8: 0.31}  # shared/bench-data/README.md, llm-blender pairs/s


def build_tokenizer(rows: list[dict], out: Path) -> Path:
    from sppo_nemo.testing.pairrm import save_test_tokenizer, train_test_tokenizer

    texts = [r["prompt"] for r in rows] + [c for r in rows for c in r["candidates"]]
    return save_test_tokenizer(train_test_tokenizer(texts, whole_words=True), out)


class Blender:
    """llm-blender's Blender.rank in its own environment, kept running; None when unavailable."""

    def __init__(self, tok_dir: Path, data: Path, rows: int, threads: int):
        proc = subprocess.run(["bash", str(ROOT / "scripts" / "blender_venv.sh")], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError("llm-blender environment could not be built:\n" + proc.stderr[-1500:])
        py = Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "python"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        cmd = [str(py), str(ROOT / "scripts" / "pairrm_reference.py"), "bench", "--serve", "--tokenizer", str(tok_dir),
               "--data", str(data), "--rows", str(rows), "--threads", str(threads)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if not json.loads(self._line()).get("ready"):
            raise RuntimeError("llm-blender server did not start")

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"llm-blender server exited ({self.proc.wait()})")
        return line

    def rank(self, row: int, batch_size: int) -> float:
        self.proc.stdin.write(json.dumps({"rows": [row], "batch_size": batch_size}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._line())["seconds"]

    def close(self) -> None:
        try:
            self.proc.stdin.write("\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def disagreement(both: list, single: list) -> dict:
    """single against both orders: |ΔM| per convention, best/worst changes per prompt."""
    import numpy as np

    from sppo_nemo.maths.preference import probabilities, win_rate_estimates

    out = {}
    for conv in ("symmetric", "score_diff"):
        mb = [probabilities(c, conv) for c in both]
        ms = [probabilities(c, conv) for c in single]
        off = [~np.eye(m.shape[0], dtype=bool) for m in mb]
        d = np.concatenate([np.abs(a - b)[o] for a, b, o in zip(mb, ms, off)])
        wb = [win_rate_estimates(m) for m in mb]
        ws = [win_rate_estimates(m) for m in ms]
        out[conv] = {"max_abs_dM": float(d.max()), "mean_abs_dM": float(d.mean()),
                     "best_changed": sum(int(np.argmax(a) != np.argmax(b)) for a, b in zip(wb, ws)),
                     "worst_changed": sum(int(np.argmin(a) != np.argmin(b)) for a, b in zip(wb, ws)),
                     "prompts": len(both)}
    return out


def gpu_figures(args, prompts, cands, tokens, pairs_per_row: int, results: dict) -> None:
    """Ours in bf16 on the GPU at --gpu-batch-sizes: pairs/s and executed TFLOP/s, as a fraction of
    the bf16 matmul rate measured on the same device just before (matmul_peak)."""
    import torch

    from matmul_peak import measured_bf16_peak
    from sppo_nemo.backends.pairrm.judge import PairRMJudge
    from sppo_nemo.testing.pairrm import random_pairrm

    name = torch.cuda.get_device_name(0)
    peak = measured_bf16_peak() / 1e12
    results["gpu_measured_bf16_peak_tflop_per_s"] = peak
    print(f"{name}: measured bf16 matmul peak {peak:.0f} TFLOP/s (8192³)", flush=True)
    gnet = random_pairrm(128005 if args.size == "large" else tokens.vocab_size, args.size, seed=0)
    judge = PairRMJudge.from_model(gnet, tokens, device="cuda", dtype="bf16")
    many_p, many_c = prompts * args.gpu_repeat, cands * args.gpu_repeat
    judge.preference_matrices(many_p[:4], many_c[:4])
    for bs in [int(b) for b in args.gpu_batch_sizes.split(",")]:
        judge.batch_size, judge.max_batch_tokens = bs, bs * 2048
        for key in judge.stats:
            judge.stats[key] = 0.0 if key in ("forward_s", "flops") else 0
        torch.cuda.synchronize()
        t = time.perf_counter()
        judge.logit_matrices(many_p, many_c)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        tflops = judge.stats["flops"] / dt / 1e12
        r = {"device": name, "batch_size": bs, "pairs": len(many_p) * pairs_per_row, "seconds": dt,
             "pairs_per_s": len(many_p) * pairs_per_row / dt, "tflop_per_s": tflops,
             "fraction_of_measured_peak": tflops / peak}
        results["ours_gpu"].append(r)
        print(f"ours        {name} bf16 batch {bs:3d}: {r['pairs_per_s']:.1f} pairs/s, {tflops:.1f} TFLOP/s "
              f"({tflops / peak:.1%} of the measured {peak:.0f})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rows", type=int, default=8, help="prompts of the workload to score (8 = all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-sizes", default="auto,1,20",
                    help="our CPU fp32 batch sizes: pairs per forward, or auto (the judge's CPU default)")
    ap.add_argument("--no-single", dest="single", action="store_false", help="skip judge.pairs: single")
    ap.add_argument("--reference-batch-sizes", default="",
                    help="also time transformers' own DeBERTa forward at these batch sizes (e.g. 1,20)")
    ap.add_argument("--no-cpu-bf16", dest="cpu_bf16", action="store_false",
                    help="skip the opt-in bf16 CPU run (and its logit deviation from fp32)")
    ap.add_argument("--blender-batch-sizes", default="1")
    ap.add_argument("--no-blender", action="store_true", help="skip llm-blender (no separate environment)")
    ap.add_argument("--gpu-batch-sizes", default="20,64,160")
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA bf16 figures (benchmarks/gpu_check.sh)")
    ap.add_argument("--gpu-repeat", type=int, default=16, help="on CUDA, score the workload this many times over")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--size", default="large", choices=["large", "tiny"], help="tiny: a smoke test of this script")
    args = ap.parse_args()

    import numpy as np
    import torch

    from sppo_nemo.backends.pairrm.inputs import deberta_forward_flops, make_batches, padding_fraction
    from sppo_nemo.backends.pairrm.judge import AUTO_BATCH_TOKENS, PairRMJudge
    from sppo_nemo.backends.pairrm.tokenizer import load_pairrm_tokenizer
    from sppo_nemo.schema.protocols import Prompt
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
    pairs_per_row = k * (k - 1)
    tokens = load_pairrm_tokenizer(tok_dir)
    results: dict = {"rows": len(rows), "K": k, "pairs": len(rows) * pairs_per_row, "threads": args.threads,
                     "load_before": os.getloadavg()[0], "cpu": {}, "ours_gpu": []}

    t0 = time.perf_counter()
    net = random_pairrm(128005 if args.size == "large" else tokens.vocab_size, args.size, seed=0)
    print(f"{args.size} PairRM: {sum(p.numel() for p in net.parameters()) / 1e6:.0f}M parameters, "
          f"built in {time.perf_counter() - t0:.1f}s; {len(rows)} prompts x {pairs_per_row} ordered pairs = "
          f"{results['pairs']}", flush=True)
    probe = PairRMJudge.from_model(net, tokens, device="cpu", dtype="fp32")
    lens = [len(s[0]) for s in probe.encoder.ordered_pairs(prompts, cands)[0]]
    results["tokens_per_pair"] = sum(lens) / len(lens)
    ref_flops_per_pair = sum(deberta_forward_flops(net.config, 1, n) for n in lens) / len(lens)
    print(f"tokens per ordered comparison: mean {results['tokens_per_pair']:.0f} (min {min(lens)}, max {max(lens)}); "
          f"transformers' forward {ref_flops_per_pair / 1e9:.0f} GFLOP a pair; load average "
          f"{results['load_before']:.2f} on {os.cpu_count()} cores", flush=True)

    if args.gpu_only:  # benchmarks/gpu_check.sh: the CPU rows (minutes each) tell nothing there
        if not torch.cuda.is_available():
            print("--gpu-only needs a CUDA device", file=sys.stderr)
            return 2
        gpu_figures(args, prompts, cands, tokens, pairs_per_row, results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
        return 0

    # ---- the runs, each a callable scoring one row: returns (seconds, stats or None, logit matrix or None)
    runs: dict[str, dict] = {}

    def judge_run(name, judge, attention="auto", info=""):
        def run(r):
            for key in judge.stats:
                judge.stats[key] = 0.0 if key in ("forward_s", "flops") else 0
            judge.set_attention(attention)
            t = time.perf_counter()
            mats = judge.logit_matrices([prompts[r]], [cands[r]])
            return time.perf_counter() - t, dict(judge.stats), mats[0]
        judge.preference_matrices([Prompt("w", "warm up")], [["a", "b"]])
        runs[name] = {"fn": run, "info": info, "budget": judge.max_batch_tokens, "batch_size": judge.batch_size}

    def sized(bs, **kw):
        j = PairRMJudge.from_model(net, tokens, device="cpu", dtype="fp32", **kw)
        if bs == "auto":
            j.batch_size, j.max_batch_tokens = 64, AUTO_BATCH_TOKENS[False]
        else:
            j.batch_size, j.max_batch_tokens = int(bs), int(bs) * 2048
        return j

    for bs in args.batch_sizes.split(","):
        judge_run(f"ours fp32 batch {bs}", sized(bs))
    if args.single:
        judge_run("ours fp32 single, batch auto", sized("auto", pairs="single"))
    for bs in filter(None, args.reference_batch_sizes.split(",")):
        judge_run(f"transformers' forward fp32 batch {bs}", sized(bs), attention="reference")
    if args.cpu_bf16:
        judge_run("ours bf16 batch auto", PairRMJudge.from_model(copy.deepcopy(net), tokens, device="cpu",
                                                                 dtype="bf16"))
    blender = None
    if not args.no_blender:
        try:
            blender = Blender(tok_dir, args.data, len(rows), args.threads)
        except RuntimeError as exc:
            print(f"llm-blender skipped: {exc}", flush=True)
    if blender is not None:
        for bs in [int(b) for b in args.blender_batch_sizes.split(",")]:
            runs[f"llm-blender fp32 batch {bs}"] = {
                "fn": (lambda b: lambda r: (blender.rank(r, b), None, None))(bs), "blender_batch": bs}

    names = list(runs)
    acc = {n: {"seconds": 0.0, "forward_s": 0.0, "flops": 0.0, "tokens": 0, "padded_tokens": 0, "calls": 0,
               "mats": []} for n in names}
    mm = []
    try:
        for r in range(len(rows)):
            mm.append(cpu_mm_gflops())
            for n in names[r % len(names):] + names[:r % len(names)]:
                dt, st, mat = runs[n]["fn"](r)
                a = acc[n]
                a["seconds"] += dt
                if st:
                    for key in ("forward_s", "flops", "tokens", "padded_tokens"):
                        a[key] += st[key]
                    a["calls"] += st["pairs"]
                    a["mats"].append(mat)
            print(f"row {r + 1}/{len(rows)}: " + ", ".join(f"{n} {pairs_per_row * (r + 1) / acc[n]['seconds']:.3f}"
                                                          for n in names) + " pairs/s so far", flush=True)
        mm.append(cpu_mm_gflops())
    finally:
        if blender is not None:
            blender.close()
    mm_rate = sum(mm) / len(mm)
    bound = mm_rate * 1e9 / ref_flops_per_pair
    results.update(mm_gflop_per_s=mm_rate, flop_bound_pairs_per_s=bound)
    print(f"\nfp32 torch.mm {mm_rate:.0f} GFLOP/s (min {min(mm):.0f}, max {max(mm):.0f}) -> FLOP bound of "
          f"transformers' forward {bound:.3f} pairs/s; load average now {os.getloadavg()[0]:.2f}")
    first = acc[names[0]]["mats"]
    for n in names:
        a = acc[n]
        pps = len(rows) * pairs_per_row / a["seconds"]
        rec = {"pairs_per_s": pps, "seconds": a["seconds"], "of_flop_bound": pps / bound, "model_calls": a["calls"]}
        line = f"{n:38s} {pps:.3f} pairs/s ({a['seconds']:.0f}s, {pps / bound:.0%} of the FLOP bound"
        if a["forward_s"]:
            rate = a["flops"] / a["forward_s"] / 1e9
            rec.update(gflop_per_s=rate, padding=a["padded_tokens"] / a["tokens"] - 1)
            line += f"; executed {rate:.0f} GFLOP/s = {rate / mm_rate:.0%} of mm; {a['calls']} model calls; " \
                    f"padding {rec['padding']:.1%}"
        if a["mats"] and a["mats"] is not first and "single" not in n:
            d = max(float(np.max(np.abs(x - y))) for x, y in zip(a["mats"], first))
            rec["max_abs_logit_diff"] = d
            line += f"; max |Δ logit| vs {names[0]} {d:.2g}"
        results["cpu"][n] = rec
        print(line + ")")
    base = next((n for n in names if n.startswith("llm-blender") and runs[n]["blender_batch"] == 1), None)
    ours = [n for n in names if n.startswith("ours fp32 batch")]
    if base:
        ref = REFERENCE.get(1)
        for n in ours:
            ratio = results["cpu"][n]["pairs_per_s"] / results["cpu"][base]["pairs_per_s"]
            results["cpu"][n]["ratio_vs_blender"] = ratio
            print(f"ratio, {n} / llm-blender batch 1, same run: {ratio:.2f}x")
        print(f"(llm-blender batch 1 here {results['cpu'][base]['pairs_per_s']:.3f} pairs/s; README reference {ref})")
    single = next((n for n in names if "single" in n), None)
    if single and ours:
        both = acc[ours[0]]["mats"]
        dis = disagreement(both, acc[single]["mats"])
        results["single_disagreement"] = dis
        ratio = results["cpu"][single]["pairs_per_s"] / results["cpu"][ours[0]]["pairs_per_s"]
        print(f"single / both ({ours[0]}): {ratio:.2f}x pairs/s, {acc[single]['calls']} against "
              f"{acc[ours[0]]['calls']} model calls")
        for conv, d in dis.items():
            print(f"single vs both orders, {conv}: max |ΔM| {d['max_abs_dM']:.3f}, mean {d['mean_abs_dM']:.3f}; "
                  f"best response changed in {d['best_changed']}/{d['prompts']} prompts, worst in "
                  f"{d['worst_changed']}/{d['prompts']}")
    pad = {bs: padding_fraction(lens, make_batches(lens, bs, bs * 2048)) for bs in (1, 4, 20)}
    results["padding_by_batch"] = pad
    print("padding of length-sorted batches of all rows' pairs: "
          + ", ".join(f"batch {b} {p:.1%}" for b, p in pad.items()))

    if torch.cuda.is_available():
        gpu_figures(args, prompts, cands, tokens, pairs_per_row, results)
    else:
        print("no CUDA device: GPU figures skipped")

    results["load_after"] = os.getloadavg()[0]
    if args.json:
        for a in acc.values():
            a.pop("mats")
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
