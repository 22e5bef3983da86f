"""The one resumable chunk log: whole chunks survive, a torn tail is dropped, resume redoes only
what is missing, and progress counts each piece of work once."""

from __future__ import annotations

import pytest

from sppo_nemo.formats.chunklog import ChunkLog, merged, run_chunks

pytestmark = pytest.mark.unit


def test_completed_chunks_survive_and_a_torn_tail_is_cut(tmp_path):
    log = ChunkLog(tmp_path / "log.jsonl")
    log.append(0, [{"a": 1}])
    log.append(2, [{"a": 3}, {"a": 4}])
    with log.path.open("a") as fh:
        fh.write('{"chunk": 3, "rows": [{"a"')  # killed mid-write
    assert log.completed() == {0: [{"a": 1}], 2: [{"a": 3}, {"a": 4}]}
    assert log.path.read_text().count("\n") == 2 and log.path.read_text().endswith("\n")
    log.append(3, [{"a": 5}])  # appends after the cut, never onto the torn bytes
    assert sorted(log.completed()) == [0, 2, 3]


def test_a_last_line_without_newline_is_torn_even_if_it_parses(tmp_path):
    log = ChunkLog(tmp_path / "log.jsonl")
    log.append(0, [{"a": 1}])
    with log.path.open("a") as fh:
        fh.write('{"chunk": 1, "rows": []}')  # no newline: the fsync of this write never returned
    assert log.completed() == {0: [{"a": 1}]}


def test_run_chunks_resumes_and_counts_progress_once(tmp_path):
    log = ChunkLog(tmp_path / "log.jsonl")
    calls, seen = [], []

    def work(c, report):
        calls.append(c)
        report(1)
        if c == 2 and len(calls) == 3:
            raise KeyboardInterrupt  # the first attempt dies in chunk 2
        return [{"c": c}]

    with pytest.raises(KeyboardInterrupt):
        run_chunks(log, 4, work, seen.append)
    assert calls == [0, 1, 2]
    calls.clear()
    seen.clear()
    out = run_chunks(log, 4, work, seen.append, size=len)
    assert calls == [2, 3]  # finished chunks are never redone
    assert out == [[{"c": 0}], [{"c": 1}], [{"c": 2}], [{"c": 3}]]
    assert seen == [2, 1, 1]  # the two logged chunks at once, then each new chunk by its own work


def test_chunks_beyond_the_plan_are_ignored_and_logs_merge(tmp_path):
    a, b = ChunkLog(tmp_path / "shard_00.jsonl"), ChunkLog(tmp_path / "shard_01.jsonl")
    a.append(0, [{"x": 0}])
    b.append(1, [{"x": 1}])
    b.append(0, [{"x": "dup"}])
    assert merged([a, b]) == {0: [{"x": 0}], 1: [{"x": 1}]}
    assert run_chunks(a, 1, lambda c, r: pytest.fail("chunk 0 is logged")) == [[{"x": 0}]]


def test_a_damaged_line_inside_the_log_is_dropped_and_only_its_chunk_redone(tmp_path):
    log = ChunkLog(tmp_path / "log.jsonl")
    for c in range(3):
        log.append(c, [{"c": c}])
    lines = log.path.read_text().splitlines(keepends=True)
    log.path.write_text(lines[0] + '{"chunk": 1, "rows": [{"c": \x00garbage\n' + lines[2])
    calls = []
    out = run_chunks(log, 3, lambda c, r: calls.append(c) or [{"c": c}])
    assert calls == [1] and out == [[{"c": 0}], [{"c": 1}], [{"c": 2}]]
    assert sorted(ChunkLog(log.path).completed()) == [0, 1, 2]
