"""sppo-run RECIPE [key=value ...] [--validate | --dry-run | --submit | --status | --cancel | --estimate] [--stage S] [--restart-from S]"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import time

from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.process import stopping
from sppo_nemo.process.allocator import keep_freed_memory
from sppo_nemo.schema.errors import UsageError, UserError
from sppo_nemo.loading.estimate import GPUS
from sppo_nemo.process.stopping import Terminated


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="sppo-run",
        description="Run SPPO self-play iterations from a YAML recipe (resumable: rerun the same command).",
    )
    ap.add_argument("recipe", help="path of a YAML recipe, e.g. recipes/smollm2_sppo_3iter.yaml")
    ap.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=1e-6 T=2")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--validate", action="store_true", help="check and print the resolved recipe; run nothing")
    mode.add_argument("--submit", action="store_true",
                      help="send the unfinished stages as jobs (launch.executor), one per stage, chained; with "
                           "--dry-run print the job scripts instead")
    mode.add_argument("--status", action="store_true", help="the state of every stage and of its submitted job")
    mode.add_argument("--cancel", action="store_true", help="cancel the queued and running jobs of the last --submit")
    mode.add_argument("--estimate", action="store_true",
                      help="print the work and GPU hours of each stage, per iteration and for the run; run nothing")
    ap.add_argument("--gpus", type=int, metavar="N", help="with --estimate: GPUs (default: the megatron layout's, or 8)")
    ap.add_argument("--gpu", choices=sorted(GPUS), help="with --estimate: the GPU kind (default: h100)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and which stages are done")
    ap.add_argument("--stage", metavar="ITER/STAGE", help="run this one stage alone, e.g. iter_02/train")
    ap.add_argument("--restart-from", metavar="ITER/STAGE",
                    help="delete this stage and every later one, then run")
    ap.add_argument("--verify-hashes", action="store_true",
                    help="hash every file of the finished stages and of the base policy instead of trusting "
                         "files whose size and modification time are unchanged")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap.parse_intermixed_args(argv)  # overrides may come before or after the flags


def main(argv=None) -> int:
    """Exit 0 done; 1 a run-time problem; 2 a bad recipe or command line; 3 a stale stage; 130
    interrupted. Every problem a user can cause is a UserError: its message, never a traceback."""
    args = parse_args(argv)
    if args.dry_run and (args.validate or args.status or args.cancel or args.estimate):
        print("sppo-run: --dry-run goes alone or with --submit", file=sys.stderr)
        return 2
    if (args.gpus is not None or args.gpu is not None) and not args.estimate:
        print("sppo-run: --gpus and --gpu go with --estimate", file=sys.stderr)
        return 2
    keep_freed_memory()  # the in-process engines' allocation churn (sppo_nemo/process/allocator.py)
    previous = stopping.install()
    try:
        return _main(args)
    except UserError as exc:
        print(f"sppo-run: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"sppo-run: {os_error_message(exc)}", file=sys.stderr)
        return 1
    except Terminated as exc:
        kept = f"{exc.kept}; " if exc.kept else ""
        print(f"\nsppo-run: terminated ({exc.signal_name}); {kept}{KEPT}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"\nsppo-run: interrupted; {KEPT}", file=sys.stderr)
        return 130
    finally:
        stopping.restore(previous)


KEPT = ("finished stages and the finished chunks of the current one are kept; rerun the same command to "
        "resume where it stopped")


def os_error_message(exc: OSError) -> str:
    """What an operating-system error means for a run, and the fix; nothing finished is lost."""
    where = exc.filename or "the run directory"
    if exc.errno == errno.ENOSPC:
        return (f"the disk is full ({where}). Finished stages and the partial work of the current one are kept; "
                f"free space and rerun the same command to resume.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write {where}: {exc.strerror}. Make output_dir writable or point output_dir=... at a "
                f"writable directory; finished stages are kept.")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return (f"{where}: {exc.strerror}; a file stands where the run needs a directory. Move it away or set "
                f"output_dir=... elsewhere.")
    return f"{where}: {exc.strerror or exc}. Finished stages are kept; fix the cause and rerun the same command."


def _main(args: argparse.Namespace) -> int:
    r = recipe_mod.load(args.recipe, args.overrides, check_data=not args.estimate)  # estimates read no prompts
    if args.validate:
        print(recipe_mod.to_yaml(r), end="")
        for note in _validate_notes(r, args.recipe):
            print(f"# {note}", file=sys.stderr)
        print(f"# {args.recipe}: valid", file=sys.stderr)
        return 0

    from sppo_nemo.stages.context import Context
    from sppo_nemo.run.report import collect, table
    from sppo_nemo.run.runner import parse_stage, run_dir_for, status

    if args.estimate:
        from sppo_nemo.loading import estimate

        if args.stage or args.restart_from:
            raise UsageError("--stage and --restart-from go without --estimate")
        print(estimate.estimate_markdown(r, run_dir_for(r), args.gpus, args.gpu), end="")
        return 0
    ctx = Context(r, run_dir_for(r), progress=not args.no_progress, full_verify=args.verify_hashes)
    for line in ctx.precision_lines:  # precision: auto, resolved (sppo_nemo/loading/precision.py)
        print(line, file=sys.stderr if args.status or args.submit or args.cancel else sys.stdout)
    if args.submit or args.status or args.cancel:
        from sppo_nemo.launch import submit

        if args.stage or args.restart_from:
            raise UsageError("--stage and --restart-from go without --submit, --status and --cancel")
        if args.submit:
            return submit.submit(ctx, args.recipe, args.overrides, dryrun=args.dry_run)
        return submit.status(ctx) if args.status else submit.cancel(ctx)
    if args.dry_run:
        print(f"run directory: {ctx.run_dir}")
        for t, name, state in status(ctx):
            print(f"  iter_{t:02d}/{name:<9} {state}")
        return 0
    only = parse_stage(args.stage, r) if args.stage else None
    restart = parse_stage(args.restart_from, r) if args.restart_from else None
    started = time.time()
    try:
        if only is not None:
            return _one_stage(ctx, only, restart)
        timings = _execute(ctx, only, restart)
    except Terminated as exc:
        _after_a_stop(ctx.run_dir, exc, requeue=only is not None)
        raise
    print()
    print(table(collect(ctx)))
    print(f"\n{len(timings)} stage(s) run in {time.time() - started:.0f}s; report: {ctx.run_dir / 'report.md'}")
    return 0


def _after_a_stop(run_dir, exc: Terminated, requeue: bool) -> None:
    """Inside a Slurm job: a second stop with nothing new on disk is a UserError (exit 1), so a job
    that requeues itself ends instead of looping (sppo_nemo/launch/requeue.py). Otherwise a chained
    stage job (``requeue``: sppo-run --stage) warned of its time limit (SIGUSR1) requeues itself; the
    one-allocation script requeues its job itself (launchers/slurm_allocation.sbatch)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return
    from sppo_nemo.launch.requeue import record_stop, requeue_job

    stuck = record_stop(run_dir, job, exc.signal_name)
    if stuck:
        raise UserError(stuck) from None
    if requeue and exc.signal_name == "SIGUSR1":
        print(f"sppo-run: {requeue_job(job)}", file=sys.stderr, flush=True)


