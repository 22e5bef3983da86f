"""What ``evaluation.lm_eval`` adds to ``--estimate``: lm-eval's forward passes on each evaluated policy.

lm-eval's ``hf`` model runs on one GPU (the worker does not shard it), so its time is charged at one
GPU's rate whatever the recipe's GPU count; its ``vllm`` model on one engine of
generation.vllm.tensor_parallel GPUs, generating at vLLM's rate. Per task the work is documents × requests per document
× tokens per request, every request a forward of its few-shot context and continuation (2·N FLOPs a
token; lm-eval's shared-context cache, which can save some of it, is not counted); generation tasks
add their generated tokens at a fraction of vLLM's decode rate (transformers' ``generate``, batched).

The table's documents are the sizes of the evaluated splits; requests per document are the answer
options; tokens per request are approximate (the leaderboard's few-shot counts with a Llama-family
tokenizer; not measured here). A task outside the table is named as not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from sppo_nemo.schema.config import LEADERBOARD_FEWSHOT, LmEvalConfig


@dataclass(frozen=True)
class TaskWork:
    documents: int  # the evaluated split
    requests: float  # per document: the answer options (1 for a generation task)
    tokens: float  # per request, at the leaderboard's few-shot count: context + continuation
    generated: float = 0.0  # per document, generation tasks only


# Documents: ARC-Challenge test 1,172; TruthfulQA validation 817 (mc2: 7.9 options on average);
# WinoGrande (xl) validation 1,267; GSM8k test 1,319 (about 130 generated tokens of a 256 cap);
# HellaSwag validation 10,042; MMLU test 14,042 over 57 subjects.
TASKS = {
    "arc_challenge": TaskWork(1172, 4.0, 1050.0),  # 25-shot, ~40 tokens a shot
    "truthfulqa_mc2": TaskWork(817, 7.9, 300.0),  # 0-shot behind a fixed six-question preamble
    "winogrande": TaskWork(1267, 2.0, 200.0),  # 5-shot, ~30 tokens a shot
    "gsm8k": TaskWork(1319, 1.0, 900.0, generated=130.0),  # 5-shot, ~150 tokens a shot
    "hellaswag": TaskWork(10042, 4.0, 1100.0),  # 10-shot, ~100 tokens a shot
    "mmlu": TaskWork(14042, 4.0, 600.0),  # 5-shot, ~100 tokens a shot
}
# Assumed, not measured: transformers' batched generate at a tenth of vLLM's per-GPU decode rate.
HF_GENERATE_FRACTION = 0.1
# Assumed, not measured: lm-eval's batched forwards at 35% of one GPU's peak (as the judge's).
LM_EVAL_MFU = 0.35


@dataclass(frozen=True)
class LmEvalWork:
    flops: float
    generated: float
    tasks: tuple[str, ...]  # counted
    uncounted: tuple[str, ...]  # outside the table, or at a few-shot count the table is not for


def work(c: LmEvalConfig, n_params: int) -> LmEvalWork:
    """lm-eval's work on one policy."""
    counts = {t: int(n) for t, _, n in (item.partition("=") for item in c.num_fewshot) if n.isdigit()}
    flops = generated = 0.0
    counted, uncounted = [], []
    for task in c.tasks:
        w = TASKS.get(task)
        if w is None or counts.get(task, LEADERBOARD_FEWSHOT.get(task)) != LEADERBOARD_FEWSHOT.get(task):
            uncounted.append(task)
            continue
        docs = w.documents if c.limit is None else min(w.documents, c.limit if c.limit >= 1 else c.limit * w.documents)
        flops += 2 * n_params * docs * w.requests * w.tokens
        generated += docs * w.generated
        counted.append(task)
    return LmEvalWork(flops, generated, tuple(counted), tuple(uncounted))


def seconds(w: LmEvalWork, peak_tflops: float, decode_tokens_per_s: float, backend: str = "hf", gpus: int = 1) -> float:
    """The forwards at :data:`LM_EVAL_MFU` of the peak of ``gpus`` GPUs (hf: one), generation at vLLM's
    per-GPU decode rate for this model × ``gpus`` (hf: :data:`HF_GENERATE_FRACTION` of one GPU's)."""
    if backend == "hf":
        gpus, fraction = 1, HF_GENERATE_FRACTION
    else:
        fraction = 1.0
    return (w.flops / (peak_tflops * 1e12 * LM_EVAL_MFU * gpus)
            + w.generated / (decode_tokens_per_s * gpus * fraction))
