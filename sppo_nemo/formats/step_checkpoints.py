"""Step checkpoints of a train stage: when to write one, where, and which one to resume from.

A train stage works in its partial folder (``artifacts.Stage.begin``), which a crash keeps when
the recipe is unchanged. Inside it::

    reference/            π_t's log-probs of every row, written once after the reference pass
    checkpoints/step_000041/
        state.pt          what the trainer holds after optimizer step 41 (its own format)
        meta.json         {"step": 41, "files": {"state.pt": [bytes, sha256]}, "steps": plan length}

Each is written into a ``*.tmp`` folder, its files fsynced and hashed, then renamed into place:
the rename is the commit, so a kill at any moment leaves the previous checkpoint intact. The two
newest are kept; on resume the newest whose files match their meta is used, the other tried if it
does not, and with neither the stage starts from its first step, saying why. Never a silent wrong
resume: a checkpoint made for another plan length is refused too.

The period (``trainer.checkpoint_every``) is "Nmin" or "Nh" (of training), "Nsteps" (optimizer
steps) or null (off). Where checkpoints fall never changes the result: a resumed stage ends with the same
policy and metrics as an uninterrupted one, so the period is outside the stage's fingerprint.
This module reads and writes files only; the trainer serialises its own state (torch.save).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

KEEP = 2  # the newest two: a checkpoint found damaged on resume falls back to the one before
META = "meta.json"
_PERIOD = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(min|m|h|steps?)?\s*$")


@dataclass(frozen=True)
class Period:
    steps: int | None = None
    seconds: float | None = None

    @property
    def off(self) -> bool:
        return self.steps is None and self.seconds is None


def parse_period(text: str | None) -> Period:
    """``trainer.checkpoint_every`` as a Period. Hand-worked: "30min" → 1800 s, "1.5h" → 5400 s,
    "200" and "200steps" → every 200 steps, None or "off" → never. ValueError names the forms."""
    if text is None:
        return Period()
    value = str(text).strip().lower()
    if value in ("off", "none", "null", "never"):
        return Period()
    m = _PERIOD.match(value)
    if not m:
        raise ValueError(f"{text!r} is not a period; write minutes (\"30min\"), hours (\"2h\"), optimizer "
                         f"steps (\"200steps\"), or null (off)")
    number, unit = float(m.group(1)), m.group(2) or "steps"
    if number <= 0:
        raise ValueError(f"{text!r}: the period must be positive, or null (off)")
    if unit.startswith("step"):
        if number != int(number):
            raise ValueError(f"{text!r}: a period in steps is a whole number")
        return Period(steps=int(number))
    return Period(seconds=number * (3600 if unit == "h" else 60))


class CheckpointDue:
    """Whether a checkpoint is due after an optimizer step: every ``steps`` steps, or once
    ``seconds`` of training have passed since the last one (or since training began)."""

    def __init__(self, period: Period, clock: Callable[[], float] = time.monotonic):
        self.period = period
        self.clock = clock
        self.since = clock()

    def __call__(self, step: int) -> bool:
        p = self.period
        if p.steps is not None:
            return (step + 1) % p.steps == 0
        return p.seconds is not None and self.clock() - self.since >= p.seconds

    def written(self) -> None:
        self.since = self.clock()


@dataclass(frozen=True)
class Found:
    """The checkpoint to resume from (``folder``, after optimizer step ``step``), and what was
    passed over on the way to it (for the stage's message)."""

    folder: Path | None
    step: int
    notes: tuple[str, ...]


def saved_words(step: int, plan_steps: int, folder: Path) -> str:
    """What a stop at a step boundary kept, in the words sppo-run prints (both trainers)."""
    return f"the train stage saved a step checkpoint after optimizer step {step + 1} of {plan_steps} ({folder})"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_folder(final: Path, write: Callable[[Path], None], extra: dict) -> None:
    """Commit a folder of files atomically: ``write(tmp)`` fills a temporary folder, whose files
    are fsynced and listed with size and sha256 in ``meta.json`` (beside ``extra``), then the
    folder is renamed to ``final``."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    write(tmp)
    finish_folder(tmp, final, extra)


def finish_folder(tmp: Path, final: Path, extra: dict) -> None:
    """The second half of :func:`write_folder`, for a ``tmp`` folder others filled (the ranks of a
    megatron job): fsync and hash its files into ``meta.json``, then rename it to ``final``."""
    files = {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync(f)
        files[str(f.relative_to(tmp))] = [f.stat().st_size, sha256(f)]
    (tmp / META).write_text(json.dumps({**extra, "files": files}, sort_keys=True) + "\n")
    _fsync(tmp / META)
    _fsync(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync(final.parent)


def check_folder(folder: Path) -> dict:
    """The folder's meta, if every file it lists is there with its size and sha256; ValueError
    naming the first that is not (a truncated file, a missing shard, an unreadable meta)."""
    try:
        meta = json.loads((folder / META).read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{folder.name}/{META} cannot be read ({type(exc).__name__})") from None
    for name, (size, digest) in files.items():
        f = folder / name
        if not f.is_file():
            raise ValueError(f"{folder.name}/{name} is missing")
        if f.stat().st_size != size:
            raise ValueError(f"{folder.name}/{name} has {f.stat().st_size} bytes, {size} were written")
        if sha256(f) != digest:
            raise ValueError(f"{folder.name}/{name} does not match the checksum written with it")
    return meta


class StepCheckpoints:
    """The checkpoints of one train stage, in ``workdir`` (its partial folder)."""

    def __init__(self, workdir: Path, plan_steps: int):
        self.root = workdir / "checkpoints"
        self.reference_dir = workdir / "reference"
        self.plan_steps = plan_steps

    # --- the reference log-probs, once per stage
    def save_reference(self, write: Callable[[Path], None]) -> None:
        write_folder(self.reference_dir, write, {"steps": self.plan_steps})

    def reference(self) -> Path | None:
        """The reference folder if it was written whole for this plan; else None (recompute)."""
        if not self.reference_dir.is_dir():
            return None
        try:
            meta = check_folder(self.reference_dir)
        except ValueError:
            return None
        return self.reference_dir if meta.get("steps") == self.plan_steps else None

    # --- the step checkpoints
    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Write the checkpoint after optimizer ``step`` and keep the newest :data:`KEEP`."""
        final = self.root / f"step_{step:06d}"
        write_folder(final, write, {"step": step, "steps": self.plan_steps})
        for old in self._folders()[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    # --- the same in two phases, for a checkpoint many processes write (the megatron trainer):
    # one process calls begin, every process writes its files into the folder it returns, then
    # (after they all have) the one process calls commit
    def begin(self, step: int) -> Path:
        """An empty ``step_NNNNNN.tmp`` folder for the checkpoint after optimizer ``step``. (:meth:`latest`
        removes ``.tmp`` folders, as a kill's leftovers: not to be called while one is being filled.)"""
        tmp = self.tmp_folder(step)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def tmp_folder(self, step: int) -> Path:
        return self.root / f"step_{step:06d}.tmp"

    def folder(self, step: int) -> Path:
        return self.root / f"step_{step:06d}"

    def commit(self, step: int, tmp: Path) -> Path:
        """Make ``tmp`` (from :meth:`begin`, now filled) the checkpoint after ``step`` — fsync, sha256,
        meta.json, rename, as :meth:`save` — and keep the newest :data:`KEEP`."""
        final = self.folder(step)
        finish_folder(tmp, final, {"step": step, "steps": self.plan_steps})
        for old in self._folders()[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        for tmp in self.root.glob("*.tmp"):  # a write a kill interrupted: never a checkpoint
            shutil.rmtree(tmp, ignore_errors=True)
        return sorted(p for p in self.root.glob("step_*") if p.is_dir())

    def latest(self) -> Found:
        """The newest checkpoint whose files are whole and whose plan is this stage's."""
        notes: list[str] = []
        for folder in reversed(self._folders()):
            try:
                meta = check_folder(folder)
            except ValueError as exc:
                notes.append(f"checkpoint {folder.name} is damaged ({exc}); passed over")
                continue
            if meta.get("steps") != self.plan_steps or not isinstance(meta.get("step"), int):
                notes.append(f"checkpoint {folder.name} was made for a plan of {meta.get('steps')} steps, this "
                             f"stage has {self.plan_steps}; passed over")
                continue
            return Found(folder, meta["step"], tuple(notes))
        return Found(None, -1, tuple(notes))



def clear_checkpoints(workdir: Path) -> None:
    """Remove a train stage's checkpoints and reference from ``workdir`` (before the stage commits:
    the committed stage holds the policy and metrics only)."""
    for name in ("checkpoints", "reference"):
        shutil.rmtree(workdir / name, ignore_errors=True)
