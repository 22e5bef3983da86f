"""Optional experiment tracking (``logging.tensorboard``, ``logging.wandb``): what the finished
stages committed, sent to TensorBoard event files and to Weights & Biases (offline by default).

The tracker reads the stages' own files, never the trainers': a train stage's ``metrics.jsonl``
(one line per optimizer step) as ``train/<key>`` at a global step that continues across
iterations (iteration t starts after the steps of iterations 1 … t − 1), and an evaluate stage's
``metrics.json`` as ``eval/<key>`` at the iteration (``<key>_ci`` as ``<key>_ci_lo``/``_ci_hi``).

Resume-safe: ``<run dir>/tracking.json`` (the ledger, written atomically) records, per tracker,
the output digest of each stage it logged. Every pass logs the finished train and evaluate stages
whose digest it has not logged, in plan order: at the start of a run (a stage committed just
before a crash), after each commit, and at the end. A stage skipped as done is not logged twice;
one redone (--restart-from) with other outputs is logged again; a tracker turned on for a finished
run logs all of it. A crash between a tracker's flush and the ledger's write logs that one stage
twice on the next run.

The only module that imports tensorboard and wandb, inside functions, and only when the recipe
asks for them; with both off nothing is imported and nothing is written.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from sppo_nemo.formats.artifacts import read_json, read_jsonl, write_json
from sppo_nemo.schema.errors import UserError

LEDGER = "tracking.json"
TRACKED = ("train", "evaluate")  # the stages with figures to log

Point = tuple[str, int, float]  # (tag, step, value)


class TrackingError(UserError):
    pass


# ---- pure: what a stage's files become --------------------------------------------------------

def step_offset(steps_before: Sequence[int]) -> int:
    """The global step of iteration t's first optimizer step: the step counts of iterations
    1 … t − 1 summed. Hand-worked: iterations of 3 and 5 steps → iteration 3 starts at step 8."""
    return sum(steps_before)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def train_points(rows: Iterable[dict], offset: int) -> list[Point]:
    """``train/<key>`` of each metrics.jsonl line at global step ``offset + step``; numbers only."""
    return [(f"train/{k}", offset + int(row["step"]), float(v))
            for row in rows for k, v in row.items() if k != "step" and _number(v)]


def eval_points(metrics: dict) -> list[Point]:
    """``eval/<key>`` of metrics.json at step ``iteration``; an interval ``<key>_ci`` = [lo, hi]
    as ``eval/<key>_ci_lo`` and ``eval/<key>_ci_hi``; strings and flags are left out."""
    t = int(metrics["iteration"])
    out: list[Point] = []
    for k, v in metrics.items():
        if k == "iteration":
            continue
        if _number(v):
            out.append((f"eval/{k}", t, float(v)))
        elif k.endswith("_ci") and isinstance(v, list) and len(v) == 2 and all(map(_number, v)):
            out += [(f"eval/{k}_lo", t, float(v[0])), (f"eval/{k}_hi", t, float(v[1]))]
    return out


def pending(done: Iterable[tuple[str, str]], logged: dict[str, str]) -> list[str]:
    """Labels of the finished stages, (label, digest) in plan order, that a tracker has not logged
    with that digest: never logged, or redone since."""
    return [label for label, digest in done if logged.get(label) != digest]


# ---- the ledger ---------------------------------------------------------------------------------

def read_ledger(run_dir: Path) -> dict:
    """{"wandb_id": ..., "logged": {tracker: {stage label: digest}}}; empty when absent."""
    path = run_dir / LEDGER
    if not path.is_file():
        return {"logged": {}}
    try:
        ledger = read_json(path)
        if not isinstance(ledger, dict) or not isinstance(ledger.get("logged"), dict):
            raise ValueError("no 'logged' table")
        return ledger
    except ValueError as exc:
        raise TrackingError(f"{path} cannot be read ({exc}); delete it to log every finished stage again") from None


def write_ledger(run_dir: Path, ledger: dict) -> None:
    write_json(run_dir / LEDGER, ledger)  # through a temporary file and a rename


def wandb_id(run_dir: Path) -> str:
    """A W&B run id derived from the run directory (kept in the ledger, so a moved run keeps it)."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


# ---- the trackers -------------------------------------------------------------------------------

def _import_tensorboard():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # ImportError, or a tensorboard broken by its own dependencies
        raise TrackingError(f"logging.tensorboard: needs `pip install tensorboard` (or set it false); "
                            f"importing it failed: {exc}") from None
    return SummaryWriter


def _import_wandb():
    try:
        import wandb
    except Exception as exc:
        raise TrackingError(f"logging.wandb: needs `pip install wandb` (or set it false); importing it failed: "
                            f"{exc}") from None
    return wandb


class TensorBoard:
    name = "tensorboard"

    def __init__(self, ctx):
        self.dir = ctx.run_dir / "tensorboard"
        self.writer_cls = _import_tensorboard()
        self.writer = None  # opened at the first point: a rerun with nothing new writes no file

    def log(self, points: list[Point]) -> None:
        if self.writer is None:
            self.writer = self.writer_cls(log_dir=str(self.dir))
        for tag, step, value in points:
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()


