"""The one resumable chunk log: generation, evaluation sampling and annotation append each
finished chunk of work as one fsync'd JSON line, so a crash (even kill -9) loses at most the
chunk in flight, and a rerun redoes only the chunks the log does not hold.

One line per chunk makes a chunk's completeness atomic: a line that does not parse is the torn
tail of an interrupted write and is dropped (the file is rewritten without it before appending).
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
        """The chunks whose line is whole; a torn last line is cut off the file."""
        if not self.path.exists():
            return {}
        done: dict[int, list[dict]] = {}
        good = 0
        with self.path.open("rb") as fh:
            data = fh.read()
        for line in data.splitlines(keepends=True):
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                break  # a torn tail; every earlier line was fsync'd whole
            if not line.endswith(b"\n"):
                break
            done[int(entry["chunk"])] = entry["rows"]
            good += len(line)
        if good < len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())
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
