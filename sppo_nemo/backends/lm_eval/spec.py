"""``evaluation.lm_eval``: the keys read, checked and fingerprinted; nothing here imports lm-eval.

The spec enters the evaluate stage's fingerprint only when lm-eval is on, so runs from before the
key existed stay fresh. What changes lm-eval's numbers is in it: the tasks with their resolved
few-shot counts, the limit, the batch size (padding changes log-likelihoods in the last digits),
the chat template, the model backend and the precision it loads the model in, and the content of
the include folder's task files (an edited task YAML makes the stage stale, as an edited prompt file
does). Tensor parallel, memory and the interpreter are not in it: they move the work, not the numbers.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from sppo_nemo.schema.config import LEADERBOARD_FEWSHOT, LmEvalConfig, Recipe

KEY = "evaluation.lm_eval"
# The number the report shows per task: the Open LLM Leaderboard's metric for its tasks; for any
# other task the first metric lm-eval reports.
HEADLINE = {"arc_challenge": "acc_norm,none", "hellaswag": "acc_norm,none", "truthfulqa_mc2": "acc,none",
            "winogrande": "acc,none", "gsm8k": "exact_match,strict-match", "mmlu": "acc,none"}
NOT_METRICS = {"alias", "name", "sample_len", "sample_count"}


@dataclass(frozen=True)
class LmEvalSpec:
    tasks: tuple[tuple[str, int | None], ...]  # (task, few-shot count; None: the task's own default)
    limit: float | None
    batch_size: int
    include_path: str | None
    chat_template: bool
    precision: str  # hf: generation.precision, resolved (the policy is loaded as it samples); vllm: its dtype
    threads: int | None
    backend: str = "hf"
    engine: VllmEngine | None = None  # backend vllm

    def fingerprint(self) -> dict:
        return {"tasks": [t for t, _ in self.tasks], "num_fewshot": {t: n for t, n in self.tasks},
                "limit": self.limit, "batch_size": self.batch_size,
                "include_path": _folder_digest(self.include_path), "chat_template": self.chat_template,
                "backend": self.backend, "precision": self.precision}


@dataclass(frozen=True)
class VllmEngine:
    """lm-eval's vLLM model: generation.vllm's interpreter and engine keys."""

    python: str
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int | None
    enforce_eager: bool
    kv_cache_gib: float | None  # None: vLLM sizes it on a GPU; the worker gives a CPU engine 2 GiB


def lm_eval_spec(r: Recipe) -> LmEvalSpec | None:
    c = r.evaluation.lm_eval
    if not c.enabled:
        return None
    counts = dict(LEADERBOARD_FEWSHOT, **dict(_fewshot_items(c)[0]))
    include = str(Path(c.include_path).resolve()) if c.include_path else None  # the worker starts in it
    v = r.generation.vllm
    engine = (VllmEngine(v.python or sys.executable, v.tensor_parallel, v.gpu_memory_utilization, v.max_model_len,
                         v.enforce_eager, v.kv_cache_gib) if c.backend == "vllm" else None)
    precision = v.dtype if c.backend == "vllm" else r.generation.precision
    return LmEvalSpec(tuple((t, counts.get(t)) for t in c.tasks), c.limit, c.batch_size, include,
                      c.chat_template, precision, r.threads, c.backend, engine)


def lm_eval_limit(limit: float | None) -> int | float | None:
    """lm-eval's ``limit``: a count of documents as an int, a fraction as a float."""
    return int(limit) if limit is not None and limit >= 1 else limit


def headline(task: str, results: dict) -> tuple[str, float | None, float | None] | None:
    """(metric, value, standard error) of a task's lm-eval results; the error None where lm-eval has
    none ("N/A"), and None altogether where the task reported no number."""
    names = [k for k, v in results.items() if k not in NOT_METRICS and "_stderr," not in k
             and isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not names:
        return None
    metric = HEADLINE.get(task) if HEADLINE.get(task) in names else names[0]
    base, _, filt = metric.partition(",")
    err = results.get(f"{base}_stderr,{filt}")
    return metric, float(results[metric]), float(err) if isinstance(err, (int, float)) else None


def check(r: Recipe, base_dir: Path) -> list[str]:
    c: LmEvalConfig = r.evaluation.lm_eval
    if not c.enabled:
        return []
    p = []
    if not r.evaluation.enabled:
        p.append(f"{KEY}.enabled: true, but evaluation.enabled is false: no evaluate stage runs lm-eval; set "
                 f"evaluation.enabled=true or {KEY}.enabled=false")
    if not c.tasks:
        p.append(f"{KEY}.tasks: empty; name lm-eval tasks (the default is the Open LLM Leaderboard's six)")
    dupes = sorted({t for t in c.tasks if c.tasks.count(t) > 1})
    if dupes:
        p.append(f"{KEY}.tasks: {', '.join(dupes)} named twice; name each task once")
    items, problems = _fewshot_items(c)
    p += problems
    stray = [t for t, _ in items if t not in c.tasks]
    if stray:
        p.append(f"{KEY}.num_fewshot: {', '.join(stray)} not in {KEY}.tasks; add the task or drop its count")
    if c.limit is not None and not (0 < c.limit < 1 or (c.limit >= 1 and float(c.limit).is_integer())):
        p.append(f"{KEY}.limit: {c.limit}; give a whole number of documents (≥ 1), a fraction in (0, 1), "
                 f"or null for all")
    if c.batch_size < 1:
        p.append(f"{KEY}.batch_size: {c.batch_size}; must be at least 1")
    if c.include_path is not None and not Path(c.include_path).is_dir():
        p.append(f"{KEY}.include_path: {c.include_path} is not a folder; give the folder holding your task YAMLs "
                 f"(relative paths are from the recipe's own folder)")
    return p


def _fewshot_items(c: LmEvalConfig) -> tuple[list[tuple[str, int]], list[str]]:
    """``task=N`` items, parsed, and the problems of those that are not."""
    items, problems = [], []
    for raw in c.num_fewshot:
        task, eq, n = raw.partition("=")
        if not eq or not task.strip() or not n.strip().isdigit():
            problems.append(f"{KEY}.num_fewshot: {raw!r}; write each item as task=N with N ≥ 0, "
                            f"e.g. arc_challenge=25")
        else:
            items.append((task.strip(), int(n)))
    return items, problems


def _folder_digest(folder: str | None) -> str | None:
    if folder is None or not Path(folder).is_dir():
        return folder
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]
