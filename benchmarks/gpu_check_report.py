"""The two Python ends of benchmarks/gpu_check.sh: what the machine has, and the one report.

    python3 benchmarks/gpu_check_report.py env WORK          # WORK/env.json; prints it and a "flags:" line
    python3 benchmarks/gpu_check_report.py summary WORK OUT_JSON [--budget 480]

``env`` records the GPU (nvidia-smi), Python, torch and CUDA, megatron-core, transformers, and
whether Transformer Engine imports (``transformer_engine.pytorch``, as the megatron worker tries it)
and vLLM is installed (its distribution found, not imported: the vLLM step finds out the rest).
Absent ones are recorded with the reason, never an error. Its last line, ``flags: te=0|1 vllm=0|1
megatron=0|1``, is what the shell script branches on.

``summary`` reads what the steps left in WORK (steps.tsv, env.json, gpu_tests.log, bench.jsonl,
pairrm.json, vllm.json), writes every figure into OUT_JSON and prints a summary: each step's budget,
seconds and status, the gpu tests' outcomes, the megatron step figures, PairRM's and vLLM's. Standard
library only, so that it also runs in the dry run on a machine without torch.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

NOT_COVERED = [
    "tensor/pipeline parallelism > 1 and data parallelism > 1: one GPU gives megatron world size 1 (the CPU "
    "tier runs TP 2, PP 2 and DP 2 over gloo; the paper layout TP 2 x DP 4 needs an 8-GPU node)",
    "the NGC image's own versions (Python 3.12 image packages + megatron-core from .whl here; TE 2.16 and "
    "vLLM 0.20.1 only where the image has them)",
    "sppo-run end to end on a recipe (the tests and benchmarks drive the backends directly)",
]


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def env(work: Path) -> int:
    info: dict = {"python": platform.python_version()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=15)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        info["nvidia_smi"] = f"unavailable ({e})"
    try:
        import torch

        info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
        if torch.cuda.is_available():
            info["device"] = torch.cuda.get_device_name(0)
            info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except ImportError as e:
        info["torch"] = f"absent ({e})"
    try:
        import megatron.core

        info["megatron_core"] = megatron.core.__version__
        info["megatron_core_path"] = str(Path(megatron.core.__file__).parent)
    except Exception as e:  # noqa: BLE001 (an import error of any kind is the finding)
        info["megatron_core"] = None
        info["megatron_core_error"] = f"{type(e).__name__}: {e}"[:300]
    info["transformers"] = _version("transformers")
    try:
        import transformer_engine.pytorch  # noqa: F401

        info["transformer_engine"] = _version("transformer-engine") or _version("transformer_engine") or "importable"
    except Exception as e:  # noqa: BLE001
        info["transformer_engine"] = None
        info["transformer_engine_absent"] = f"{type(e).__name__}: {e}"[:300]
    from importlib.util import find_spec

    info["vllm"] = _version("vllm") if find_spec("vllm") is not None else None
    work.mkdir(parents=True, exist_ok=True)
    (work / "env.json").write_text(json.dumps(info, indent=2))
    for k, v in info.items():
        print(f"{k}: {v}")
    if info["transformer_engine"] is None:
        print("Transformer Engine: absent here, so its test variants and benchmark are skipped "
              "(the NGC image has it)")
    if info["vllm"] is None:
        print("vLLM: absent here, so its benchmark is skipped (the NGC image has it)")
    print(f"flags: te={int(info['transformer_engine'] is not None)} vllm={int(info['vllm'] is not None)} "
          f"megatron={int(info['megatron_core'] is not None)}")
    return 0


# -- the report ---------------------------------------------------------------------------------

OUTCOME = re.compile(r"^(tests/gpu/\S+::\S+?)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)(?:\s+\((.*)\))?")
SHORT_SKIP = re.compile(r"^SKIPPED \[\d+\] (tests/gpu/[^:\s]+)(?::\d+)?: (.*)$")
DURATION = re.compile(r"^([\d.]+)s (setup|call|teardown)\s+(tests/gpu/\S+)")
COUNTS = re.compile(r"=+ (.*\b(?:passed|failed|skipped|error|errors|deselected|no tests ran)\b.*?) in ([\d.]+)s")


def parse_tests(log: Path) -> dict:
    """The gpu tier's outcomes from ``pytest -v -rs --durations=0`` output (also when the step was
    killed halfway: the per-test lines come as the tests finish)."""
    if not log.is_file():
        return {"ran": False}
    tests: dict[str, dict] = {}
    skips: dict[str, list[str]] = {}  # file → the skip reasons -rs gives for it
    counts = None
    for line in log.read_text(errors="replace").splitlines():
        if m := OUTCOME.match(line):
            tests.setdefault(m[1], {})["outcome"] = m[2]
            if m[3]:
                tests[m[1]]["reason"] = m[3]
        elif m := SHORT_SKIP.match(line):
            skips.setdefault(m[1], []).append(m[2])
        elif m := DURATION.match(line):
            t = tests.setdefault(m[3], {})
            t["seconds"] = round(t.get("seconds", 0.0) + float(m[1]), 2)
        elif m := COUNTS.search(line):
            counts = {"line": m[1], "seconds": float(m[2])}
    for node, t in tests.items():
        if t.get("outcome") == "SKIPPED" and "reason" not in t:
            t["reason"] = "; ".join(dict.fromkeys(skips.get(node.split("::")[0], [])))
    tally: dict[str, int] = {}
    for t in tests.values():
        tally[t.get("outcome", "unfinished")] = tally.get(t.get("outcome", "unfinished"), 0) + 1
    return {"ran": True, "tally": tally, "pytest_summary": counts, "tests": tests}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> list:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip().startswith("{")]


def read_steps(path: Path) -> list[dict]:
    steps = []
    if path.is_file():
        for line in path.read_text().splitlines():
            name, budget, limit, seconds, rc, status, note = (line.split("\t") + [""] * 7)[:7]
            steps.append({"step": name, "budget_s": int(budget), "limit_s": int(limit or 0),
                          "seconds": float(seconds) if seconds else None, "rc": int(rc) if rc else None,
                          "status": status, "note": note})
    return steps


def summary(work: Path, out_json: Path, budget: int) -> int:
    steps = read_steps(work / "steps.tsv")
    env_info = _read_json(work / "env.json") or {}
    report = {
        "budget_s": budget,
        "budget_sum_s": sum(s["budget_s"] for s in steps),
        "seconds_total": round(sum(s["seconds"] or 0 for s in steps), 1),
        "environment": env_info,
        "steps": steps,
        "gpu_tests": parse_tests(work / "gpu_tests.log"),
        "megatron_step": _read_jsonl(work / "bench.jsonl"),
        "pairrm_bf16": _read_json(work / "pairrm.json"),
        "vllm": _read_json(work / "vllm.json"),
        "not_covered_here": NOT_COVERED,
    }
    tally = report["gpu_tests"].get("tally", {})
    failed_steps = [s["step"] for s in steps if s["status"] in ("failed", "timeout")]
    report["ok"] = not failed_steps and not tally.get("FAILED") and not tally.get("ERROR")
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=2))

    p = print
    p("\n================ gpu_check summary ================")
    if env_info:
        p(f"device: {env_info.get('device') or env_info.get('nvidia_smi', '?')}; python {env_info.get('python')}, "
          f"torch {env_info.get('torch')} (CUDA {env_info.get('torch_cuda')}), megatron-core "
          f"{env_info.get('megatron_core')}, transformers {env_info.get('transformers')}")
        p(f"Transformer Engine: {env_info.get('transformer_engine') or 'absent (skipped, not failed)'}; "
          f"vLLM: {env_info.get('vllm') or 'absent (skipped, not failed)'}")
    else:
        p("Transformer Engine, vLLM: not probed (the environment step did not run)")
    p(f"\n{'step':<22}{'budget s':>9}{'used s':>9}  status")
    for s in steps:
        used = f"{s['seconds']:.1f}" if s["seconds"] is not None else "-"
        p(f"{s['step']:<22}{s['budget_s']:>9}{used:>9}  {s['status']}{' (' + s['note'] + ')' if s['note'] else ''}")
    p(f"{'total':<22}{report['budget_sum_s']:>9}{report['seconds_total']:>9.1f}  (limit {budget} s)")
    t = report["gpu_tests"]
    if t.get("ran"):
        p(f"\ngpu tests: {t['pytest_summary']['line'] if t.get('pytest_summary') else tally} ")
        for node, r in t["tests"].items():
            if r.get("outcome") != "PASSED":
                p(f"  {r.get('outcome', 'unfinished')}: {node} {r.get('reason', '')}")
    for r in report["megatron_step"]:
        p(f"megatron step ({r.get('attention')}, micro {r.get('micro')} x accum {r.get('accum')}, seq {r.get('seq')}): "
          f"{r.get('step_seconds')} s/step, {r.get('train_tokens_per_s')} tok/s, MFU {r.get('mfu_causal')} "
          f"(of a measured {r.get('measured_bf16_peak_tflops')} TFLOP/s), peak {r.get('peak_memory_gib')} GiB")
    for r in (report["pairrm_bf16"] or {}).get("ours_gpu", []):
        p(f"PairRM bf16 batch {r['batch_size']}: {r['pairs_per_s']:.1f} pairs/s, {r['tflop_per_s']:.1f} TFLOP/s "
          f"({r['fraction_of_measured_peak']:.1%} of measured peak)")
    for r in report["vllm"] or []:
        p(f"vLLM {r.get('backend')}: {r.get('tokens')} tokens, {r.get('tokens_per_s_wall')} tok/s wall, "
          f"{r.get('tokens_per_s_generating')} tok/s generating")
    p("not covered on one GPU here: " + "; ".join(NOT_COVERED[:1]))
    tests_failed = (tally.get("FAILED") or tally.get("ERROR")) and "gpu_tests" not in failed_steps
    failed = failed_steps + (["gpu_tests"] if tests_failed else [])
    if steps and all(s["status"] == "dry-run" for s in steps):
        p("result: dry run, nothing ran")
    else:
        p("result: OK" if report["ok"] else "result: FAILED: " + ", ".join(failed))
    p(f"figures: {out_json}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "env":
        return env(Path(argv[1]))
    if len(argv) >= 3 and argv[0] == "summary":
        budget = int(argv[argv.index("--budget") + 1]) if "--budget" in argv else 480
        return summary(Path(argv[1]), Path(argv[2]), budget)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
