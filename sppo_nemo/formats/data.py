"""Prompt data: reading JSONL / Parquet / `datasets` directories / hub datasets, and the iteration splits.

``data.prompts`` is a .jsonl or .parquet file, a ``datasets.save_to_disk`` directory, "builtin", or
a hub dataset ``hf:owner/name`` (``datasets.load_dataset(name, data.subset, split=data.split)``,
kept in datasets' own cache, HF_DATASETS_CACHE or HF_HOME/datasets, so a second run reads the
cache; offline a hub dataset needs that cache). ``datasets`` is imported here only, by
:func:`_datasets`, and only for those two sources.

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

from sppo_nemo.schema.protocols import Prompt
from sppo_nemo.schema.config import BUILTIN_PROMPTS, HUB_DATASET, DataConfig, Recipe, is_hub_dataset, resolve_path
from sppo_nemo.schema.errors import UserError


class DataError(UserError):
    """A prompt file that cannot be used, with the place and the fix."""


class NotCached(DataError):
    """A hub dataset that is neither in the local cache nor reachable; ``note`` is the one line a
    --validate prints instead of counting its prompts."""

    def __init__(self, message: str, note: str):
        super().__init__(message)
        self.note = note


def builtin_prompts_path() -> Path:
    return Path(str(resources.files("sppo_nemo") / "assets" / "prompts.jsonl"))


def hub_name(cfg: DataConfig) -> str | None:
    """The dataset id of ``data.prompts: hf:owner/name`` (or hf:/a/local/dataset/folder), else None."""
    return cfg.prompts[len(HUB_DATASET):] if is_hub_dataset(cfg.prompts) else None


def prompts_path(cfg: DataConfig, base_dir: Path = Path(".")) -> Path:
    if cfg.prompts == BUILTIN_PROMPTS:
        return builtin_prompts_path()
    return resolve_path(cfg.prompts, base_dir)


def _datasets():
    """The ``datasets`` package (the one import of it), or a DataError saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise DataError("hub datasets (hf:owner/name) and datasets directories are read with the datasets package; "
                        "install it: pip install 'sppo-nemo[hub]' (or pip install datasets)") from None
    return datasets


def _fields(cfg: DataConfig) -> list[str]:
    """The columns a prompt is made of, the prompt's first."""
    return list(dict.fromkeys(f for f in (cfg.prompt_field, cfg.id_field, cfg.reference_field, cfg.answer_field) if f))


def _keep(where: str, columns: list[str], fields: list[str] | None) -> list[str] | None:
    """The columns to read: those of ``fields`` the data has; a DataError naming the columns when the
    prompt's own (fields[0]) is not one of them. None: every column."""
    if fields is None:
        return None
    if fields[0] not in columns:
        raise DataError(f"{where}: no column {fields[0]!r} (data.prompt_field); its columns are {columns}; set "
                        f"data.prompt_field to the one holding the prompt")
    return [c for c in fields if c in columns]


def _dataset_records(ds, where: str, fields: list[str] | None) -> list[tuple[str, dict]]:
    keep = _keep(where, list(ds.column_names), fields)
    rows = (ds if keep is None else ds.select_columns(keep)).to_list()
    return [(f"{where} row {i + 1}", row) for i, row in enumerate(rows)]