def _execute(ctx, only, restart) -> list[dict]:
    """Run the stages, after refusing (exit 1, nothing written) engines this machine cannot run
    for the stages that will run: sppo_nemo/run/preflight.py."""
    from sppo_nemo.loading.estimate import write_estimate
    from sppo_nemo.run.preflight import refuse_unrunnable
    from sppo_nemo.run.runner import execute

    refuse_unrunnable(ctx, only, restart)
    write_estimate(ctx.recipe, ctx.run_dir)  # best effort: <run dir>/estimate.md for the report
    return execute(ctx, only=only, restart_from=restart)


def _validate_notes(r, recipe_path: str) -> list[str]:
    """What --validate could not read itself and how it checked instead: a policy that is not local
    (its shape from the HF cache or the known shapes of the paper's models), prompts not readable
    here (a hub dataset not in the cache: not counted); and warnings: values that are valid but cost
    orders of magnitude more than anyone runs (recipe_checks.cost_warnings)."""
    from pathlib import Path

    from sppo_nemo.schema.config import GAME_POLICY, SHIPPED_SMOLLM2, looks_like_path
    from sppo_nemo.formats.hub import config_source

    notes = []
    from sppo_nemo.loading import precision

    if precision.auto_keys(r):
        from sppo_nemo.backends.machine import this_machine

        m = this_machine()
        here = precision.wanted(r, m.cuda, m.cpu_bf16)
        notes.append("precision: auto resolves, on this machine, to " + ", ".join(
            f"{k}={here[k]}" for k in precision.auto_keys(r)) + f" (CUDA: {'yes' if m.cuda else 'none'}; CPU: "
            f"{m.cpu_reason}); a run keeps what its first command chose")
    model = r.policy.model
    if model not in (SHIPPED_SMOLLM2, GAME_POLICY) and not looks_like_path(model):
        notes.append(f"policy.model: {model} is a hub id; its shape (heads, layers for the parallel layout) is "
                     f"{config_source(model, Path(recipe_path).parent)}")
    from sppo_nemo.formats.data import availability

    note = availability(r.data, Path(recipe_path).parent)
    if note:
        notes.append(f"data.prompts: {note}")
    from sppo_nemo.loading.recipe_checks import cost_warnings  # valid values, but a cost orders of magnitude off

    notes += [f"warning: {w}" for w in cost_warnings(r, Path(recipe_path).parent)]
    return notes


def _one_stage(ctx, only: tuple[int, str], restart) -> int:
    """--stage: one stage (a chained job's whole work), its start and end kept in jobs/ for --status."""
    from sppo_nemo.launch import records

    label = f"iter_{only[0]:02d}/{only[1]}"
    rec = records.stage_started(ctx.run_dir, label)
    try:
        timings = _execute(ctx, only, restart)
    except UserError as exc:
        records.stage_ended(ctx.run_dir, rec, "failed", exc.exit_code, str(exc))
        raise
    except OSError as exc:
        records.stage_ended(ctx.run_dir, rec, "failed", 1, os_error_message(exc))
        raise
    except (Terminated, KeyboardInterrupt):
        records.stage_ended(ctx.run_dir, rec, "terminated", 143, "terminated")
        raise
    except BaseException as exc:
        records.stage_ended(ctx.run_dir, rec, "failed", 1, f"{type(exc).__name__}: {exc}")
        raise
    records.stage_ended(ctx.run_dir, rec, "done", 0)
    done = f"{len(timings)} stage run" if timings else "already done, skipped"
    print(f"{label}: {done}; report: {ctx.run_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
