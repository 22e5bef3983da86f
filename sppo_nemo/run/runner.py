"""Run the plan: skip finished stages whose fingerprint matches, run the rest, commit each.

A finished stage with a different fingerprint stops the run with the keys that changed
(see artifacts.Stage.check); `restart_from` removes one stage and everything after it first.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.run import stage_process
from sppo_nemo.backends import machine
from sppo_nemo.formats.artifacts import CorruptStageError
from sppo_nemo.schema.config import Recipe
from sppo_nemo.stages.context import Context
from sppo_nemo.schema.errors import StaleStageError, UsageError, UserError
from sppo_nemo.run.report import write_report
from sppo_nemo.stages import fingerprint, plan, recipe_key


class RunError(UserError):
    pass


def run_dir_for(r: Recipe) -> Path:
    return Path(r.output_dir) / r.name


def parse_stage(label: str, r: Recipe) -> tuple[int, str]:
    """'iter_02/train' or '2/train' → (2, 'train'), checked against the plan; a usage error if unknown."""
    it, sep, name = label.partition("/")
    try:
        t = int(it.removeprefix("iter_"))
    except ValueError:
        t = -1
    steps = [(i, m.NAME) for i, m in plan(r)]
    if not sep or (t, name) not in steps:
        valid = ", ".join(f"iter_{i:02d}/{n}" for i, n in steps[:6])
        raise UsageError(f"unknown stage {label!r}; stages look like {valid}, ...")
    return t, name


@contextmanager
def run_lock(run_dir: Path):
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = open(run_dir / ".lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunError(f"another sppo-run is working in {run_dir}; wait for it or stop it first") from None
    try:
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


def status(ctx: Context) -> list[tuple[int, str, str]]:
    """(iteration, stage, state) for the dry run: done, stale (with why), partial, todo. Prompts that
    cannot be read (a hub dataset neither cached nor reachable, a broken file: a DataError) still
    give the whole plan: the first state ends with why, and a finished stage whose inputs need the
    prompts is "done, not checked"."""
    from sppo_nemo.formats.data import DataError

    unreadable = None
    try:
        ctx.splits  # read the prompts once, so that a fresh plan says too why they cannot be read
    except DataError as exc:
        unreadable = str(exc)
    out = []
    upstream_done = True
    for t, module in plan(ctx.recipe):
        stage = ctx.stage(t, module.NAME)
        if stage.done():
            state = "done"
            try:
                stage.verify(ctx.full_verify)
                if upstream_done:
                    inputs = module.inputs(ctx, t)
                    stage.check(fingerprint(inputs), ctx.run_dir, partial(recipe_key, inputs), ctx.base_policy_changes)
            except (StaleStageError, CorruptStageError) as exc:
                kind = "STALE" if isinstance(exc, StaleStageError) else "CHANGED"
                lines = str(exc).splitlines()
                state = f"{kind}: " + "; ".join(line.strip() for line in (lines[1:-1] or lines))
                upstream_done = False
            except DataError as exc:
                state = "done, not checked (prompts not readable)"
                unreadable = unreadable or str(exc)
        else:
            state = "partial (will resume)" if stage.partial.exists() else "todo"
            upstream_done = False
        out.append((t, module.NAME, state))
    if unreadable is not None and out:
        t, name, state = out[0]
        out[0] = (t, name, f"{state.removesuffix(' (prompts not readable)')}; prompts not readable: {unreadable}")
    return out


def execute(ctx: Context, only: tuple[int, str] | None = None, restart_from: tuple[int, str] | None = None,
            log=print) -> list[dict]:
    from sppo_nemo.run import tracking  # logging.tensorboard / logging.wandb; nothing when both are off

    r = ctx.recipe
    steps = list(plan(r))
    labels = [(t, m.NAME) for t, m in steps]
    with run_lock(ctx.run_dir), tracking.session(ctx, log) as tracker:
        if restart_from is not None:
            for t, name in labels[labels.index(restart_from):]:
                stage = ctx.stage(t, name)
                if stage.path.exists() or stage.partial.exists():
                    log(f"removing {stage.label} (--restart-from)")
                    stage.remove()
        ctx.record_precision()  # precision: auto, as this run's first command resolved it (sppo_nemo/loading/precision.py)
        (ctx.run_dir / "recipe.resolved.yaml").write_text(recipe_mod.to_yaml(r))
        if r.threads:
            import torch

            torch.set_num_threads(r.threads)
        timings = []
        for t, module in steps:
            stage = ctx.stage(t, module.NAME)
            stage.tidy()
            if stage.done():
                stage.verify(ctx.full_verify)  # never reuse (or read) a finished stage whose files changed
            if only is not None and (t, module.NAME) != only:
                continue
            try:
                inputs = module.inputs(ctx, t)
            except FileNotFoundError as exc:
                raise RunError(f"{stage.label} needs an earlier stage that is not finished ({exc.filename}); "
                               f"run without --stage first") from None
            fp = fingerprint(inputs)
            if stage.done():
                stage.check(fp, ctx.run_dir, partial(recipe_key, inputs), ctx.base_policy_changes)
                log(f"{stage.label}: done, skipped")
                continue
            started = time.time()
            workdir = stage.begin(fp)
            log(f"{stage.label}: running")
            if stage_process.in_worker(module.NAME, machine.cuda()):  # the process rule (stage_process.py)
                extra = stage_process.run(module, inputs, workdir, ctx.progress, stage.label, r.threads)
            else:
                extra = module.run(inputs, workdir, ctx.bar)
            manifest = stage.commit(fp, started, {"result": extra})
            log(f"{stage.label}: finished in {manifest['seconds']:.1f}s")
            tracker.stage_committed(t, module.NAME)
            timings.append({"stage": stage.label, "seconds": manifest["seconds"]})
        write_report(ctx)
    return timings

