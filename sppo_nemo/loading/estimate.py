"""`sppo-run RECIPE --estimate`: what a run costs on GPUs, printed before it is submitted.

The work of each stage of one iteration (Algorithm 1), counted from the recipe alone (neither the
prompts nor the weights need be readable):
- generate: data.split_size prompts × K responses × response tokens;
- annotate: K·(K−1) ordered PairRM comparisons per prompt (the full K×K matrix); build: CPU, seconds;
- train: rows per prompt (selection=all: K point rows; best_worst: 2 point rows for sppo, 1 pair row
  of 2 sequences for dpo/ipo/sppo_pair) × sequence tokens; 6·N FLOPs per token and epoch trained
  (forward and backward) plus 2·N per token for π_t's reference pass;
- evaluate: held-out prompts × evaluation.samples_per_prompt from π_{t+1} (+ evaluation.best_of per
  prompt), KL scoring under π_{t+1} and π_1 (2·N per token each), 2 opponents × samples compared in
  two orders (best-of-n adds n·(n−1) per prompt to rank, 2 per π_1 sample to judge the kept one);
  iter_00/evaluate samples π_1 once per run;
- evaluation.prompts (e.g. AlpacaEval's instructions): one sample each from every evaluated policy,
  counted from the file when it is readable here, else AlpacaEval's 805 assumed;
- AlpacaEval's judge (evaluation.alpaca_eval): one request per judged instruction, billed by an
  endpoint or served by vLLM (:mod:`sppo_nemo.loading.alpaca_eval_cost`);
- lm-eval (evaluation.lm_eval): its tasks' forwards on one GPU, on every π_{t+1} and once on π_1
  (:mod:`sppo_nemo.loading.lm_eval_cost`).
Tokens per sample: the prompt is trainer.max_prompt_length/2 (no run records a prompt length); the
response sampling.max_new_tokens, an upper bound, unless the run directory has a finished
iter_01/generate (iter_00/evaluate for evaluation), whose manifest's result holds the measured mean.
N is counted from the policy's shape (hub.policy_config) by :func:`param_count`. Time = work /
throughput, with the constants of :data:`GPUS` (each names its source; ``benchmarks/`` may measure
them). Not counted: engine and model start-up, checkpoint export, queue waits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sppo_nemo.formats.artifacts import Stage
from sppo_nemo.schema.config import Recipe, uses_games
from sppo_nemo.schema.errors import UsageError, UserError
from sppo_nemo.formats.hub import config_source, policy_config
from sppo_nemo.loading import alpaca_eval_cost, lm_eval_cost

# --------------------------------------------------------------------------- the cost model


@dataclass(frozen=True)
class GpuModel:
    name: str
    peak_tflops: float  # dense bf16 (no sparsity), per GPU
    train_mfu: float  # megatron training: model FLOPs / peak
    decode_tokens_per_s: float  # vLLM generated tokens/s on one GPU for a DECODE_REF_PARAMS model
    judge_mfu: float  # PairRM forward: model FLOPs / peak


# vLLM, Llama-3.1-8B-Instruct, bf16, one H100 80GB: 5,333 output tokens/s at saturation (vLLM 0.23.0;
# runinfra.ai, "vLLM vs SGLang vs TensorRT-LLM" benchmark, 2026; cf. 6,583 output tok/s for the same
# model on ShareGPT, 1000 prompts, in vllm-project/vllm PR #18566). Output tokens/s of a serving
# benchmark: the prompts' prefill is inside it, so generation charges no prompt tokens.
DECODE_TOKENS_PER_S_H100 = 5333.0
DECODE_REF_PARAMS = 8.03e9  # Llama-3.1-8B; another model's rate scales by DECODE_REF_PARAMS / N
# Decoding a 7-8B model is memory-bound: A100 and H200 scale the H100 figure by HBM bandwidth
# (datasheets: H100 SXM 3.35 TB/s, A100 80GB SXM 2.039 TB/s, H200 SXM 4.8 TB/s).
HBM_TB_PER_S = {"h100": 3.35, "a100": 2.039, "h200": 4.8}
# PairRM (llm-blender/PairRM, "PairRM-0.4B" in the paper): a DeBERTa-v3-large backbone, ≈ 0.4e9
# parameters; a forward on one ordered pair costs 2·params·tokens FLOPs (disentangled attention left out).
PAIRRM_PARAMS = 0.4e9
# Assumed, not measured: PairRM's bf16 forward at 35% of peak (benchmarks/bench_pairrm.py prints the
# achieved TFLOP/s on a CUDA device; replace this once measured).
JUDGE_MFU = 0.35

GPUS = {
    # peak: NVIDIA H100 SXM datasheet, 989 TFLOP/s bf16 dense (1,979 with sparsity). MFU: Megatron-LM
    # README, "up to 47% Model FLOP Utilization (MFU) on H100 clusters" (GPT models 2B–462B, seq 4096).
    "h100": GpuModel("H100 SXM", 989.0, 0.47, DECODE_TOKENS_PER_S_H100, JUDGE_MFU),
    # peak: NVIDIA A100 80GB datasheet, 312 TFLOP/s bf16 dense. MFU: Narayanan et al., SC21 (Megatron-LM),
    # 163 TFLOP/s per A100 = 52% of peak (1T-parameter GPT, 3072 GPUs).
    "a100": GpuModel("A100 80GB", 312.0, 0.52,
                     DECODE_TOKENS_PER_S_H100 * HBM_TB_PER_S["a100"] / HBM_TB_PER_S["h100"], JUDGE_MFU),
    # peak: NVIDIA H200 datasheet, 989 TFLOP/s bf16 dense (the H100's compute). MFU: as H100 (no
    # separate published Megatron figure).
    "h200": GpuModel("H200 SXM", 989.0, 0.47,
                     DECODE_TOKENS_PER_S_H100 * HBM_TB_PER_S["h200"] / HBM_TB_PER_S["h100"], JUDGE_MFU),
}
DEFAULT_GPU = "h100"
DEFAULT_GPUS = 8  # one node, when the recipe states no megatron layout
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


class ShapeUnknown(UserError):
    """The policy's shape (hence N) cannot be read offline."""