class Wandb:
    """A W&B run under <run dir>/wandb, one id for the whole run (resumed by each sppo-run); online
    only with logging.wandb_mode=online. train/* are plotted against train/step, eval/* against
    eval/iteration."""

    name = "wandb"

    def __init__(self, ctx, ledger: dict):
        self.ctx = ctx
        self.wandb = _import_wandb()
        self.id = ledger.setdefault("wandb_id", wandb_id(ctx.run_dir))
        self.run = None
        if ctx.recipe.logging.wandb_mode == "online":
            self.open()  # a login problem shows now, not after the first stage

    def open(self) -> None:
        from sppo_nemo.loading import recipe as recipe_mod

        r, wandb = self.ctx.recipe, self.wandb
        mode = r.logging.wandb_mode
        try:
            self.run = wandb.init(project=r.logging.wandb_project or r.name, name=r.name, dir=str(self.ctx.run_dir),
                                  mode=mode, config=recipe_mod.as_dict(r), resume="allow", id=self.id,
                                  settings=wandb.Settings(silent=True, console="off"))
        except Exception as exc:
            fix = "log in with `wandb login` (or set WANDB_API_KEY), or set logging.wandb_mode=offline" \
                if mode == "online" else "set logging.wandb=false"
            raise TrackingError(f"logging.wandb: wandb.init ({mode}) failed: {type(exc).__name__}: {exc}; {fix}") \
                from None
        self.run.define_metric("train/step")
        self.run.define_metric("train/*", step_metric="train/step")
        self.run.define_metric("eval/iteration")
        self.run.define_metric("eval/*", step_metric="eval/iteration")

    def log(self, points: list[Point]) -> None:
        if self.run is None:
            self.open()
        rows: dict[tuple[str, int], dict] = {}
        for tag, step, value in points:
            kind = tag.partition("/")[0]
            key = "train/step" if kind == "train" else "eval/iteration"
            rows.setdefault((kind, step), {key: step})[tag] = value
        for row in rows.values():
            self.run.log(row)

    def close(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)


class Tracker:
    """The trackers a recipe turns on and the ledger of what each has logged."""

    def __init__(self, ctx, log=print):
        self.ctx, self.say = ctx, log
        self.ledger = read_ledger(ctx.run_dir)
        self.backends = []
        if ctx.recipe.logging.tensorboard:
            self.backends.append(TensorBoard(ctx))
        if ctx.recipe.logging.wandb:
            self.backends.append(Wandb(ctx, self.ledger))

    def stage_committed(self, t: int, name: str) -> None:
        """After the runner commits a stage: log it, and whatever finished stage is still unlogged."""
        self.sync()

    def finished(self) -> list[tuple[int, str, str, str]]:
        """(iteration, stage, label, digest) of the finished train and evaluate stages, in plan order."""
        from sppo_nemo.stages import plan

        out = []
        for t, module in plan(self.ctx.recipe):
            stage = self.ctx.stage(t, module.NAME)
            if module.NAME in TRACKED and stage.done():
                out.append((t, module.NAME, stage.label, stage.digest()))
        return out

    def points(self, t: int, name: str) -> list[Point]:
        stage = self.ctx.stage(t, name)
        if name == "evaluate":
            return eval_points(read_json(stage.path / "metrics.json"))
        before = []
        for s in range(1, t):
            earlier = self.ctx.stage(s, "train")
            if earlier.done():  # always, for a finished iteration t: π_t is iteration t − 1's policy
                before.append(len(read_jsonl(earlier.path / "metrics.jsonl")))
        return train_points(read_jsonl(stage.path / "metrics.jsonl"), step_offset(before))

    def sync(self) -> None:
        logged = self.ledger["logged"]
        done = self.finished()
        todo = {b.name: set(pending([(label, digest) for _, _, label, digest in done], logged.get(b.name, {})))
                for b in self.backends}
        for t, name, label, digest in done:
            backends = [b for b in self.backends if label in todo[b.name]]
            if not backends:
                continue
            self.ctx.stage(t, name).verify(self.ctx.full_verify)  # never log files that changed after commit
            points = self.points(t, name)
            for b in backends:
                b.log(points)
                logged.setdefault(b.name, {})[label] = digest
            write_ledger(self.ctx.run_dir, self.ledger)
            self.say(f"{label}: {len(points)} figures logged to {', '.join(b.name for b in backends)}")

    def close(self, failed: bool = False) -> None:
        for b in self.backends:
            b.close(failed)


class _Off:
    """No tracker on: nothing imported, nothing written."""

    def stage_committed(self, t: int, name: str) -> None:
        pass


@contextmanager
def session(ctx, log=print) -> Iterator[Tracker | _Off]:
    """The trackers of one sppo-run: their packages checked (TrackingError, exit 1) before any stage
    runs, the stages left unlogged by an earlier run logged first, the rest at each commit and at
    the end; closed (flushed) on the way out, also when the run fails."""
    lg = ctx.recipe.logging
    if not (lg.tensorboard or lg.wandb):
        yield _Off()
        return
    tracker = Tracker(ctx, log)
    try:
        tracker.sync()
        yield tracker
        tracker.sync()
    except BaseException:
        tracker.close(failed=True)
        raise
    tracker.close()
