"""The training rows file (the build stage's ``rows.jsonl``): the one writer and the one reader.

One JSON object per line, ``{"kind": "PointRow" | "PairRow", **fields}``; every trainer backend,
the megatron workers included, reads the build stage's file by path through :func:`read_rows`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from sppo_nemo.formats.artifacts import write_jsonl
from sppo_nemo.schema.protocols import PairRow, PointRow

KINDS = {"PointRow": PointRow, "PairRow": PairRow}


def row_json(row: PointRow | PairRow) -> dict:
    return {"kind": type(row).__name__, **asdict(row)}


def write_rows(path: Path, rows: Iterable[PointRow | PairRow]) -> None:
    write_jsonl(path, (row_json(r) for r in rows))


def read_rows(path: Path) -> list[PointRow] | list[PairRow]:
    rows = []
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            rows.append(KINDS[d.pop("kind")](**d))
    return rows