# --------------------------------------------------------------------------- the policy's size


def param_count(cfg: dict) -> int:
    """Parameters of a Llama/Mistral-shaped decoder from its config.json: the embedding V·H; per
    layer the attention (Q and O: H·(heads·d), K and V: H·(kv_heads·d), d = head_dim or H/heads:
    grouped-query attention), the SwiGLU MLP 3·H·I and two RMSNorms 2·H; the final norm H; the head
    V·H unless tied. Raises KeyError naming the missing keys.

    Mistral-7B: V 32000, H 4096, 32 layers, 32/8 heads, I 14336: 2·131,072,000 + 32·218,112,000 + 4096
    = 7,241,732,096."""
    missing = [k for k in SHAPE_KEYS if not isinstance(cfg.get(k), int)]
    if missing:
        raise KeyError(", ".join(missing))
    v, h, layers, heads = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    d = cfg.get("head_dim") or h // heads
    attention = 2 * h * heads * d + 2 * h * kv * d
    per_layer = attention + 3 * h * cfg["intermediate_size"] + 2 * h
    head = 0 if cfg.get("tie_word_embeddings", False) else v * h
    return v * h + layers * per_layer + h + head


def policy_params(r: Recipe, base_dir: Path) -> tuple[int, str]:
    """N of the recipe's policy and where its shape came from; ShapeUnknown with the fix if unknown."""
    return model_params(r.policy.model, "policy.model", base_dir)