def _records(path: Path, split: str | None = None, fields: list[str] | None = None) -> list[tuple[str, dict]]:
    """(location, record) pairs of a local file or datasets directory; location names the file and
    line for error messages. ``split`` picks a saved DatasetDict's split (null: train); ``fields``,
    when given, are the columns to read, the first required."""
    if not path.exists():
        raise DataError(f"{path} does not exist; give a .jsonl or .parquet file, a datasets directory, 'builtin' "
                        f"or a hub dataset hf:owner/name")
    if path.is_dir():
        datasets = _datasets()
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise DataError(f"{path} is not a directory written by datasets' save_to_disk; for a folder of data "
                            f"files as the hub holds them (a dataset repository) write data.prompts: hf:{path}") from None
        if isinstance(ds, datasets.DatasetDict):
            name = split or "train"
            if name not in ds:
                raise DataError(f"data.split: {path} holds the splits {list(ds)}, not {name!r}; set data.split to "
                                f"one of them")
            return _dataset_records(ds[name], f"{path} ({name})", fields)
        if split is not None and split != (str(ds.split) if ds.split else None):
            saved = f" (saved from split {ds.split})" if ds.split else ""
            raise DataError(f"data.split: {path} holds one dataset{saved}, not splits; remove data.split")
        return _dataset_records(ds, str(path), fields)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path} is Parquet; reading it needs `pip install pyarrow`") from None
        import pyarrow as pa

        try:
            keep = _keep(str(path), pq.read_schema(path).names, fields)
            rows = pq.read_table(path, columns=keep).to_pylist()
        except pa.ArrowException as exc:  # not Parquet at all, empty, or cut short
            raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}){_format_hint(path)}"
                            ) from None
        return [(f"{path} row {i + 1}", row) for i, row in enumerate(rows)]
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unknown format {path.suffix!r}; use .jsonl, .parquet, a datasets directory or "
                        f"hf:owner/name")
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


def _format_hint(path: Path) -> str:
    """The fix for a .parquet file that is not Parquet: what it looks like instead, if text."""
    with path.open("rb") as fh:
        head = fh.read(64).lstrip()
    if head.startswith(b"{"):
        return "; it looks like JSON lines: rename it to .jsonl"
    if head.startswith(b"["):
        return "; it looks like JSON: write one object per line and name it .jsonl"
    return "; write it with pyarrow or pandas (DataFrame.to_parquet), or give a .jsonl file"


def download_command(cfg: DataConfig) -> str:
    """The command that puts a hub dataset into the local cache, to run where the network reaches the hub."""
    args = [repr(hub_name(cfg))] + ([repr(cfg.subset)] if cfg.subset else []) + [f"split={cfg.split or 'train'!r}"]
    return f'python -c "import datasets; datasets.load_dataset({", ".join(args)})"'


def _hub_dataset(cfg: DataConfig):
    """``datasets.load_dataset(name, data.subset, split=data.split or 'train')``: from the cache, or
    downloaded into it. Every failure is a DataError naming the key to fix; NotCached when the
    dataset is not cached and the hub cannot be reached."""
    datasets = _datasets()
    name, split = hub_name(cfg), cfg.split or "train"
    source = f"hf:{name}" + (f" (subset {cfg.subset})" if cfg.subset else "")

    def not_cached(why: str) -> NotCached:
        cache = datasets.config.HF_DATASETS_CACHE
        cmd = download_command(cfg)
        return NotCached(
            f"data.prompts: {source} is not in the local datasets cache ({cache}) and the hub cannot be reached "
            f"({why}); download it where the network reaches the hub, into the cache this run reads (the same "
            f"HF_HOME or HF_DATASETS_CACHE): {cmd}",
            f"prompts not checked: {source} is not in the local cache ({cache}); download it with: {cmd}")

    try:
        return datasets.load_dataset(name, cfg.subset, split=split)
    except ConnectionError as exc:  # offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) or no network, not cached
        offline = "offline mode: HF_HUB_OFFLINE or HF_DATASETS_OFFLINE is set" if datasets.config.HF_HUB_OFFLINE \
            else f"no network: {str(exc).splitlines()[0]}"
        raise not_cached(offline) from None
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith("Unknown split"):  # 'Unknown split "x". Should be one of [...].'
            known = msg.partition("Should be one of ")[2].rstrip(".") or "unknown"
            raise DataError(f"data.split: {source} has no split {split!r}; its splits are {known}; set data.split "
                            f"to one of them") from None
        if msg.startswith("BuilderConfig"):  # "BuilderConfig 'x' not found. Available: [...]"
            raise DataError(f"data.subset: {source}: {msg}; set data.subset to one of them") from None
        if msg.startswith("Couldn't find cache for"):  # offline, cached with another subset only
            raise not_cached("offline; " + msg.replace("\n", "; ")) from None
        raise DataError(f"data.prompts: cannot load {source} (ValueError: {msg.splitlines()[0]})") from None
    except Exception as exc:  # an unknown or gated dataset, a folder without data files, a dataset script
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"data.prompts: cannot load {source} with datasets.load_dataset ({type(exc).__name__}: "
                        f"{first}); check the dataset id (hf:owner/name) and, for a gated dataset, log in "
                        f"(HF_TOKEN)") from None


