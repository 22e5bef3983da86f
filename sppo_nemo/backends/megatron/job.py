"""What crosses the process boundary between the controller and the workers, typed.

``job.json`` holds one :class:`Job`, written by the controller and read by every worker with its
exact fields: a field unknown or missing is an error, never a default. The workers answer with
progress lines on stdout (:func:`progress_line`, true global counts from one rank) and, at the
end, ``result.json`` (:func:`write_result`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path

from sppo_nemo.backends.megatron.layout import Layout
from sppo_nemo.schema.config import TrainerConfig
from sppo_nemo.schema.protocols import TrainResult

JOB_FILE = "job.json"
RESULT_FILE = "result.json"
PROGRESS = "@@sppo "  # a worker's stdout line that carries progress, not log text
STOPPED = "@@sppo-stopped "  # rank 0's last line when a signal stopped training: "<signal>\t<what was kept>"


@dataclass(frozen=True)
class Job:
    policy_dir: Path  # π_t, a local HF checkpoint directory (safetensors)
    rows_file: Path  # the build stage's rows.jsonl (sppo_nemo.formats.rows)
    output_dir: Path  # π_{t+1} goes here, as an HF checkpoint
    trainer: TrainerConfig  # the recipe's trainer section, its megatron section inside
    layout: Layout  # TP, PP, DP, world size and grad_accum derived from it
    loss_type: str
    eta: float
    seed: int
    system_prompt: str | None
    # the train stage's partial folder, where step checkpoints go (trainer.checkpoint_every); None: none
    state_dir: Path | None


class JobFileError(ValueError):
    """job.json does not hold exactly a Job's fields (a controller and worker of different versions)."""


def write_job(job_dir: Path, job: Job) -> Path:
    path = Path(job_dir) / JOB_FILE
    path.write_text(json.dumps(dataclasses.asdict(job), indent=2, default=str))
    return path


def read_job(job_dir: Path) -> Job:
    path = Path(job_dir) / JOB_FILE
    return _typed(Job, json.loads(path.read_text()), str(path))


def _typed(cls, data, where: str):
    """``cls`` (a dataclass) from its JSON object, nested dataclasses and paths included."""
    if not isinstance(data, dict):
        raise JobFileError(f"{where}: expected an object for {cls.__name__}, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown, missing = sorted(set(data) - set(names)), [n for n in names if n not in data]
    if unknown or missing:
        raise JobFileError(f"{where}: {cls.__name__} fields unknown {unknown}, missing {missing}")
    values = {}
    for name in names:
        tp, v = hints[name], data[name]
        if dataclasses.is_dataclass(tp):
            v = _typed(tp, v, f"{where}.{name}")
        elif tp is Path or (tp == (Path | None) and v is not None):
            v = Path(v)
        values[name] = v
    return cls(**values)


def progress_line(kind: str, n: int) -> str:
    """A worker's progress report: ``n`` more rows done in the reference pass ("ref") or training ("train")."""
    return PROGRESS + json.dumps({"kind": kind, "n": n})


def parse_progress(line: str) -> tuple[str, int, str] | None:
    """(kind, n, the rest of the line) of a progress line, None for any other line. The rest is
    another process's output that landed on the same line (the workers share one pipe), if any."""
    if not line.startswith(PROGRESS):
        return None
    try:
        msg, end = json.JSONDecoder().raw_decode(line, len(PROGRESS))
        return msg["kind"], int(msg["n"]), line[end:].strip("\n")
    except (ValueError, KeyError, TypeError):
        return None  # a torn report: kept as log text


def parse_stopped(lines) -> tuple[str, str] | None:
    """(signal, what was kept) from rank 0's :data:`STOPPED` line among ``lines``, or None."""
    for line in lines:
        _, found, rest = line.partition(STOPPED)
        if found and "\t" in rest:
            name, kept = rest.split("\t", 1)
            return name.strip(), kept.strip()
    return None


def write_result(job_dir: Path, result: TrainResult) -> None:
    tmp = Path(job_dir) / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps({"metrics": result.metrics, "summary": result.summary}))
    tmp.replace(Path(job_dir) / RESULT_FILE)


def read_result(job_dir: Path) -> TrainResult | None:
    """The workers' result, None when they wrote none."""
    path = Path(job_dir) / RESULT_FILE
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    return TrainResult(metrics=d["metrics"], summary=d["summary"])