def model_params(model: str, key: str, base_dir: Path) -> tuple[int, str]:
    """N of the model that recipe key ``key`` names, and where its shape came from."""
    cfg = policy_config(model, base_dir)
    source = config_source(model, base_dir)
    fix = (f"point {key} at a local checkpoint directory with its config.json, or download the snapshot "
           f"first (huggingface-cli download {model}) so that its cached config.json is read")
    if cfg is None:
        raise ShapeUnknown(f"{key}: cannot estimate: the shape of {model} is unknown ({source}); {fix}")
    try:
        return param_count(cfg), source
    except KeyError as exc:
        raise ShapeUnknown(f"{key}: cannot estimate: {source} lacks {exc.args[0]} (a Llama-style "
                           f"decoder's shape); {fix}") from None


# --------------------------------------------------------------------------- the work


@dataclass(frozen=True)
class Workload:
    """What one iteration handles, from the recipe (and measured lengths where the run has them)."""

    prompts: int
    K: int
    prompt_tokens: float
    response_tokens: float
    response_source: str
    eval_prompts: int  # 0 with evaluation off
    eval_samples: int  # evaluation.samples_per_prompt
    best_of: int  # 0: off
    eval_response_tokens: float
    eval_response_source: str
    rows_per_prompt: int
    sequences_per_row: int
    epochs: int
    max_length: int
    prompt_file: tuple[int, float, str] | None  # evaluation.prompts: (instructions, mean tokens, where from)


def measured_mean_tokens(run_dir: Path, label: str) -> float | None:
    """The mean response tokens a finished stage's manifest records (result.mean_tokens), or None."""
    stage = Stage(run_dir / label)
    if not stage.done():
        return None
    try:
        value = (stage.manifest().get("result") or {}).get("mean_tokens")
    except UserError:  # an unreadable manifest: no measured figure
        return None
    return float(value) if isinstance(value, (int, float)) else None


def workload(r: Recipe, run_dir: Path) -> Workload:
    gen = measured_mean_tokens(run_dir, "iter_01/generate")
    ev = measured_mean_tokens(run_dir, "iter_00/evaluate")
    eval_max = r.evaluation.max_new_tokens or r.sampling.max_new_tokens
    pairs = r.loss.type in ("dpo", "ipo", "sppo_pair")
    rows = r.K if r.loss.selection == "all" else (1 if pairs else 2)
    return Workload(
        prompts=r.data.split_size, K=r.K, prompt_tokens=r.trainer.max_prompt_length / 2,
        response_tokens=gen if gen is not None else r.sampling.max_new_tokens,
        response_source=(f"measured mean of {run_dir}/iter_01/generate" if gen is not None
                         else "sampling.max_new_tokens, an upper bound"),
        eval_prompts=r.data.eval_size if r.evaluation.enabled else 0, eval_samples=r.evaluation.samples_per_prompt,
        best_of=r.evaluation.best_of or 0,
        eval_response_tokens=ev if ev is not None else eval_max,
        eval_response_source=(f"measured mean of {run_dir}/iter_00/evaluate" if ev is not None
                              else "evaluation.max_new_tokens (or sampling's), an upper bound"),
        rows_per_prompt=rows, sequences_per_row=2 if pairs else 1, epochs=r.trainer.epochs,
        max_length=r.trainer.max_length,
        prompt_file=(alpaca_eval_cost.prompt_file_size(r) if r.evaluation.enabled and r.evaluation.prompts
                     else None))


def pair_tokens(prompt: float, response: float) -> float:
    """Tokens of one PairRM sequence (source + two candidates) under llm-blender's truncation."""
    from sppo_nemo.backends.pairrm.inputs import SOURCE_MAX_LENGTH, candidate_budget

    source = min(prompt, SOURCE_MAX_LENGTH)
    return source + 2 * min(response, candidate_budget(int(source)))


# --------------------------------------------------------------------------- work → hours


