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
from typing import Any, Callable, Iterable

from sppo_nemo.schema.errors import StaleStageError, UserError


class CorruptStageError(UserError):
    """A finished stage's files or manifest no longer match what it committed."""


# The run-directory format: written into every manifest. A stage of another format (an older
# sppo-nemo's, whose fingerprints were made by other rules) is refused as a whole, never reused
# or compared key by key. Raise it when a stage's fingerprint or files change meaning.
FORMAT = 2
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


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_table(root: Path, exclude: tuple[str, ...] = (MANIFEST, DONE, TIMINGS)) -> dict[str, dict]:
    """{relative name: {size, mtime_ns, sha256}} of every file under root, as a manifest records it."""
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel not in exclude:
            st = path.stat()
            table[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}
    return table


def table_digest(table: dict[str, dict]) -> str:
    """One digest of a folder's contents: its file names and their sha256, in name order."""
    h = hashlib.sha256()
    for rel in sorted(table):
        h.update(f"{rel}\0{table[rel]['sha256']}\n".encode())
    return h.hexdigest()[:16]


def digest_files(root: Path) -> str:
    return table_digest(file_table(root))


def content_digest(root: Path, cache: Path, full: bool = False) -> str:
    """A directory identified by its content (file names and sha256), cheaply: sha256 sums are kept
    in ``cache`` with each file's size and mtime, and only a file whose size or mtime moved is hashed
    again (every file with ``full``). A 7B checkpoint is hashed once, then stat'ed on each rerun.
    Each content's file list is kept too (:func:`content_changes` names the files that changed)."""
    try:
        known = read_json(cache) if cache.is_file() and not full else {}
    except (OSError, ValueError):
        known = {}
    table = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel, st = path.relative_to(root).as_posix(), path.stat()
        old = known.get(rel)
        if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
            table[rel] = old
        else:
            table[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}
    if table != known:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, table)
    digest = table_digest(table)
    _remember(cache, digest, table)
    return digest


KEPT_CONTENTS = 8  # the file lists of the last contents content_digest saw, kept to name what changed


def _contents_file(cache: Path) -> Path:
    return cache.with_name(cache.stem + ".contents.json")


def _remember(cache: Path, digest: str, table: dict[str, dict]) -> None:
    """Keep the content's file list ({name: sha256}) under its digest beside ``cache``, the last
    :data:`KEPT_CONTENTS` of them (a list, oldest first), so that a change can later be named file by file."""
    kept = _kept_contents(cache)
    if any(entry["digest"] == digest for entry in kept):
        return
    kept.append({"digest": digest, "files": {rel: rec["sha256"] for rel, rec in table.items()}})
    write_json(_contents_file(cache), kept[-KEPT_CONTENTS:])


def _kept_contents(cache: Path) -> list[dict]:
    try:
        kept = read_json(_contents_file(cache))
    except (OSError, ValueError):  # none yet (or a damaged one): start afresh
        return []
    ok = isinstance(kept, list) and all(isinstance(e, dict) and isinstance(e.get("files"), dict) for e in kept)
    return kept if ok else []


def content_changes(cache: Path, old: str, new: str) -> list[tuple[str, str]] | None:
    """What differs between two contents that :func:`content_digest` hashed with ``cache``, by their
    digests: (file name, what happened to it), as :func:`changed_files` words it; None when either
    content is not kept (hashed by an older sppo-nemo, or long ago)."""
    files = {entry["digest"]: entry["files"] for entry in _kept_contents(cache)}
    a, b = files.get(old), files.get(new)
    if a is None or b is None:
        return None
    lines = []
    for rel in sorted(set(a) | set(b)):
        if rel not in b:
            lines.append((rel, "deleted"))
        elif rel not in a:
            lines.append((rel, "added"))
        elif a[rel] != b[rel]:
            lines.append((rel, "its content changed"))
    return lines


