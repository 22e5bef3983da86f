"""The queue as squeue states it, which needs no Slurm accounting (sacct does): which job ids Slurm
still holds, in what state; and scancel. Run here for a local tunnel; ``nemorun`` sends the same
command through an SSH tunnel. Standard library only, so --status and --cancel start in a second."""

from __future__ import annotations

import shlex
import subprocess

from sppo_nemo.schema.errors import UserError

SQUEUE = "squeue -h -t all -o '%i|%T|%r'"
HELD = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING")


def parse(text: str) -> dict[str, str]:
    """{job id: 'RUNNING' | 'PENDING (Dependency)' ...} of the jobs still held, from SQUEUE's output."""
    held = {}
    for line in text.splitlines():
        jid, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        if state in HELD:
            held[jid.strip()] = state + (f" ({reason})" if state == "PENDING" and reason not in ("", "None") else "")
    return held


def local_queue() -> dict[str, str]:
    return parse(_run(shlex.split(SQUEUE)))


def local_cancel(job_ids: list[str]) -> None:
    _run(["scancel", *job_ids])


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"{cmd[0]} could not run here ({exc}); run on a Slurm login node") from None
    if proc.returncode != 0:
        raise UserError(f"{cmd[0]} failed: {(proc.stderr or proc.stdout).strip()[:500]}")
    return proc.stdout