@dataclass(frozen=True)
class StageCost:
    stage: str
    generated: float = 0.0  # tokens
    comparisons: float = 0.0  # ordered PairRM pairs
    trained: float = 0.0  # sequence tokens per epoch
    flops: float = 0.0  # judge + training + scoring FLOPs (generation is timed by tokens/s)
    throughput: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Rates:  # aggregate rates of the GPUs a stage uses
    decode: float  # generated tokens/s over all engines
    judge: float  # FLOP/s
    train: float  # FLOP/s
    engines: int
    tp: int


def rates(n_params: int, g: GpuModel, gpus: int, tp: int) -> Rates:
    engines = gpus // tp
    if engines < 1:
        raise UsageError(f"--gpus {gpus} is fewer than one vLLM engine's generation.vllm.tensor_parallel={tp}")
    per_gpu = g.decode_tokens_per_s * DECODE_REF_PARAMS / n_params
    peak = g.peak_tflops * 1e12
    return Rates(per_gpu * engines * tp, peak * g.judge_mfu * gpus, peak * g.train_mfu * gpus, engines, tp)


def _judge(w: Workload, response: float, comparisons: float, rt: Rates) -> tuple[float, float]:
    flops = comparisons * 2 * PAIRRM_PARAMS * pair_tokens(w.prompt_tokens, response)
    return flops, flops / rt.judge


def _evaluate(w: Workload, n: int, rt: Rates, base: bool) -> StageCost:
    """iter_t/evaluate (t ≥ 1), or iter_00/evaluate (``base``: π_1 sampled once, no KL, no opponents)."""
    h, s, b, resp = w.eval_prompts, w.eval_samples, w.best_of, w.eval_response_tokens
    generated = (h * (s + b) + (w.prompt_file[0] if w.prompt_file else 0)) * resp
    comparisons = h * (b * (b - 1) + 2 * s) if b else 0  # best-of-n: rank the n, judge the kept one
    scoring = 0.0 if base else 2 * 2 * n * h * s * (w.prompt_tokens + resp)  # π_{t+1} and π_1 score
    if not base:
        comparisons += 2 * h * s * 2  # against π_1 and π_t, two orders each
    judge_flops, judge_s = _judge(w, resp, comparisons, rt)
    seconds = generated / rt.decode + judge_s + scoring / rt.train
    return StageCost("iter_00/evaluate" if base else "evaluate", generated=generated, comparisons=comparisons,
                     flops=judge_flops + scoring, throughput="as generate, annotate and train", seconds=seconds)


def iteration(w: Workload, n: int, g: GpuModel, gpus: int, rt: Rates) -> list[StageCost]:
    """The stages of one iteration t ≥ 1 and their hours."""
    generated = w.prompts * w.K * w.response_tokens
    gen = StageCost("generate", generated=generated, seconds=generated / rt.decode,
                    throughput=f"vLLM {rt.decode / (rt.engines * rt.tp):,.0f} tok/s per GPU × {rt.engines * rt.tp} "
                               f"GPUs ({rt.engines} engine(s) of TP {rt.tp})")
    comparisons = w.prompts * w.K * (w.K - 1)
    judge_flops, judge_s = _judge(w, w.response_tokens, comparisons, rt)
    ann = StageCost("annotate", comparisons=comparisons, flops=judge_flops, seconds=judge_s,
                    throughput=f"PairRM {2 * PAIRRM_PARAMS * pair_tokens(w.prompt_tokens, w.response_tokens):.3g} "
                               f"FLOP/pair at {g.judge_mfu:.0%} of {g.peak_tflops:g} TFLOP/s × {gpus}")
    build = StageCost("build", throughput="CPU, seconds")
    seq = min(w.prompt_tokens + w.response_tokens, w.max_length)
    trained = w.prompts * w.rows_per_prompt * w.sequences_per_row * seq
    flops = 6 * n * trained * w.epochs + 2 * n * trained
    train = StageCost("train", trained=trained, flops=flops, seconds=flops / rt.train,
                      throughput=f"megatron {g.train_mfu:.0%} MFU of {g.peak_tflops:g} TFLOP/s × {gpus}")
    stages = [gen, ann, build, train]
    if w.eval_prompts:
        stages.append(_evaluate(w, n, rt, base=False))
    return stages


