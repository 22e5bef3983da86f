"""NeMo-Run as the job layer: the one module that imports ``nemo_run``.

One ``run.Script`` task per stage (the installed ``sppo-run`` entry point, never a
``run.Partial``, which would need nemo_run and an importable function inside the image), each
with its own executor.

- Slurm: one ``run.Experiment`` per submission, each task with ``dependencies`` on the one before
  it, submitted detached: NeMo-Run chains the jobs ``afterok`` and we add
  ``--kill-on-invalid-dep=yes`` (without it a failed stage leaves every later job pending forever).
- Local and Docker: no scheduler holds the chain, so this process does, in the foreground: one
  single-task experiment per stage, run to its end before the next one starts, and the chain
  stops at the first stage that does not succeed. NeMo-Run's own ways of chaining cannot do that:
  ``Experiment.run(sequential=True)`` asserts that no task carries ``dependencies`` (0.10.0 and
  0.11, ``nemo_run/run/experiment.py`` line 725), and its sequential or dependency order for
  executors without dependency support waits for each level but starts the next one whatever the
  last one's exit.

NeMo-Run keeps each experiment under ``<job_dir>/experiments/<title>/<id>/``: the generated
sbatch scripts, the task scripts, and the logs (Slurm: ``log-<job name>_<job id>_<restart>.out``
in the task's folder; Local: ``nemo_run/<app id>/<task>/0/combined.log`` below it; Docker:
``log_<container>.out`` in it).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import time
from pathlib import Path

from sppo_nemo.schema.config import LaunchConfig
from sppo_nemo.schema.errors import UserError
from sppo_nemo.launch import squeue
from sppo_nemo.launch.plan import JobSpec


WARNING_SECONDS = 300  # how long before a job's time limit Slurm signals it (launchers/slurm_allocation.sbatch too)


class SubmitError(UserError):
    """sbatch (or docker) refused a job; the message quotes its own words. ``launched`` holds the
    jobs submitted before the refusal (the same records as a submission's), so none goes untracked."""

    def __init__(self, message: str, launched: dict | None = None):
        super().__init__(message)
        self.launched = launched


def available() -> str | None:
    """Why NeMo-Run cannot be used here, or None."""
    try:
        import nemo_run  # noqa: F401
    except ImportError as exc:
        return (f"launch.executor needs NeMo-Run ({exc}); install it with "
                f"pip install 'sppo-nemo[cluster]' (nemo-run 0.10 or 0.11 with leptonai<0.47)")
    return None


def _tunnel(la: LaunchConfig, home: Path):
    import nemo_run as run

    if la.tunnel == "ssh":
        return run.SSHTunnel(host=la.host, user=la.user, job_dir=la.remote_dir)
    return run.LocalTunnel(job_dir="")  # "": NEMORUN_HOME/experiments, where the experiment writes its scripts


def _env(la: LaunchConfig) -> dict[str, str]:
    return dict(item.split("=", 1) for item in la.env)


def _executor(la: LaunchConfig, spec: JobSpec, home: Path, prefix: str):
    import nemo_run as run

    res = spec.resources
    if la.executor == "local":
        return run.LocalExecutor(env_vars=_env(la))
    if la.executor == "docker":
        return run.DockerExecutor(container_image=la.container_image, num_gpus=res.gpus_per_node or 0,
                                  runtime="nvidia" if res.gpus_per_node else None, ipc_mode="host",
                                  volumes=list(la.container_mounts), env_vars=_env(la), packager=run.Packager())
    params = {"kill_on_invalid_dep": "yes"}
    if res.mem:
        params["mem"] = res.mem
    # sppo-run runs once per stage job: on a multi-node train job it starts the megatron workers on
    # every node itself (srun --overlap), from outside the container, which the workers enter.
    srun_args = ["--nodes=1", "--ntasks=1"] if res.nodes > 1 else []
    container = la.container_image if res.nodes == 1 else None
    return run.SlurmExecutor(
        account=la.account, partition=la.partition, time=res.time, nodes=res.nodes, ntasks_per_node=1,
        gpus_per_node=res.gpus_per_node or None, cpus_per_task=res.cpus_per_task,
        container_image=container, container_mounts=list(la.container_mounts) if container else [],
        srun_args=srun_args, additional_parameters=params, env_vars=_env(la), tunnel=_tunnel(la, home),
        packager=run.Packager(), job_name_prefix=prefix, poll_estimated_start_time=False,
        # SIGUSR1 to the job's steps before its time limit: the stage's sppo-run --stage saves what it
        # can (a step checkpoint in training), then requeues its own job (cli, launch/requeue.py)
        signal=f"USR1@{WARNING_SECONDS}")


def _experiment(title: str, home: Path, id: str | None = None):
    import nemo_run as run

    return run.Experiment(title, id=id, base_dir=str(home), log_level="WARN", skip_status_at_exit=True)


def submit(la: LaunchConfig, specs: list[JobSpec], title: str, home: Path, dryrun: bool = False,
           log=None) -> dict:
    """Submit (or, dry, only write) the chain; returns {id, dir, jobs: [{stage, name, job_id,
    job_dir}]} (and, dry, {scripts: {name: sbatch text}, tasks: {name: task script text}}).
    Local and Docker run it here to its end or its first failure (``log``: one line per stage)."""
    import nemo_run as run

    home.mkdir(parents=True, exist_ok=True)
    run.config.set_nemorun_home(str(home))
    if la.executor != "slurm":
        return _run_in_turn(la, specs, title, home, dryrun, log or (lambda line: None))
    prefix = f"{title}."
    out = io.StringIO()
    exp = None
    try:
        with contextlib.redirect_stdout(out), _experiment(title, home) as exp:
            ids: dict[str, str] = {}
            for spec in specs:
                deps = [ids[spec.after]] if spec.after in ids else []
                ids[spec.label] = exp.add(run.Script(inline=spec.script), executor=_executor(la, spec, home, prefix),
                                          name=spec.name, dependencies=deps)
            if dryrun:
                exp.dryrun(log=False, delete_exp_dir=False)
            else:
                exp.run(detach=True)  # the dependencies chain the jobs afterok
            result = _launched(exp, specs)
    except Exception as exc:  # NeMo-Run wraps sbatch's refusal in invoke's UnexpectedExit
        launched = _launched(exp, specs, submitted_only=True) if exp is not None and not dryrun else None
        if launched and launched["jobs"]:
            ids = ", ".join(f"{j['stage']} job {j['job_id']}" for j in launched["jobs"])
            raise SubmitError(_refusal(exc, out.getvalue()) + f"\nsubmitted before the refusal (recorded; "
                              f"`sppo-run RECIPE --cancel` cancels them): {ids}", launched) from None
        raise SubmitError(_refusal(exc, out.getvalue())) from None
    if dryrun:  # what would be submitted, then nothing left behind
        exp_dir = Path(result["dir"])
        result["scripts"] = {p.stem.removesuffix("_sbatch"): p.read_text() for p in sorted(exp_dir.glob("*_sbatch.sh"))}
        shutil.rmtree(exp_dir, ignore_errors=True)
    return result


def _run_in_turn(la: LaunchConfig, specs: list[JobSpec], title: str, home: Path, dryrun: bool, log) -> dict:
    """Local and Docker: each stage its own one-task experiment, ``<title>_<stamp>-<task>``, run
    (or, dry, written) before the next one is made; the first stage that does not succeed ends
    the chain, and the stages after it are recorded without a job (never started)."""
    import nemo_run as run

    sub_id = f"{title}_{time.time_ns()}"  # from_id reads the title back up to the last "_"
    folder = home / "experiments" / title
    jobs: list[dict] = []
    tasks: dict[str, str] = {}
    stopped = None
    for spec in specs:
        if stopped is not None:
            jobs.append({"stage": spec.label, "name": spec.name, "job_id": None, "job_dir": None})
            continue
        out = io.StringIO()
        exp = None
        started = time.time()
        try:
            with contextlib.redirect_stdout(out), _experiment(title, home, f"{sub_id}-{spec.name}") as exp:
                exp.add(run.Script(inline=spec.script), executor=_executor(la, spec, home, f"{title}."), name=spec.name)
                if dryrun:
                    exp.dryrun(log=False, delete_exp_dir=False)
                else:
                    exp.run()  # one task; leaving the context waits for it to end
        except Exception as exc:
            if exp is not None and exp.jobs and getattr(exp.jobs[0], "handle", None):
                jobs.append(_local_job(spec, exp.jobs[0]))  # it started: its record and log say how it ended
            if dryrun:
                for made in folder.glob(f"{sub_id}-*"):
                    shutil.rmtree(made, ignore_errors=True)
            ran = [j for j in jobs if j.get("state")]
            if not ran:
                raise SubmitError(_refusal(exc, out.getvalue())) from None
            names = ", ".join(f"{j['stage']} ({j['state'].lower()})" for j in ran)
            raise SubmitError(_refusal(exc, out.getvalue()) + f"\nstarted before it (recorded): {names}",
                              {"id": sub_id, "dir": str(folder), "jobs": _without_state(ran)}) from None
        job = exp.jobs[0]
        if dryrun:
            packaged = Path(job.executor.job_dir) / "scripts" / f"{spec.name}.sh"
            tasks[spec.name] = packaged.read_text() if packaged.is_file() else spec.script
            shutil.rmtree(folder / f"{sub_id}-{spec.name}", ignore_errors=True)  # what would run, then nothing left
            jobs.append({"stage": spec.label, "name": spec.name, "job_id": None, "job_dir": None})
            continue
        rec = _local_job(spec, job)
        jobs.append(rec)
        log(f"{spec.label}: {rec['state'].lower()} after {time.time() - started:.1f}s"
            + (f" (log {rec['log']})" if rec.get("log") else ""))
        if rec["state"] != "SUCCEEDED":
            stopped = spec.label
    if stopped is not None:
        log(f"the chain stopped at {stopped}; the stages after it were not started")
    if dryrun:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if this dry run was all it held
    result = {"id": sub_id, "dir": str(folder), "jobs": _without_state(jobs)}
    if dryrun:
        result["tasks"] = tasks
    return result


def _without_state(jobs: list[dict]) -> list[dict]:
    return [{k: v for k, v in j.items() if k != "state"} for j in jobs]


def _local_job(spec: JobSpec, job) -> dict:
    """The record of a Local or Docker task that was started: its job id (NeMo-Run's app id), its
    folder, its log if it wrote one, and NeMo-Run's last word on it (``SUCCEEDED``, ``FAILED``...)."""
    state = getattr(job.state, "name", str(job.state))
    folder = Path(job.executor.job_dir)
    logs = sorted(folder.glob("log_*.out")) + sorted(folder.glob("nemo_run/*/*/*/combined.log"))
    rec = {"stage": spec.label, "name": spec.name, "job_id": _job_id(job), "job_dir": str(folder), "state": state}
    if logs:
        rec["log"] = str(logs[-1])
    return rec


def _launched(exp, specs: list[JobSpec], submitted_only: bool = False) -> dict:
    """{id, dir, jobs} of the experiment's tasks; ``submitted_only``: those that got a job before a failure."""
    jobs = [{"stage": spec.label, "name": spec.name, "job_id": _job_id(job), "job_dir": job.executor.job_dir}
            for spec, job in zip(specs, exp.jobs) if not submitted_only or getattr(job, "handle", None)]
    return {"id": exp._id, "dir": str(exp._exp_dir), "jobs": jobs}


def _job_id(job) -> str | None:
    handle = getattr(job, "handle", "") or ""
    tail = handle.rpartition("/")[2]
    return tail if re.fullmatch(r"\d+(_\d+)?", tail) else (tail or None)


def _refusal(exc: BaseException, console: str) -> str:
    result = getattr(exc, "result", None)  # invoke.exceptions.UnexpectedExit
    if result is not None:
        words = (result.stderr or result.stdout or "").strip()
        return f"the scheduler refused the job: `{result.command}` said:\n{words}"
    text = str(exc).strip() or type(exc).__name__
    return f"NeMo-Run could not submit the jobs: {text}" + (f"\n{console.strip()[-1500:]}" if console.strip() else "")


def cancel(la: LaunchConfig, submission: dict, home: Path) -> list[str]:
    """Cancel the submission's tasks through NeMo-Run (an SSH tunnel's cluster); returns their names."""
    import nemo_run as run

    run.config.set_nemorun_home(str(home))  # from_id looks the experiment up there
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exp = run.Experiment.from_id(submission["id"])
        names = [job["name"] for job in submission["jobs"]]
        with exp:
            for name in names:
                exp.cancel(name)
    return names


def queue(la: LaunchConfig, home: Path) -> dict[str, str]:
    """{job id: state} of every job the scheduler holds, asked through the executor's tunnel."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = _tunnel(la, home).run(squeue.SQUEUE, hide=True, warn=True)
    if result.return_code != 0:
        raise UserError(f"squeue failed: {(result.stderr or result.stdout).strip()[:500]}")
    return squeue.parse(result.stdout)
