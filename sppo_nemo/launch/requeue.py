"""A Slurm job that requeues itself must make progress between requeues, or stop and say so.

The one-allocation launcher (launchers/slurm_allocation.sbatch) and the chained mode's stage jobs
(:func:`requeue_job`, from ``sppo-run --stage``) requeue themselves when Slurm's warning signal
(SIGUSR1, five minutes before the time limit) stops sppo-run: the rerun
resumes at the last finished chunk or step checkpoint. If a job is stopped twice in a row with
nothing new on disk (no stage finished, no chunk, no step checkpoint: a stage whose step or chunk
is longer than the job's time), requeueing again would loop forever. Each stop of a Slurm job is
recorded in ``jobs/stops.jsonl``; a stop that finds the same progress as the job's previous stop
is refused as a user error (exit 1, so the script does not requeue) naming the fix.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

from sppo_nemo.launch.records import jobs_dir

STOPS = "stops.jsonl"


def progress(run_dir: Path) -> str:
    """A digest of what the run has on disk that a resumed job would not redo: the finished stages,
    and the names of the files in unfinished stages' folders (chunks, step checkpoints), logs and
    half-written temporaries left out."""
    names = sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("iter_*/*/_DONE"))
    for partial in sorted(run_dir.glob("iter_*/*.partial")):
        names += sorted(str(p.relative_to(run_dir)) for p in partial.rglob("*")
                        if p.is_file() and p.suffix != ".log" and not any(q.endswith(".tmp") for q in p.parts))
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def record_stop(run_dir: Path, job_id: str, signal_name: str) -> str | None:
    """Record a stop of Slurm job ``job_id``; the message to stop with if the job's previous stop
    saw the same progress (a requeue loop that does nothing), else None."""
    path = jobs_dir(run_dir) / STOPS
    now = progress(run_dir)
    previous = None
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("job") == job_id:
                previous = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"job": job_id, "signal": signal_name, "progress": now,
                            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
    if previous is not None and previous.get("progress") == now:
        return (f"Slurm job {job_id} was stopped ({signal_name}) twice with nothing new finished in between (no "
                f"stage, chunk or step checkpoint), so it is not requeued again: its time limit is shorter than "
                f"one chunk or checkpoint period. Give the job more time (#SBATCH --time), or checkpoint more "
                f"often (trainer.checkpoint_every), then resubmit the same command; everything finished is kept.")
    return None


def requeue_job(job_id: str) -> str:
    """``scontrol requeue`` this job (it is killed, then starts again once Slurm lets it: about a
    minute); what happened, in words."""
    try:
        proc = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"could not requeue Slurm job {job_id} ({exc}); resubmit with --submit to resume"
    if proc.returncode != 0:
        return (f"could not requeue Slurm job {job_id} (scontrol: {proc.stderr.strip() or proc.returncode}); "
                f"resubmit with --submit to resume")
    return f"warned of the time limit: Slurm job {job_id} requeued itself and will resume where it stopped"