@dataclass(frozen=True)
class Estimate:
    name: str
    T: int
    model: str
    n_params: int
    shape_source: str
    gpu: GpuModel
    gpu_kind: str
    gpus: int
    workload: Workload
    stages: list[StageCost]  # one iteration
    base_eval: StageCost | None  # iter_00/evaluate
    lm_eval: StageCost | None = None  # evaluation.lm_eval on one policy: in ``stages`` too, and once more on π_1
    lm_eval_uncounted: tuple[str, ...] = ()
    judge: Judge | None = None  # evaluation.alpaca_eval on one policy: its stage is in ``stages`` too

    @property
    def iteration_seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def once(self) -> list[tuple[str, StageCost]]:
        """What iter_00/evaluate adds once per run, labelled for the table."""
        rows = []
        if self.base_eval is not None:
            rows.append(("iter_00/evaluate (π_1 on the held-out prompts, once)", self.base_eval))
        if self.judge is not None and self.judge.on_base:
            rows.append(("iter_00/evaluate: AlpacaEval judge on π_1 against the reference file (once)",
                         self.judge.stage))
        if self.lm_eval is not None:
            rows.append(("iter_00/evaluate: lm-eval on π_1 (once)", self.lm_eval))
        return rows

    @property
    def run_seconds(self) -> float:
        return self.T * self.iteration_seconds + sum(s.seconds for _, s in self.once)


@dataclass(frozen=True)
class Judge:
    """AlpacaEval's judge on one policy (sppo_nemo/loading/alpaca_eval_cost.py)."""

    stage: StageCost
    work: alpaca_eval_cost.JudgeWork
    dollars: float | None  # an endpoint's bill per policy, where its price is known
    note: str  # where an endpoint's time (and price) come from; empty for a local judge
    on_base: bool  # a reference file: π_1 is judged too, once

    @property
    def policies(self) -> int:
        return 1 + self.on_base  # per iteration, plus π_1 once


def default_gpus(r: Recipe) -> int:
    """The recipe's GPUs: the megatron layout's world size, else one 8-GPU node."""
    if r.trainer.backend == "megatron":
        from sppo_nemo.backends.megatron.layout import megatron_layout  # plain Python: shapes and counts

        return megatron_layout(r.trainer).world
    return DEFAULT_GPUS


def estimate(r: Recipe, run_dir: Path, gpus: int | None = None, gpu: str | None = None,
             table: dict[str, GpuModel] = GPUS, base_dir: Path = Path(".")) -> Estimate:
    if uses_games(r):
        raise UsageError("--estimate costs the language-model path; the game backends run in seconds on a CPU")
    kind = gpu or DEFAULT_GPU
    if kind not in table:
        raise UsageError(f"--gpu {kind}: unknown; choose one of {', '.join(sorted(table))}")
    gpus = default_gpus(r) if gpus is None else gpus
    if gpus < 1:
        raise UsageError(f"--gpus {gpus}: must be at least 1")
    n, source = policy_params(r, base_dir)
    g = table[kind]
    w = workload(r, Path(run_dir))
    rt = rates(n, g, gpus, r.generation.vllm.tensor_parallel)
    base = _evaluate(w, n, rt, base=True) if w.eval_prompts else None
    stages = iteration(w, n, g, gpus, rt)
    judge = _alpaca_eval(r, w, g, rt, base_dir)
    lm, uncounted = _lm_eval(r, n, g, rt)
    extra = ([judge.stage] if judge else []) + ([lm] if lm else [])
    return Estimate(r.name, r.T, r.policy.model, n, source, g, kind, gpus, w, stages + extra, base, lm, uncounted,
                    judge)


