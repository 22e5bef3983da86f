"""AlpacaEval's output format, and the optional evaluation prompt file (``evaluation.prompts``).

AlpacaEval (``alpaca_eval evaluate --model_outputs FILE``) reads a JSON list with one object per
instruction: ``{"instruction", "output", "generator", "dataset"}``. Its own instruction set,
``alpaca_eval.json``, is such a list (with GPT-4's outputs), so it is a valid prompt file here too.

Generator names (what a leaderboard shows per row): ``<run name>-iter<t>`` for the policy that
``iter_<t>/evaluate`` samples, π_{t+1}, as the paper labels its rows ("SPPO Iter1" is the model
after one iteration); ``-iter0`` is the base policy π_1 sampled with this run's evaluation
settings. Best-of-n outputs add ``-best-of-<n>``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sppo_nemo.formats.data import DataError, _records
from sppo_nemo.schema.protocols import Prompt

FIELDS = ("instruction", "output", "generator", "dataset")
HELDOUT_DATASET = "sppo-heldout"  # the dataset field of the held-out prompts' outputs


def generator_name(run_name: str, iteration: int, best_of: int | None = None) -> str:
    """``tiny_sppo-iter1``, ``tiny_sppo-iter1-best-of-16``: see the module docstring."""
    return f"{run_name}-iter{iteration}" + (f"-best-of-{best_of}" if best_of else "")


def output_records(instructions: Sequence[str], outputs: Sequence[str], generator: str,
                   datasets: Sequence[str]) -> list[dict]:
    """One AlpacaEval record per instruction, in order."""
    if not len(instructions) == len(outputs) == len(datasets):
        raise ValueError(f"lengths differ: {len(instructions)} instructions, {len(outputs)} outputs, "
                         f"{len(datasets)} datasets")
    return [{"instruction": i, "output": o, "generator": generator, "dataset": d}
            for i, o, d in zip(instructions, outputs, datasets)]


def write_outputs(path: Path, records: Sequence[dict]) -> None:
    """A JSON list of the records, keys in AlpacaEval's order, UTF-8 (not ASCII-escaped)."""
    for n, rec in enumerate(records):
        _check_record(rec, f"records[{n}]")
    text = json.dumps([{k: rec[k] for k in FIELDS} for rec in records], ensure_ascii=False, indent=2)
    Path(path).write_text(text + "\n", encoding="utf-8")


def read_outputs(path: Path) -> list[dict]:
    """The records of an AlpacaEval outputs file, or a DataError naming the entry that is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of outputs, got {type(data).__name__}")
    for n, rec in enumerate(data):
        _check_record(rec, f"{path} entry {n + 1}")
    return data


def _check_record(rec: object, where: str) -> None:
    if not isinstance(rec, dict) or set(rec) != set(FIELDS) or not all(isinstance(rec[k], str) for k in FIELDS):
        raise DataError(f"{where}: an AlpacaEval output is an object of the strings {', '.join(FIELDS)}; "
                        f"got {rec!r:.200}")


# ----------------------------------------------------------------------------- the prompt file
@dataclass(frozen=True)
class EvalPrompts:
    """The instructions of ``evaluation.prompts``, each with the dataset name its output carries
    (the record's own ``dataset`` field, else the file's stem). Fingerprinted by content."""

    prompts: tuple[Prompt, ...]
    datasets: tuple[str, ...]

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p, d in zip(self.prompts, self.datasets):
            h.update(json.dumps([p.id, p.text, d], ensure_ascii=False).encode())
        return h.hexdigest()[:16]


def read_eval_prompts(path: Path, field: str = "instruction") -> EvalPrompts:
    """A .json list of objects (AlpacaEval's ``alpaca_eval.json``), a .jsonl file (one object per
    line) or a .parquet file; the instruction is ``field``. Problems name the entry and the fix."""
    path = Path(path)
    records = _json_list(path) if path.suffix == ".json" and _starts_a_list(path) else _records(path)
    if not records:
        raise DataError(f"{path}: no prompts in the file; give at least one, or set evaluation.prompts=null")
    prompts, datasets = [], []
    for i, (where, rec) in enumerate(records):
        text = rec.get(field)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field {field!r} must be a non-empty string (set evaluation.prompt_field "
                            f"if the instruction lives under another name)")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800": valid JSON, not text
            raise DataError(f"{where}: field {field!r} holds a lone surrogate (character {exc.start + 1}), "
                            f"which is not text; fix or delete that entry") from None
        dataset = rec.get("dataset")
        prompts.append(Prompt(id=f"eval{i:05d}", text=text))
        datasets.append(dataset if isinstance(dataset, str) and dataset.strip() else path.stem)
    return EvalPrompts(tuple(prompts), tuple(datasets))


def recipe_eval_prompts(r) -> EvalPrompts:
    """A recipe's ``evaluation.prompts``, read, or a DataError naming the key and the fix (the
    recipe check and the evaluate stage both read it here). The recipe loader makes the path
    absolute (relative to the recipe file); a relative one is taken from the working directory."""
    path = Path(r.evaluation.prompts).expanduser()
    if not path.is_file():
        raise DataError(f"evaluation.prompts: {path} is not a file; give a .jsonl file, a .json list of objects "
                        f"(AlpacaEval's alpaca_eval.json) or a .parquet file, or set evaluation.prompts=null")
    try:
        return read_eval_prompts(path, r.evaluation.prompt_field)
    except DataError as exc:
        raise DataError(f"evaluation.prompts: {exc}") from None


def _starts_a_list(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return False  # _records names the problem
    return head.startswith(b"[")


def _json_list(path: Path) -> list[tuple[str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start + 1}); re-encode the file as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    out = []
    for n, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"{path} entry {n + 1}: expected a JSON object, got {type(rec).__name__}")
        out.append((f"{path} entry {n + 1}", rec))
    return out
