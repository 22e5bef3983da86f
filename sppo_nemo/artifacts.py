"""The run directory: stage folders committed atomically, fingerprints, resume.

A stage works in ``<stage>.partial/`` beside its final folder. When it is finished it writes
``manifest.json`` (its fingerprint, the digest of its outputs, timings) and ``_DONE`` inside
the partial folder, then renames the folder into place: the rename is the commit, so a crash
(kill -9) at any moment leaves either a finished stage or a partial one, never a half-final one.
A partial folder survives a crash so that a stage can resume inside it (generation does).

The fingerprint is a flat {key: value} map of what the stage depends on (recipe keys and the
output digests of the stages it reads). A finished stage whose fingerprint differs from the
one the recipe asks for now is never silently reused or redone: the runner stops and names
the keys that changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from sppo_nemo.errors import StaleStageError

MANIFEST = "manifest.json"
DONE = "_DONE"
TIMINGS = "timings.jsonl"  # wall-clock figures: kept, but outside the digest (never reproducible)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True, ensure_ascii=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """Append rows and fsync: after a crash the file holds whole lines plus at most one torn one."""
    with path.open("a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path, tolerate_torn_tail: bool = False) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if tolerate_torn_tail and i == len(lines) - 1:
                break  # the last write was cut by a crash; it will be redone
            raise
    return rows


def digest_files(root: Path, exclude: tuple[str, ...] = (MANIFEST, DONE, TIMINGS)) -> str:
    """sha256 over the relative names and contents of every file under root."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude:
            continue
        h.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def canonical(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Flatten nested sections to dotted keys (``trainer.lr``) and normalise values as JSON
    would store them, so that a read-back compares equal and a change names its exact key."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    walk("", fingerprint)
    return json.loads(json.dumps(flat, sort_keys=True))


class Stage:
    """One stage folder of one iteration, e.g. ``runs/demo/iter_01/generate``."""

    def __init__(self, path: Path):
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self.label = f"{path.parent.name}/{path.name}"

    def done(self) -> bool:
        return (self.path / DONE).is_file()

    def manifest(self) -> dict:
        return read_json(self.path / MANIFEST)

    def digest(self) -> str:
        return self.manifest()["digest"]

    def check(self, fingerprint: dict[str, Any], run_dir: Path) -> None:
        """Raise StaleStageError naming every key whose value differs from the finished stage's."""
        old = self.manifest().get("fingerprint", {})
        new = canonical(fingerprint)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if not changed:
            return
        lines = [f"{self.label} was finished with a different recipe or different inputs:"]
        for k in changed:
            lines.append(f"  {k}: was {old.get(k, '<absent>')!r}, now {new.get(k, '<absent>')!r}")
        lines.append(
            f"Nothing was reused or overwritten. To redo this stage and everything after it, run again "
            f"with --restart-from {self.label}; to keep this run, revert the change; to start afresh, "
            f"use another name (name=...) or delete {run_dir}."
        )
        raise StaleStageError("\n".join(lines))

    def begin(self, fingerprint: dict[str, Any]) -> Path:
        """Return the partial folder to work in, kept from a crashed attempt with the same fingerprint."""
        marker = self.partial / "fingerprint.json"
        fp = canonical(fingerprint)
        if self.partial.exists():
            try:
                same = read_json(marker) == fp
            except (OSError, json.JSONDecodeError):
                same = False
            if not same:
                shutil.rmtree(self.partial)
        if not self.partial.exists():
            self.partial.mkdir(parents=True)
            write_json(marker, fp)
        return self.partial

    def commit(self, fingerprint: dict[str, Any], started: float, extra: dict | None = None) -> dict:
        (self.partial / "fingerprint.json").unlink(missing_ok=True)
        manifest = {
            "stage": self.label,
            "fingerprint": canonical(fingerprint),
            "digest": digest_files(self.partial),
            "seconds": round(time.time() - started, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(extra or {}),
        }
        write_json(self.partial / MANIFEST, manifest)
        (self.partial / DONE).write_text("ok\n")
        fsync_dir(self.partial)
        if self.path.exists():  # a folder without _DONE from an older layout: never trust it
            shutil.rmtree(self.path)
        os.rename(self.partial, self.path)
        fsync_dir(self.path.parent)
        return manifest

    def remove(self) -> None:
        for p in (self.path, self.partial):
            if p.exists():
                shutil.rmtree(p)