def _alpaca_eval(r: Recipe, w: Workload, g: GpuModel, rt: Rates, base_dir: Path) -> Judge | None:
    c = r.evaluation.alpaca_eval
    if not (r.evaluation.enabled and c.enabled):
        return None
    instructions = w.prompt_file or (w.eval_prompts, w.prompt_tokens,
                                     f"the {w.eval_prompts:,} held-out prompts (model_outputs.json)")
    reference = None if c.reference == "base" else alpaca_eval_cost.read_reference_tokens(c.reference)
    work = alpaca_eval_cost.work(c, instructions, w.eval_response_tokens, reference)
    if c.local_model:
        judge_n, _ = model_params(c.local_model, "evaluation.alpaca_eval.local_model", base_dir)
        flops = alpaca_eval_cost.local_flops(work, judge_n)
        peak = g.peak_tflops * 1e12 * g.judge_mfu * rt.tp
        stage = StageCost("evaluate: AlpacaEval judge", comparisons=work.requests, flops=flops, seconds=flops / peak,
                          throughput=f"local judge N = {judge_n / 1e9:.2g}B on vLLM (TP {rt.tp}), prefill at "
                                     f"{g.judge_mfu:.0%} of {g.peak_tflops:g} TFLOP/s (assumed)")
        dollars, note = None, ""
    else:
        dollars, seconds, note = alpaca_eval_cost.endpoint_cost(c, work)
        stage = StageCost("evaluate: AlpacaEval judge", comparisons=work.requests, seconds=seconds,
                          throughput=f"{c.model} at {c.endpoint}, {alpaca_eval_cost.ENDPOINT_SECONDS_PER_1000:g} s "
                                     f"per 1,000 requests (AlpacaEval's measured)")
    return Judge(stage, work, dollars, note, on_base=c.reference != "base")


def _lm_eval(r: Recipe, n: int, g: GpuModel, rt: Rates) -> tuple[StageCost | None, tuple[str, ...]]:
    if not (r.evaluation.enabled and r.evaluation.lm_eval.enabled):
        return None, ()
    c = r.evaluation.lm_eval
    work = lm_eval_cost.work(c, n)
    gpus = rt.tp if c.backend == "vllm" else 1
    seconds = lm_eval_cost.seconds(work, g.peak_tflops, rt.decode / (rt.engines * rt.tp), c.backend, gpus)
    return StageCost("evaluate: lm-eval", generated=work.generated, flops=work.flops, seconds=seconds,
                     throughput=f"lm-eval {c.backend} on {gpus} GPU(s), {lm_eval_cost.LM_EVAL_MFU:.0%} of "
                                f"{g.peak_tflops:g} TFLOP/s (assumed)"), work.uncounted


# --------------------------------------------------------------------------- the table


def _num(x: float) -> str:
    return "" if not x else f"{x:,.0f}" if x < 1e9 else f"{x:.3g}"


def _hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:.2f} h" if h >= 0.01 else f"{h:.2g} h"


