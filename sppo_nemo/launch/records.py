"""What a run directory remembers of its jobs, so that ``--status`` needs neither ``sacct`` (Slurm
accounting) nor NeMo-Run's own state (no NeMo-Run import here).

- ``jobs/iter_01-generate.json``: written by the stage's own ``sppo-run --stage`` process when it
  starts (``running``) and when it ends (``done``, ``failed`` with the message, ``terminated`` by
  SIGTERM: a time limit or ``scancel``). A job killed outright leaves ``running`` behind; the
  queue then no longer holds its job id, which ``submit.status`` reports as lost.
- ``jobs/submissions.jsonl``: one line per ``--submit``: when, the executor, NeMo-Run's
  experiment id and folder, and per stage its job id and log.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from sppo_nemo.formats.artifacts import write_json

JOBS = "jobs"


def jobs_dir(run_dir: Path) -> Path:
    return Path(run_dir) / JOBS


def stage_record_path(run_dir: Path, label: str) -> Path:
    return jobs_dir(run_dir) / (label.replace("/", "-") + ".json")


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)  # through a temporary file and a rename: --status never reads half a record


def read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def stage_started(run_dir: Path, label: str) -> dict:
    """The record of a stage process that starts now (in a Slurm job or not)."""
    rec = {"stage": label, "state": "running", "started": time.time(), "host": socket.gethostname(),
           "pid": os.getpid(), "job_id": os.environ.get("SLURM_JOB_ID")}
    _write(stage_record_path(run_dir, label), rec)
    return rec


def stage_ended(run_dir: Path, rec: dict, state: str, exit_code: int, message: str = "") -> None:
    rec = dict(rec, state=state, ended=time.time(), exit=exit_code, message=message[-2000:])
    _write(stage_record_path(run_dir, rec["stage"]), rec)


def stage_record(run_dir: Path, label: str) -> dict | None:
    return read_json(stage_record_path(run_dir, label))


def add_submission(run_dir: Path, submission: dict) -> None:
    path = jobs_dir(run_dir) / "submissions.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(submission, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def submissions(run_dir: Path) -> list[dict]:
    path = jobs_dir(run_dir) / "submissions.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a torn last line: that submission's record is lost, its jobs are not
    return out


def last_job_of(run_dir: Path, label: str) -> dict | None:
    """The most recent submitted job of a stage: {stage, job_id, name, log, job_dir, submission}."""
    for sub in reversed(submissions(run_dir)):
        for job in sub.get("jobs", []):
            if job.get("stage") == label:
                return dict(job, submission=sub.get("id"))
    return None
