"""Run lm-eval on one policy in a worker process and read back its per-task results.

The job folder (``<stage>/lm_eval``) holds ``job.json`` (what to run), ``results/<task>.json`` (one
per finished task, written by the worker through a rename), ``worker.log`` and, when the worker
refuses, ``failed.json`` with a message for the user. A stage stopped anywhere, kill -9 included,
resumes at the first task without a results file; the worker dies with sppo-run (process/children.py).
With ``backend: vllm`` the worker runs in generation.vllm's interpreter, this package reaching it
through a link folder on its PYTHONPATH (as the vLLM generator's workers do).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

from sppo_nemo.backends.lm_eval.spec import NOT_METRICS, LmEvalSpec, headline, lm_eval_limit
from sppo_nemo.formats.artifacts import read_json, write_json
from sppo_nemo.process.children import package_link, stop_groups
from sppo_nemo.schema.errors import UserError

FAILED = "failed.json"


class LmEvalFailed(UserError):
    pass


def results_dir(job_dir: Path) -> Path:
    return job_dir / "results"


def task_file(job_dir: Path, task: str) -> Path:
    return results_dir(job_dir) / f"{task}.json"


def run(spec: LmEvalSpec, policy: str, job_dir: Path, progress=None) -> dict:
    """lm-eval's results of every task of ``spec`` on the HF checkpoint ``policy``: the tasks that
    have a results file are not run again."""
    results_dir(job_dir).mkdir(parents=True, exist_ok=True)
    todo = [t for t, _ in spec.tasks if not task_file(job_dir, t).exists()]
    if progress:
        progress(len(spec.tasks) - len(todo))
    if todo:
        _run_worker(spec, policy, job_dir, progress)
    return {t: read_json(task_file(job_dir, t)) for t, _ in spec.tasks}


def _run_worker(spec: LmEvalSpec, policy: str, job_dir: Path, progress) -> None:
    (job_dir / FAILED).unlink(missing_ok=True)
    write_json(job_dir / "job.json", {
        "model": policy, "tasks": [{"name": t, "num_fewshot": n} for t, n in spec.tasks],
        "limit": lm_eval_limit(spec.limit), "batch_size": spec.batch_size, "include_path": spec.include_path,
        "chat_template": spec.chat_template, "precision": spec.precision, "threads": spec.threads,
        "backend": spec.backend, "engine": dataclasses.asdict(spec.engine) if spec.engine else None})
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    python = sys.executable
    if spec.engine is not None:
        python = spec.engine.python
        env["PYTHONPATH"] = str(package_link(job_dir))
    cmd = [python, "-m", "sppo_nemo.backends.lm_eval", str(job_dir), str(os.getpid())]
    seen = {t for t, _ in spec.tasks if task_file(job_dir, t).exists()}
    with open(job_dir / "worker.log", "a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=spec.include_path or None)
    try:
        while True:
            code = proc.poll()
            done = {t for t, _ in spec.tasks if task_file(job_dir, t).exists()}
            if progress and done - seen:
                progress(len(done - seen))
            seen = done
            if code is not None:
                break
            time.sleep(0.5)
    finally:
        stop_groups([proc])
    if code != 0:
        raise LmEvalFailed(_failure(job_dir, code))


def _failure(job_dir: Path, code: int) -> str:
    log = job_dir / "worker.log"
    if (job_dir / FAILED).exists():
        return f"{read_json(job_dir / FAILED)['message']} (worker log: {log})"
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:] if log.exists() else []
    done = len(list(results_dir(job_dir).glob("*.json")))
    return (f"the lm-eval worker exited with code {code} after {done} task(s); the finished tasks are kept and a "
            f"rerun of the same command resumes at the next. Its log ({log}) ends:\n"
            + "\n".join(f"    {line}" for line in tail))


def metrics(spec: LmEvalSpec, results: dict) -> dict:
    """The evaluate stage's lm-eval metrics: per task its headline number and standard error as flat
    keys (``lm_eval_<task>``, ``lm_eval_<task>_stderr``: plotted and logged), and under ``lm_eval``
    every metric lm-eval reported with the few-shot count and the documents scored."""
    out: dict = {}
    detail: dict = {}
    for task, n in spec.tasks:
        r = results[task]
        own = r["results"].get(task, {})
        head = headline(task, own)
        detail[task] = {"num_fewshot": r.get("n-shot", {}).get(task, n), "samples": _samples(r, task),
                        "metrics": {k: v for k, v in own.items() if k not in NOT_METRICS},
                        "metric": head[0] if head else None}
        if head:
            out[f"lm_eval_{task}"] = head[1]
            if head[2] is not None:
                out[f"lm_eval_{task}_stderr"] = head[2]
    out["lm_eval"] = detail
    out["lm_eval_version"] = next(iter(results.values()))["lm_eval_version"] if results else None
    return out


def _samples(r: dict, task: str) -> int | None:
    """Documents scored: the task's own count, or the sum over a group's tasks (groups nest)."""
    n, groups = r.get("n-samples", {}), r.get("group_subtasks", {})
    if task in n:
        return n[task]["effective"]
    counts = [_samples(r, s) for s in groups.get(task, []) if s != task]
    counts = [c for c in counts if c is not None]
    return sum(counts) if counts else None