def _source_records(cfg: DataConfig, base_dir: Path) -> list[tuple[str, dict]]:
    name = hub_name(cfg)
    if name is None:
        return _records(prompts_path(cfg, base_dir), cfg.split, _fields(cfg))
    return _dataset_records(_hub_dataset(cfg), f"hf:{name} ({cfg.split or 'train'})", _fields(cfg))


def _to_prompt(where: str, index: int, record: dict, cfg: DataConfig) -> Prompt:
    text = record.get(cfg.prompt_field)
    if not isinstance(text, str) or not text.strip():
        has = "" if cfg.prompt_field in record else f"; the record's fields are {list(record)}"
        raise DataError(f"{where}: field {cfg.prompt_field!r} must be a non-empty string{has} "
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
    records = _source_records(cfg, base_dir)
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


def availability(cfg: DataConfig, base_dir: Path = Path(".")) -> str | None:
    """A one-line note when the prompts are a hub dataset that is not in the local cache and the hub
    cannot be reached (so ``check`` did not count them), for callers to print; None otherwise. Where
    the network reaches the hub, loading it downloads it into the cache."""
    if hub_name(cfg) is None:
        return None
    try:
        _hub_dataset(cfg)
    except NotCached as exc:
        return exc.note
    except DataError:
        pass  # a problem check() reports
    return None


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


def _source_keys(d: DataConfig) -> list[str]:
    """data.subset and data.split only where the source has subsets or splits."""
    p = []
    if d.subset is not None and hub_name(d) is None:
        p.append(f"data.subset: {d.subset!r}, but only a hub dataset (data.prompts: hf:owner/name) has subsets; "
                 f"remove data.subset")
    if d.split is not None and hub_name(d) is None and (d.prompts == BUILTIN_PROMPTS
                                                         or Path(d.prompts).suffix in (".jsonl", ".json", ".parquet")):
        p.append(f"data.split: {d.split!r}, but {d.prompts} is one file without splits; remove data.split")
    return p


def check(r: Recipe, base_dir: Path) -> list[str]:
    """The recipe's data section against the prompts: readable, and enough prompts for T splits. A hub
    dataset that is neither cached nor reachable is not counted (the recipe is still valid; see
    :func:`availability` for the note to print); reading it for a run fails with the download command."""
    d = r.data
    problems = _source_keys(d)
    try:
        n = count_prompts(d, base_dir)
    except NotCached:
        return problems
    except DataError as exc:
        msg = str(exc)
        return problems + [msg if msg.startswith("data.") else f"data.prompts: {msg}"]
    held_out = d.eval_size if r.evaluation.enabled else 0  # as the run splits them (context.Context.splits)
    usable = n - held_out
    if usable < d.split_size:
        return problems + [f"data.split_size: {d.split_size} prompts per split, but {d.prompts} has {n} prompts "
                           f"and {held_out} are held out (data.eval_size); lower data.split_size or data.eval_size"]
    splits = usable // d.split_size
    if r.T > splits:
        return problems + [f"T: {r.T} iterations, but the data gives only {splits} split(s) of {d.split_size} "
                           f"prompts ({n} prompts, {held_out} held out); lower T or data.split_size"]
    return problems
