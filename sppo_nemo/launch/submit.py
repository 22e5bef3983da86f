"""``sppo-run RECIPE --submit | --status | --cancel``: the chained mode, one job per unfinished stage.

``--submit`` sends only what is not done (a partial stage resumes mid-stage inside its job) and
refuses while jobs of the last submission are still queued or running. ``--status`` reads each
stage's state from the run directory (the stage markers and ``jobs/``, see ``records``) and asks
the queue only which of the submitted job ids it still holds (``squeue``, which needs no Slurm
accounting). ``--cancel`` cancels what the queue still holds of the last submission (``scancel``
on a login node, NeMo-Run through an SSH tunnel); neither imports NeMo-Run on a login node.
"""

from __future__ import annotations

import fcntl
import re
import shutil
import subprocess
import time
from pathlib import Path

from sppo_nemo.stages.context import Context
from sppo_nemo.schema.errors import UsageError, UserError
from sppo_nemo.launch import nemorun, records, squeue
from sppo_nemo.launch.plan import JobSpec, unfinished
from sppo_nemo.run.runner import status as stage_states


def home_for(ctx: Context) -> Path:
    la = ctx.recipe.launch
    return Path(la.job_dir).expanduser().resolve() if la.job_dir else (ctx.run_dir / records.JOBS / "nemorun").resolve()


def title_for(ctx: Context) -> str:
    return "sppo-" + re.sub(r"[^A-Za-z0-9.-]+", "-", ctx.recipe.name)


def _need_executor(ctx: Context, flag: str) -> None:
    la = ctx.recipe.launch
    if la.executor == "inline":
        raise UsageError(f"{flag} sends stages as jobs, but launch.executor is inline (every stage in this process); "
                         f"set launch.executor=slurm (or local, docker), or run without {flag}")
    # --status and --cancel on a login node need only squeue and scancel; the rest goes through NeMo-Run
    reason = nemorun.available() if flag == "--submit" or la.tunnel == "ssh" else None
    if reason:
        raise UserError(reason)


def _preflight(ctx: Context) -> None:
    """What only this machine can say: sbatch and srun here, and pyxis for a container image."""
    la = ctx.recipe.launch
    if la.executor == "slurm" and la.tunnel == "local":
        if shutil.which("sbatch") is None:
            raise UserError("launch.executor=slurm: no Slurm here (sbatch is not on PATH). Run --submit on a login "
                            "node of the cluster, reach one with launch.tunnel=ssh, or use launch.executor=local")
        if la.container_image and "--container-image" not in _srun_help():
            raise UserError(f"launch.container_image={la.container_image}: this Slurm's srun has no --container-image "
                            f"(the pyxis plugin is not installed), so the jobs cannot enter the image. Install "
                            f"pyxis and enroot, or set launch.container_image=null and install sppo-nemo on the nodes")
    if la.executor == "docker" and shutil.which("docker") is None:
        raise UserError("launch.executor=docker: docker is not on PATH here; install it or use launch.executor=slurm")


