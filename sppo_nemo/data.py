"""Prompt data: reading JSONL / Parquet / `datasets` directories, and the iteration splits.

The first ``eval_size`` prompts (after the optional seeded shuffle) are the held-out
evaluation split; the rest is cut into consecutive splits of ``split_size`` prompts, split t
feeding iteration t, as the paper splits UltraFeedback into one portion per iteration.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sppo_nemo.protocols import Prompt
from sppo_nemo.config import BUILTIN_PROMPTS, DataConfig, Recipe, resolve_path
from sppo_nemo.errors import UserError


class DataError(UserError):
    """A prompt file that cannot be used, with the place and the fix."""


def builtin_prompts_path() -> Path:
    return Path(str(resources.files("sppo_nemo") / "assets" / "prompts.jsonl"))


def prompts_path(cfg: DataConfig, base_dir: Path = Path(".")) -> Path:
    if cfg.prompts == BUILTIN_PROMPTS:
        return builtin_prompts_path()
    return resolve_path(cfg.prompts, base_dir)


def _records(path: Path) -> list[tuple[str, dict]]:
    """(location, record) pairs; location names the file and line for error messages."""
    if not path.exists():
        raise DataError(f"{path} does not exist; give a .jsonl or .parquet file, a datasets directory, or 'builtin'")
    if path.is_dir():
        try:
            import datasets  # optional: only for directories written by datasets.save_to_disk
        except ImportError:
            raise DataError(f"{path} is a directory; reading it needs `pip install datasets`") from None
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise DataError(f"{path} holds splits {list(ds)}; keep one split or name it 'train'")
            ds = ds["train"]
        return [(f"{path} row {i + 1}", dict(row)) for i, row in enumerate(ds)]
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path} is Parquet; reading it needs `pip install pyarrow`") from None
        rows = pq.read_table(path).to_pylist()
        return [(f"{path} row {i + 1}", row) for i, row in enumerate(rows)]
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unknown format {path.suffix!r}; use .jsonl, .parquet or a datasets directory")
    out = []
    lines = []
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start + 1} of the line); re-encode the "
                            f"file as UTF-8") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or delete that line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object per line, got {type(record).__name__}")
        out.append((f"{path}:{lineno}", record))
    return out


def _to_prompt(where: str, index: int, record: dict, cfg: DataConfig) -> Prompt:
    text = record.get(cfg.prompt_field)
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field {cfg.prompt_field!r} must be a non-empty string "
                        f"(set data.prompt_field if the prompt lives under another name)")
    for name, value in record.items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800": valid JSON, not text
                raise DataError(f"{where}: field {name!r} holds a lone surrogate (character {exc.start + 1}), "
                                f"which is not text; fix or delete that line") from None

    def optional(name: str | None) -> str | None:
        if name is None or record.get(name) is None:
            return None
        return str(record[name])

    pid = optional(cfg.id_field) or f"row{index:06d}"
    return Prompt(id=pid, text=text, reference=optional(cfg.reference_field), answer=optional(cfg.answer_field))


def load_prompts(cfg: DataConfig, base_dir: Path = Path(".")) -> list[Prompt]:
    records = _records(prompts_path(cfg, base_dir))
    prompts = [_to_prompt(where, i, rec, cfg) for i, (where, rec) in enumerate(records)]
    seen: dict[str, str] = {}
    for (where, _), p in zip(records, prompts):
        if p.id in seen:
            raise DataError(f"prompt id {p.id!r} appears at {seen[p.id]} and at {where}; ids must be unique")
        seen[p.id] = where
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(prompts)
    return prompts


def count_prompts(cfg: DataConfig, base_dir: Path = Path(".")) -> int:
    return len(load_prompts(cfg, base_dir))


@dataclass(frozen=True)
class Splits:
    eval: list[Prompt]
    train: list[list[Prompt]]  # train[t-1] is the split of iteration t


def make_splits(prompts: list[Prompt], eval_size: int, split_size: int, iterations: int) -> Splits:
    held_out = prompts[:eval_size]
    rest = prompts[eval_size:]
    train = [rest[i * split_size:(i + 1) * split_size] for i in range(iterations)]
    if any(len(s) < split_size for s in train):
        raise DataError(f"{len(rest)} prompts after the held-out split cannot fill {iterations} splits of {split_size}")
    return Splits(eval=held_out, train=train)


def prompts_digest(prompts: list[Prompt]) -> str:
    """A content hash of a prompt list, for stage fingerprints."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps([p.id, p.text, p.reference, p.answer], ensure_ascii=False).encode())
    return h.hexdigest()[:16]


def check(r: Recipe, base_dir: Path) -> list[str]:
    """The recipe's data section against the prompt file: readable, and enough prompts for T splits."""
    d = r.data
    try:
        n = count_prompts(d, base_dir)
    except DataError as exc:
        return [f"data.prompts: {exc}"]
    held_out = d.eval_size if r.evaluation.enabled else 0  # as the run splits them (context.Context.splits)
    usable = n - held_out
    if usable < d.split_size:
        return [f"data.split_size: {d.split_size} prompts per split, but {d.prompts} has {n} prompts "
                f"and {held_out} are held out (data.eval_size); lower data.split_size or data.eval_size"]
    splits = usable // d.split_size
    if r.T > splits:
        return [f"T: {r.T} iterations, but the data gives only {splits} split(s) of {d.split_size} prompts "
                f"({n} prompts, {held_out} held out); lower T or data.split_size"]
    return []
