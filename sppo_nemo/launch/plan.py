"""Which stages a submission sends, and the command and resources of each one's job.

Only the unfinished stages go, in plan order, each depending on the one before it (the plan is a
chain: every stage reads the previous ones). Each job runs ``sppo-run RECIPE [overrides]
--stage ITER/STAGE`` from the directory ``--submit`` was given in, so that relative paths in the
recipe and the overrides mean what they meant there.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from sppo_nemo.schema.config import LaunchConfig, StageJob
from sppo_nemo.stages.context import Context
from sppo_nemo.schema.errors import UserError
from sppo_nemo.run.runner import status


class NothingToSubmit(UserError):
    exit_code = 0


@dataclass(frozen=True)
class JobSpec:
    label: str  # iter_01/generate
    name: str  # iter01-generate: the NeMo-Run task and (with the prefix) the Slurm job name
    stage: str  # generate
    script: str  # the job's shell script body
    resources: StageJob
    after: str | None  # the label of the job this one waits for (afterok), if it is submitted too


def task_name(label: str) -> str:
    it, _, stage = label.partition("/")
    return f"{it.replace('_', '')}-{stage}"


def entry_point(la: LaunchConfig) -> list[str]:
    """The sppo-run a job runs: the recipe's, `sppo-run` in a container, or this very one."""
    if la.command:
        return shlex.split(la.command)
    if la.container_image:
        return ["sppo-run"]
    me = Path(sys.argv[0])
    if me.name == "sppo-run" and me.is_file():
        return [str(me.resolve())]
    return [sys.executable, "-m", "sppo_nemo"]


def stage_command(la: LaunchConfig, recipe_path: Path, overrides: list[str], label: str) -> list[str]:
    return [*entry_point(la), str(Path(recipe_path).resolve()), *overrides, "--stage", label, "--no-progress"]


def script(la: LaunchConfig, command: list[str], workdir: Path, label: str) -> str:
    """The job body: the working directory, SPPO_STAGE (so that setup lines may depend on the stage),
    the recipe's env and setup lines, then sppo-run itself (exec'd, so that Slurm's SIGTERM at a time
    limit or scancel reaches it and it closes cleanly)."""
    lines = [f"cd {shlex.quote(str(workdir))}", f"export SPPO_STAGE={label}"]
    lines += [f"export {item.split('=', 1)[0]}={shlex.quote(item.split('=', 1)[1])}" for item in la.env]
    lines += list(la.setup)
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines) + "\n"


def unfinished(ctx: Context, recipe_path: Path, overrides: list[str], workdir: Path | None = None) -> list[JobSpec]:
    """The jobs of every stage not yet done, in plan order; a stale or changed finished stage stops
    the submission (it would fail in its job), naming the stage and what to do."""
    la = ctx.recipe.launch
    workdir = Path(workdir or os.getcwd()).resolve()
    specs: list[JobSpec] = []
    for t, name, state in status(ctx):
        label = f"iter_{t:02d}/{name}"
        if state.startswith("done"):  # "done, not checked": the prompts are not readable here
            continue
        if state.startswith(("STALE", "CHANGED")):
            raise UserError(f"{label} is {state}; nothing was submitted. Run `sppo-run RECIPE --dry-run` to see "
                            f"it, then revert the change, use --restart-from {label}, or pick a new name")
        specs.append(JobSpec(label=label, name=task_name(label), stage=name,
                             script=script(la, stage_command(la, recipe_path, overrides, label), workdir, label),
                             resources=getattr(la, name), after=specs[-1].label if specs else None))
    if not specs:
        raise NothingToSubmit(f"every stage of {ctx.run_dir} is done; nothing to submit")
    return specs
