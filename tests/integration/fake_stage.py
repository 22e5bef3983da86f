"""A stage module for tests/integration/test_process_rule.py: ``run`` does what its input says, in
the worker process stage_process starts."""

from __future__ import annotations

import os
from pathlib import Path

from sppo_nemo.schema.errors import StaleStageError

NAME = "fake"


def run(inp: str, workdir: Path, bar) -> dict:
    if inp == "write":
        (workdir / "out.txt").write_text(str(os.getpid()))
        with bar(1, "fake") as b:
            b.update(1)
        return {"pid": os.getpid()}
    if inp == "user-error":
        raise StaleStageError("a message naming the problem and the fix")
    if inp == "disk-full":
        raise OSError(28, "No space left on device", str(workdir / "out.txt"))
    if inp == "bug":
        raise KeyError("a programming error")
    if inp == "die":
        os._exit(9)
    raise ValueError(inp)