def markdown(e: Estimate) -> str:
    w, g = e.workload, e.gpu
    it = e.iteration_seconds
    lines = [
        f"# Cost estimate: {e.name}",
        "",
        f"{e.T} iteration(s) of {w.prompts:,} prompts, K = {w.K}, on {e.gpus} × {g.name} (--gpu {e.gpu_kind}).",
        f"Policy {e.model}: N = {e.n_params:,} parameters (shape: {e.shape_source}).",
        "",
        "Tokens per sample:",
        f"- prompt: {w.prompt_tokens:g} (assumed: trainer.max_prompt_length/2; no measured figure is kept)",
        f"- response: {w.response_tokens:g} ({w.response_source})",
        f"- training sequence: min(prompt + response, trainer.max_length = {w.max_length}); "
        f"{w.rows_per_prompt} row(s) of {w.sequences_per_row} sequence(s) per prompt, {w.epochs} epoch(s); each "
        f"counts its prompt: under Transformer Engine no prompt is shared (trainer.pack_prompts: SDPA, local only)",
    ]
    if w.eval_prompts:
        lines.append(f"- evaluation: {w.eval_prompts} held-out prompts × {w.eval_samples} sample(s)"
                     + (f" + best-of-{w.best_of}" if w.best_of else "")
                     + f", response {w.eval_response_tokens:g} ({w.eval_response_source})")
    lines += [
        "",
        "## One iteration (each of the T iterations is the same work)",
        "",
        "| stage | generated tokens | ordered comparisons | trained tokens/epoch | FLOPs | assumed throughput | hours |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for s in e.stages:
        lines.append(f"| {s.stage} | {_num(s.generated)} | {_num(s.comparisons)} | {_num(s.trained)} | "
                     f"{'' if not s.flops else f'{s.flops:.3g}'} | {s.throughput} | {_hours(s.seconds)} |")
    lines.append(f"| **iteration** | {_num(sum(s.generated for s in e.stages))} | "
                 f"{_num(sum(s.comparisons for s in e.stages))} | {_num(sum(s.trained for s in e.stages))} | "
                 f"{sum(s.flops for s in e.stages):.3g} | | **{_hours(it)}** |")
    lines += ["", "## The run", "", "| | hours |", "|---|---:|"]
    lines += [f"| {label} | {_hours(s.seconds)} |" for label, s in e.once]
    lines += [f"| {e.T} iteration(s) × {_hours(it)} | {_hours(e.T * it)} |",
              f"| **total** | **{_hours(e.run_seconds)}** |", ""]
    if e.judge is not None:
        j = e.judge
        lines += alpaca_eval_cost.describe(j.work, j.dollars, j.note, e.T + j.on_base)
    if e.lm_eval_uncounted:
        lines.append(f"lm-eval tasks not counted (no size known here, or a few-shot count other than the "
                     f"leaderboard's): {', '.join(e.lm_eval_uncounted)}.")
    top = max(e.stages, key=lambda s: s.seconds)
    share = top.seconds / it if it else 0.0
    if it > 3600:
        lines.append(f"Over an hour per iteration: the bottleneck is {top.stage} ({share:.0%} of the iteration).")
    else:
        lines.append(f"Within an hour per iteration; the largest stage is {top.stage} ({share:.0%}).")
    lines += [
        "",
        f"Cost model (sppo_nemo/loading/estimate.py, {g.name}): peak {g.peak_tflops:g} TFLOP/s bf16 dense per GPU; "
        f"megatron at {g.train_mfu:.0%} MFU; vLLM {g.decode_tokens_per_s:,.0f} generated tok/s per GPU for an "
        f"{DECODE_REF_PARAMS / 1e9:.2f}B model, scaled by parameter count and linearly by tensor parallel; "
        f"PairRM {PAIRRM_PARAMS / 1e9:.1f}B at {g.judge_mfu:.0%} of peak (assumed). The MFU and vLLM figures are "
        f"published ones of large pre-training and serving jobs; short fine-tuning sequences may run below "
        f"them. Not counted: engine "
        f"and model start-up (1–2 min a stage), checkpoint export, queue waits"
        + ".",
    ]
    return "\n".join(lines) + "\n"


def estimate_markdown(recipe: Recipe, run_dir: Path, gpus: int | None = None, gpu: str | None = None) -> str:
    """The estimate's table as markdown (what --estimate prints and a run writes as estimate.md)."""
    return markdown(estimate(recipe, run_dir, gpus, gpu))


def write_estimate(recipe: Recipe, run_dir: Path) -> Path | None:
    """Best effort, when a run starts: <run dir>/estimate.md with the defaults; a recipe that cannot be
    estimated (unknown shape, game backends) or a directory that cannot be written is skipped."""
    try:
        text = estimate_markdown(recipe, run_dir)
    except UserError:
        return None
    path = Path(run_dir) / "estimate.md"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # the run itself reports an unwritable run directory, with its fix
        return None
    return path