def _srun_help() -> str:
    try:
        return subprocess.run(["srun", "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _not_running_inline(ctx: Context) -> None:
    lock = ctx.run_dir / ".lock"
    if not lock.exists():
        return
    with open(lock) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"an sppo-run is working in {ctx.run_dir} now; wait for it or stop it before --submit") from None
        fcntl.flock(fh, fcntl.LOCK_UN)


def queued(ctx: Context) -> dict[str, str]:
    """{job id: 'PENDING (Dependency)' | 'RUNNING' ...} of the last submission's jobs the queue holds."""
    subs = records.submissions(ctx.run_dir)
    if not subs or subs[-1].get("executor") != "slurm":
        return {}
    ids = {str(j["job_id"]) for j in subs[-1]["jobs"] if j.get("job_id")}
    if not ids:
        return {}
    la = ctx.recipe.launch
    held = squeue.local_queue() if la.tunnel == "local" else nemorun.queue(la, home_for(ctx))
    return {jid: state for jid, state in held.items() if jid in ids}


def submit(ctx: Context, recipe_path: Path, overrides: list[str], dryrun: bool = False, log=print) -> int:
    _need_executor(ctx, "--submit")
    la = ctx.recipe.launch
    if not dryrun:
        _preflight(ctx)
        live = queued(ctx)
        if live:
            held = ", ".join(f"{jid} {state}" for jid, state in sorted(live.items()))
            raise UserError(f"jobs of the last submission are still in the queue ({held}); wait for them, or "
                            f"`sppo-run RECIPE --cancel` first, then --submit again")
        _not_running_inline(ctx)
    specs = unfinished(ctx, recipe_path, overrides)
    started = time.time()
    try:
        result = nemorun.submit(la, specs, title_for(ctx), home_for(ctx), dryrun=dryrun, log=log)
    except nemorun.SubmitError as exc:
        if exc.launched:  # the jobs sbatch took before it refused one: --status and --cancel must know them
            records.add_submission(ctx.run_dir, {**exc.launched, "executor": la.executor, "time": started,
                                                 "seconds": time.time() - started})
        raise
    if dryrun:
        sbatch, tasks = result.get("scripts", {}), result.get("tasks", {})
        for spec in specs:
            if spec.name in sbatch:
                log(f"# ---- {spec.name}.sbatch: the batch script NeMo-Run would submit\n{sbatch[spec.name]}")
            log(f"# ---- {spec.name}.sh: the task the job runs\n{tasks.get(spec.name, spec.script)}")
        log(f"{len(specs)} job(s) would be submitted (dry run; nothing was sent): "
            + ", ".join(s.label for s in specs))
        return 0
    records.add_submission(ctx.run_dir, {"id": result["id"], "dir": result["dir"], "executor": la.executor,
                                         "time": started, "seconds": time.time() - started, "jobs": result["jobs"]})
    if la.executor == "slurm":
        log(f"submitted {len(specs)} job(s) in {time.time() - started:.1f}s (NeMo-Run experiment {result['id']}):")
        for spec, job in zip(specs, result["jobs"]):
            log(f"  {spec.label:<17} job {job['job_id']}" + (f" (after {spec.after})" if spec.after else ""))
        log(f"follow them with `sppo-run {recipe_path} --status`; logs under {result['dir']}")
        return 0
    # local and docker executors ran the chain to its end (or its first failure) in the foreground
    failed = [s for s in specs if (records.stage_record(ctx.run_dir, s.label) or {}).get("state") != "done"]
    for line in status_lines(ctx):
        log(line)
    return 1 if failed else 0


def _log_of(job: dict) -> Path | None:
    if job.get("log"):  # Local and Docker tasks: found when the task ended
        return Path(job["log"]) if Path(job["log"]).is_file() else None
    if not job.get("job_dir"):  # never started
        return None
    folder = Path(job["job_dir"])
    jid = job.get("job_id")
    logs = sorted(folder.glob(f"log-*_{jid}_*.out" if jid else "log*"), key=lambda p: p.stat().st_mtime) \
        if folder.is_dir() else []
    return logs[-1] if logs else None


def _stage_line(ctx: Context, label: str, marker: str, live: dict[str, str]) -> str:
    job = records.last_job_of(ctx.run_dir, label)
    rec = records.stage_record(ctx.run_dir, label)
    jid = str(job["job_id"]) if job and job.get("job_id") else None
    ran = rec is not None and job is not None and str(rec.get("job_id")) == str(job.get("job_id"))
    if marker == "done":
        state = "done"
    elif jid and jid in live:
        state = "queued: " + live[jid] if not live[jid].startswith("RUNNING") else "running"
    elif ran and rec["state"] == "failed":
        first = (rec.get("message") or "").strip().splitlines()
        state = f"FAILED (exit {rec.get('exit')})" + (f": {first[0][:160]}" if first else "")
    elif ran and rec["state"] == "terminated":
        state = "TERMINATED (scancel or time limit; its finished chunks are kept)"
    elif ran and rec["state"] == "running":
        state = "LOST: its job is no longer in the queue and left no end record (killed, or its node failed)"
    elif job is not None and _log_of(job) is not None:
        state = ("FAILED before sppo-run started (a launch.setup line, sppo-run not found, or the container): "
                 "see its log")
    elif job is not None and ctx.recipe.launch.executor == "slurm":
        state = "NOT RUN: its job left the queue before starting (cancelled, or an earlier stage failed)"
    elif job is not None and not job.get("job_dir"):
        state = "NOT RUN: an earlier stage failed and the chain stopped there"
    else:
        state = marker
    if state != "done" and marker.startswith("partial") and not state.startswith(("queued", "running")):
        state += "; partial work kept, resumes on --submit"
    where = ""
    if job is not None:
        log = _log_of(job)
        where = f"  [job {jid or '-'}" + (f", log {log}" if log else "") + "]"
    return f"  {label:<17} {state}{where}"


def status_lines(ctx: Context) -> list[str]:
    subs = records.submissions(ctx.run_dir)
    lines = [f"run directory: {ctx.run_dir}"]
    if subs:
        last = subs[-1]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(last["time"]))
        lines.append(f"last submission: {last['id']} at {when} ({last['executor']}, {len(last['jobs'])} job(s))")
    else:
        lines.append("nothing submitted yet (sppo-run RECIPE --submit)")
    live = queued(ctx) if subs else {}
    for t, name, marker in stage_states(ctx):
        lines.append(_stage_line(ctx, f"iter_{t:02d}/{name}", marker, live))
    return lines


def status(ctx: Context, log=print) -> int:
    _need_executor(ctx, "--status")
    for line in status_lines(ctx):
        log(line)
    return 0


def cancel(ctx: Context, log=print) -> int:
    _need_executor(ctx, "--cancel")
    subs = records.submissions(ctx.run_dir)
    if not subs:
        raise UserError(f"nothing was submitted from {ctx.run_dir}; there is nothing to cancel")
    live = queued(ctx)
    if not live:
        log("no job of the last submission is in the queue; nothing to cancel")
        return 0
    la = ctx.recipe.launch
    if la.tunnel == "local":  # what NeMo-Run's LocalTunnel would run, without importing it
        squeue.local_cancel(sorted(live))
    else:
        nemorun.cancel(la, dict(subs[-1], jobs=[j for j in subs[-1]["jobs"] if str(j.get("job_id")) in live]),
                       home_for(ctx))
    for _ in range(50):  # scancel returns before Slurm has let go of the jobs
        if not queued(ctx):
            break
        time.sleep(0.2)
    left = queued(ctx)
    log(f"cancelled {len(live) - len(left)} job(s): " + ", ".join(sorted(set(live) - set(left))))
    if left:
        raise UserError("still in the queue after scancel: " + ", ".join(f"{k} {v}" for k, v in sorted(left.items())))
    return 0


__all__ = ["submit", "status", "cancel", "JobSpec"]