def changed_files(root: Path, recorded: dict[str, dict], full: bool) -> list[str]:
    """What differs between the files under root and a recorded file table, one line per file.

    Fast (the default): a file whose size and mtime are as recorded is taken as unchanged; one whose
    mtime moved (a copy, a touch) is hashed and compared, so only a real change is reported. Full:
    every file is hashed."""
    problems = []
    present = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    for rel, rec in recorded.items():
        path = present.get(rel)
        if path is None:
            problems.append(f"{rel}: deleted")
            continue
        st = path.stat()
        if st.st_size != rec["size"]:
            problems.append(f"{rel}: {rec['size']} bytes when committed, {st.st_size} now")
        elif (full or st.st_mtime_ns != rec["mtime_ns"]) and file_sha256(path) != rec["sha256"]:
            problems.append(f"{rel}: its content changed since the stage was committed")
    for rel in sorted(set(present) - set(recorded) - {MANIFEST, DONE, TIMINGS}):
        problems.append(f"{rel}: added after the stage was committed")
    return problems


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
        self.trash = path.with_name(path.name + ".removing")
        self.label = f"{path.parent.name}/{path.name}"

    def done(self) -> bool:
        return (self.path / DONE).is_file()

    def manifest(self) -> dict:
        try:
            m = read_json(self.path / MANIFEST)
            if not isinstance(m, dict) or not isinstance(m.get("digest"), str):
                raise ValueError("no digest")
            return m
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise CorruptStageError(
                f"{self.path / MANIFEST} cannot be read ({type(exc).__name__}: {exc}); the stage's record of what "
                f"it made is lost, so it cannot be trusted: rerun with --restart-from {self.label}") from None

    def verify(self, full: bool = False) -> None:
        """Raise StaleStageError for a stage of another run-directory format (:data:`FORMAT`), and
        CorruptStageError naming every file that no longer matches the manifest."""
        m = self.manifest()
        if m.get("format") != FORMAT:
            raise StaleStageError(
                f"{self.label} was made by an older sppo-nemo (run-directory format {m.get('format', 1)}; this "
                f"version reads format {FORMAT}), so it is not reused. Redo it and everything after it with "
                f"--restart-from {self.label}, or start afresh under another name (name=...).")
        problems = changed_files(self.path, m.get("files", {}), full)
        if problems:
            lines = [f"{self.label} is finished, but its files are not what it committed:"]
            lines += [f"  {self.path.name}/{p}" for p in problems]
            lines.append(f"Nothing was reused. Restore the files, or redo the stage and everything after it with "
                         f"--restart-from {self.label}.")
            raise CorruptStageError("\n".join(lines))

    def digest(self) -> str:
        return self.manifest()["digest"]

    def check(self, fingerprint: dict[str, Any], run_dir: Path, name: Callable[[str], str] | None = None,
              why: Callable[[Any, Any], list[str]] | None = None) -> None:
        """Raise StaleStageError naming every key whose value differs from the finished stage's:
        ``name`` gives the recipe key a fingerprint key stands for (stages.recipe_key), ``why`` the
        lines that explain a changed value (Context.base_policy_changes: the files of π_1 that changed)."""
        old = self.manifest().get("fingerprint", {})
        new = canonical(fingerprint)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if not changed:
            return
        lines = [f"{self.label} was finished with a different recipe or different inputs:"]
        for k in changed:
            was, now = old.get(k, "<absent>"), new.get(k, "<absent>")
            lines.append(f"  {name(k) if name else k}: was {was!r}, now {now!r}")
            lines += [f"    {line}" for line in (why(was, now) if why else [])]
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
        self.tidy()
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
        files = file_table(self.partial)
        manifest = {
            "format": FORMAT,
            "stage": self.label,
            "fingerprint": canonical(fingerprint),
            "digest": table_digest(files),
            "files": files,
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
        """Delete the stage atomically: the folder is first renamed aside, so a crash midway leaves
        either the whole stage or nothing under its name (the aside folder is cleaned next time)."""
        for p in (self.path, self.partial):
            if p.is_dir():
                os.rename(p, self.trash)
                fsync_dir(p.parent)
                shutil.rmtree(self.trash)
            elif p.exists():
                p.unlink()

    def tidy(self) -> None:
        """Remove what a crash can leave beside a stage: a folder renamed aside by remove(), a
        partial folder beside a finished stage, or a file where the partial folder belongs."""
        if self.trash.exists():
            shutil.rmtree(self.trash)
        if self.partial.exists() and (self.done() or not self.partial.is_dir()):
            self.partial.unlink() if not self.partial.is_dir() else shutil.rmtree(self.partial)
