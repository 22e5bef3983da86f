"""NeMo-Run as the job layer: the one module that imports ``nemo_run``.

One ``run.Experiment`` per submission, one ``run.Script`` task per stage (the installed
``sppo-run`` entry point, never a ``run.Partial``, which would need nemo_run and an importable
function inside the image), each with its own executor and ``dependencies`` on the task before
it. Slurm jobs go out detached, chained ``afterok`` by NeMo-Run and ``--kill-on-invalid-dep=yes``
by us (without it a failed stage leaves every later job pending forever). The Local and Docker
executors run the chain level by level and block until it ends.

NeMo-Run keeps each experiment under ``<job_dir>/experiments/<title>/<id>/``: the generated
sbatch scripts, the task scripts, and the logs (``log-<job name>_<job id>_<restart>.out``).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

from sppo_nemo.config import LaunchConfig
from sppo_nemo.errors import UserError
from sppo_nemo.launch import squeue
from sppo_nemo.launch.plan import JobSpec


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
                f"pip install 'sppo-nemo[cluster]' (nemo-run 0.11 with leptonai<0.47)")
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
        packager=run.Packager(), job_name_prefix=prefix, poll_estimated_start_time=False)


def _experiment(title: str, home: Path):
    import nemo_run as run

    return run.Experiment(title, base_dir=str(home), log_level="WARN", skip_status_at_exit=True)


def submit(la: LaunchConfig, specs: list[JobSpec], title: str, home: Path, dryrun: bool = False) -> dict:
    """Submit (or, dry, only write) one experiment; returns {id, dir, jobs: [{stage, name, job_id,
    job_dir}]} (and, dry, {scripts: {name: text}})."""
    import nemo_run as run

    home.mkdir(parents=True, exist_ok=True)
    run.config.set_nemorun_home(str(home))
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
                exp.run(detach=la.executor == "slurm", sequential=la.executor != "slurm")
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
