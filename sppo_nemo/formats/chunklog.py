"""The one resumable chunk log: generation, evaluation sampling and annotation append each
finished chunk of work as one fsync'd JSON line, so a crash (even kill -9) loses at most the
chunk in flight, and a rerun redoes only the chunks the log does not hold.

One line per chunk makes a chunk's completeness atomic: a line that does not parse (the torn tail
of an interrupted write, or a line damaged later) is dropped, the file rewritten without it, and
its chunk redone.
A log belongs to one writer; parallel workers each write their own file (``shard_00.jsonl``, ...)
and the reader merges them, chunk indices being global.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

ProgressFn = Callable[[int], None]


class ChunkLog:
    """``{"chunk": c, "rows": [...]}`` lines in one file; chunk indices are unique."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def completed(self) -> dict[int, list[dict]]:
        """The chunks whose line is whole. A line that does not parse (the torn tail of a killed
        write, or a line damaged later) is dropped from the file, so its chunk is redone."""
        if not self.path.exists():
            return {}
        done: dict[int, list[dict]] = {}
        good: list[bytes] = []
        data = self.path.read_bytes()
        for line in data.splitlines(keepends=True):
            try:
                entry = json.loads(line) if line.endswith(b"\n") else None
                chunk, rows = int(entry["chunk"]), entry["rows"]
            except (ValueError, TypeError, KeyError, UnicodeDecodeError):
                continue  # json's errors are ValueErrors
            done[chunk] = rows
            good.append(line)
        if len(good) != len(data.splitlines()):
            tmp = self.path.with_name(self.path.name + ".tmp")
            with tmp.open("wb") as fh:
                fh.writelines(good)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        return done

    def peek(self) -> set[int]:
        """The chunks whose line is whole, read without touching the file: what a reader may call
        while the log's writer (another process) is appending."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return set()
        done = set()
        for line in data.splitlines(keepends=True):
            try:
                done.add(int(json.loads(line)["chunk"]) if line.endswith(b"\n") else None)
            except (ValueError, TypeError, KeyError, UnicodeDecodeError):
                continue
        done.discard(None)
        return done

    def append(self, chunk: int, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"chunk": chunk, "rows": rows}, ensure_ascii=False, sort_keys=True) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


def merged(logs: Iterable[ChunkLog]) -> dict[int, list[dict]]:
    """The completed chunks of several writers' logs (a chunk found twice keeps its first copy)."""
    out: dict[int, list[dict]] = {}
    for log in logs:
        for c, rows in log.completed().items():
            out.setdefault(c, rows)
    return out


def run_chunks(log: ChunkLog, n_chunks: int, work: Callable[[int, ProgressFn | None], list[dict]],
               progress: ProgressFn | None = None,
               size: Callable[[Sequence[dict]], int] = len) -> list[list[dict]]:
    """Every chunk's rows in chunk order: the logged ones read back (``progress`` told their
    ``size`` once), the others computed by ``work(c, progress)``, which reports its own progress,
    and appended as each finishes."""
    done = {c: rows for c, rows in log.completed().items() if c < n_chunks}
    if progress and done:
        progress(sum(size(rows) for rows in done.values()))
    for c in range(n_chunks):
        if c not in done:
            done[c] = work(c, progress)
            log.append(c, done[c])
    return [done[c] for c in range(n_chunks)]
