"""Stage 5: evaluate π_{t+1} on the held-out prompts.

- win rate against π_1 and against π_t: for each held-out prompt, the judge's P(y ≻ y' | x)
  between the i-th sample of π_{t+1} and the i-th sample of the other policy, averaged over
  the samples; the mean over prompts with a 95% percentile-bootstrap interval over prompts;
- mean response length (tokens, end-of-turn included) and the fraction that finished;
- KL(π_{t+1} ‖ π_1) over y ~ π_{t+1}, scored on the sampled ids: the exact per-position KL
  Σ_h KL(π_{t+1}(·|x, y_<h) ‖ π_1(·|x, y_<h)) (``kl_to_base``, non-negative), and beside it the
  log-ratio log π_{t+1}(y|x) − log π_1(y|x) (``kl_to_base_log_ratio``), each with its 95% interval
  (:func:`kl_estimates`). Both are of the models themselves when evaluation samples at temperature
  1 and top_p 1 (the paper's sampling setting). Both models are scored from fp32 weights, or from
  bf16 ones with ``evaluation.kl_precision: bf16``, held together for the scoring.
- with a generator that can evaluate exactly (the game backends, backends/game.py): the exact
  duality gap of π_{t+1} and of the average policy (π_1 + … + π_{t+1})/(t + 1), and their
  distance to the Nash equilibrium (sppo_nemo/maths/games.py).

Iteration 0 is the base policy π_1: its samples are the opponents of every later iteration.
All policies sample the held-out prompts with the same seeds (common random numbers).

Every iteration writes the held-out outputs (sample 0 of each prompt) as AlpacaEval's
``model_outputs.json`` (sppo_nemo/formats/alpaca.py). Four optional keys add work, never changing the above:

- ``evaluation.prompts``: one response per instruction of that file (AlpacaEval's 805, say), with
  the evaluation sampling settings, written as ``alpaca_eval_outputs.json``; not judged here.
- ``evaluation.lm_eval``: EleutherAI's lm-evaluation-harness tasks (the Open LLM Leaderboard's by
  default, paper Table 3) on the evaluated policy, in a worker of its own after the generator and
  the judge have closed (sppo_nemo/backends/lm_eval); each task's headline number and standard error
  as ``lm_eval_<task>`` and ``lm_eval_<task>_stderr``, all of its metrics under ``lm_eval``.
- ``evaluation.alpaca_eval``: AlpacaEval 2.0's judge (an OpenAI-compatible endpoint, or a local model
  served by vLLM) compares the evaluated policy's outputs (``alpaca_eval_outputs.json`` with
  evaluation.prompts, else the held-out ``model_outputs.json``) with a reference's (π_1's, or a file),
  and the length-controlled win rate is fitted on its preferences (sppo_nemo/backends/alpaca_eval).
- ``evaluation.best_of: n`` (paper, Table 1, "best-of-16"): n more samples per held-out prompt,
  ranked by the judge: the kept one has the largest P̂(y_i ≻ π | x) = (1/n) Σ_j M[i, j] over the
  n samples (eq. 3.5; the first on ties). ``win_rate_best_of_vs_base`` is its win probability
  against each of π_1's plain samples of the prompt, averaged per prompt, with a 95% interval over
  prompts; at iteration 0 that is best-of-n π_1 against plain π_1.

Each sampling pass has its own seed tag, none with the iteration: plain samples keep the seeds
they had before these keys existed, and best-of-n samples share theirs across iterations.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sppo_nemo.formats.alpaca import (HELDOUT_DATASET, EvalPrompts, generator_name, output_records, read_outputs,
                                      recipe_eval_prompts, write_outputs)
from sppo_nemo.formats.data import DataError
from sppo_nemo.formats.artifacts import read_json, write_json, write_jsonl
from sppo_nemo.backends import (GeneratorSpec, JudgeSpec, generator_spec, judge_spec, make_generator, make_judge,
                                policy_location)
from sppo_nemo.backends.alpaca_eval.spec import AlpacaEvalSpec, alpaca_eval_spec
from sppo_nemo.backends.lm_eval.spec import LmEvalSpec, lm_eval_spec
from sppo_nemo.stages.context import Context, PolicyRef, PromptSet, Upstream
from sppo_nemo.maths.preference import win_rate_estimates
from sppo_nemo.schema.protocols import Sample, SamplingParams
from sppo_nemo.stages.generate import STATE, read_responses, write_responses
from sppo_nemo.maths.stats import mean_interval

NAME = "evaluate"
BEST_OF_STATE = "sampling_best_of"  # resumable state of each extra sampling pass, removed at the end
PROMPTS_STATE = "sampling_prompts"


@dataclass(frozen=True)
class Extras:
    """What the optional evaluation keys add. ``run_name`` only names the generator in the
    AlpacaEval files; the run directory bears the same name, so it is not keyed."""

    run_name: str
    prompts: EvalPrompts | None = None  # evaluation.prompts, read
    best_of: int | None = None
    kl_precision: str = "fp32"  # evaluation.kl_precision, resolved
    lm_eval: LmEvalSpec | None = None  # evaluation.lm_eval, when enabled
    alpaca_eval: AlpacaEvalSpec | None = None  # evaluation.alpaca_eval, when enabled

    def fingerprint(self) -> dict:
        out = {"kl_precision": self.kl_precision, "best_of": self.best_of,
               "prompts": self.prompts.fingerprint() if self.prompts is not None else None}
        if self.lm_eval is not None:  # only when on: runs from before the key existed stay fresh
            out["lm_eval"] = self.lm_eval.fingerprint()
        if self.alpaca_eval is not None:
            out["alpaca_eval"] = self.alpaca_eval.fingerprint()
        return out

    @staticmethod
    def recipe_key(key: str) -> str:
        return f"evaluation.{key}"


@dataclass(frozen=True)
class Inputs:
    iteration: int  # 0: the base policy π_1 alone, sampled once as every later iteration's opponent
    policies: tuple[PolicyRef, ...]  # π_1 … π_{t+1}: the last is evaluated, the first is the KL's base
    prompts: PromptSet  # the held-out prompts
    samples_per_prompt: int
    sampling: SamplingParams  # seed 0: each chunk's seed is derived from its position
    seed: int
    generation: GeneratorSpec
    judge: JudgeSpec | None  # None at iteration 0, unless best-of-n needs it to rank π_1's samples
    opponents: tuple[Upstream, ...]  # iter_00/evaluate and iter_{t-1}/evaluate; empty at iteration 0
    extras: Extras  # evaluation.prompts and evaluation.best_of


def inputs(ctx: Context, t: int) -> Inputs:
    r = ctx.recipe
    e = r.evaluation
    policies = tuple(ctx.policy(s) for s in range(1, t + 2))
    opponents = (ctx.upstream(0, NAME), ctx.upstream(t - 1, NAME)) if t >= 1 else ()
    extra = _prompt_file(r) if e.prompts else None
    return Inputs(t, policies, ctx.eval_prompts(), e.samples_per_prompt, ctx.sampling(evaluation=True),
                  r.seed, generator_spec(r), judge_spec(r) if t >= 1 or e.best_of else None, opponents,
                  Extras(r.name, extra, e.best_of, e.kl_precision, lm_eval_spec(r), alpaca_eval_spec(r)))


def _prompt_file(r) -> EvalPrompts:
    """evaluation.prompts, read (alpaca.recipe_eval_prompts; the recipe check reads it the same way)."""
    return recipe_eval_prompts(r)


def run(inp: Inputs, workdir: Path, bar) -> dict:
    t, n, best_of = inp.iteration, inp.samples_per_prompt, inp.extras.best_of
    kl_precision = inp.extras.kl_precision or "fp32"
    prompts = list(inp.prompts.prompts)
    generator = make_generator(inp.generation, inp.policies[-1].location)
    with bar(len(prompts) * n, f"iter {t} evaluate: sample") as b:
        # the same seeds for every policy (common random numbers): the tag has no iteration
        samples = generator.sample(prompts, n, inp.sampling, workdir / STATE, (inp.seed, NAME), b.update)
    write_responses(workdir / "responses.jsonl", prompts, samples)
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat = [s for ss in samples for s in ss]
    lengths = np.array([s.num_tokens for s in flat], dtype=np.float64)
    metrics: dict = {
        "iteration": t,
        "mean_tokens": float(lengths.mean()),
        "finished_fraction": float(np.mean([s.finished for s in flat])),
        "prompts_cut": generator.cut_prompts(prompts),
        **generator.run_facts(),
    }
    # finite games: the exact duality gaps of π_{t+1} and of π̄ (nothing for a language model)
    metrics.update(generator.exact_metrics(prompts, [p.location for p in inp.policies]))
    name = generator_name(inp.extras.run_name, t)
    write_outputs(workdir / "model_outputs.json", output_records(
        [p.text for p in prompts], [ss[0].text for ss in samples], name, [HELDOUT_DATASET] * len(prompts)))
    candidates = None
    if best_of:
        with bar(len(prompts) * best_of, f"iter {t} evaluate: best-of-{best_of} sample") as b:
            candidates = generator.sample(prompts, best_of, inp.sampling, workdir / BEST_OF_STATE,
                                          (inp.seed, NAME, "best_of"), b.update)
        write_responses(workdir / "best_of_responses.jsonl", prompts, candidates)
    if inp.extras.prompts is not None:
        metrics.update(_sample_prompt_file(generator, inp, workdir, bar, name))

    if t >= 1:
        base = policy_location(inp.policies[0].location)
        metrics.update(kl_estimates(generator.kl_terms(base, flat_prompts, flat, kl_precision),
                                    len(prompts), n, inp.seed))
    generator.close()

    judge = make_judge(inp.judge) if inp.judge is not None else None
    rows = []
    for label, opponent in zip(("base", "previous"), inp.opponents):
        theirs = [s for ss in read_responses(opponent.path / "responses.jsonl") for s in ss]
        p = judge.compare(flat_prompts, [s.text for s in flat], [s.text for s in theirs])
        per_prompt = np.asarray(p, dtype=np.float64).reshape(len(prompts), n).mean(axis=1)
        mean, lo, hi = mean_interval(per_prompt, seed=inp.seed)
        metrics[f"win_rate_vs_{label}"] = mean
        metrics[f"win_rate_vs_{label}_ci"] = [lo, hi]
        rows += [{"opponent": label, "prompt_id": q.id, "win_prob": float(v)} for q, v in zip(prompts, per_prompt)]
    if candidates is not None:
        base_samples = read_responses(inp.opponents[0].path / "responses.jsonl") if t >= 1 else samples
        metrics.update(_best_of(judge, inp, workdir, bar, candidates, base_samples))
    if judge is not None:
        judge.close()
    if rows:
        write_jsonl(workdir / "judgements.jsonl", rows)
    if inp.extras.alpaca_eval is not None:
        metrics.update(_alpaca_eval(inp, workdir, bar))
    if inp.extras.lm_eval is not None:
        metrics.update(_lm_eval(inp, workdir, bar))
    for state in (STATE, BEST_OF_STATE, PROMPTS_STATE):
        shutil.rmtree(workdir / state, ignore_errors=True)
    write_json(workdir / "metrics.json", metrics)
    return metrics


def kl_estimates(terms: np.ndarray, prompts: int, n: int, seed: int) -> dict:
    """KL(π_{t+1} ‖ π_1) from ``Generator.kl_terms`` over samples y ~ π_{t+1}, n per prompt, two ways,
    each the mean over prompts with a 95% bootstrap interval over prompts:

    - ``kl_to_base``: Σ_h KL(π_{t+1}(·|x, y_<h) ‖ π_1(·|x, y_<h)), the exact KL at each position of
      the sampled prefix (by the chain rule its expectation is the sequence KL); every term ≥ 0;
    - ``kl_to_base_log_ratio``: log π_{t+1}(y|x) − log π_1(y|x), the single-sample estimate (k1),
      unbiased too but of higher variance, and negative for some samples.
    """
    exact = terms[:, 2].reshape(prompts, n).mean(axis=1)
    ratio = (terms[:, 0] - terms[:, 1]).reshape(prompts, n).mean(axis=1)
    kl, lo, hi = mean_interval(exact, seed=seed)
    kr, rlo, rhi = mean_interval(ratio, seed=seed)
    return {"kl_to_base": kl, "kl_to_base_ci": [lo, hi], "kl_to_base_log_ratio": kr,
            "kl_to_base_log_ratio_ci": [rlo, rhi]}


def best_index(m: np.ndarray) -> int:
    """The sample best-of-n keeps from one prompt's n×n matrix M[i, j] = P(y_i ≻ y_j | x): the
    largest P̂(y_i ≻ π | x) = (1/n) Σ_j M[i, j] (eq. 3.5, diagonal ½), the first on ties.
    Hand-worked: M = [[½, .2, .9], [.8, ½, .4], [.1, .6, ½]] gives P̂ = [.533, .567, .4]: index 1."""
    return int(np.argmax(win_rate_estimates(np.asarray(m, dtype=np.float64))))


def _best_of(judge, inp: Inputs, workdir: Path, bar, candidates: list[list[Sample]],
             base: list[list[Sample]]) -> dict:
    """Rank each prompt's n samples by the judge, keep the best, judge it against π_1's plain samples."""
    t, n = inp.iteration, inp.extras.best_of
    prompts = list(inp.prompts.prompts)
    with bar(len(prompts), f"iter {t} evaluate: best-of-{n} rank") as b:
        matrices = judge.preference_matrices(prompts, [[s.text for s in ss] for ss in candidates], b.update)
    kept = [best_index(m) for m in matrices]
    best = [ss[k] for ss, k in zip(candidates, kept)]
    flat_prompts = [p for p, ss in zip(prompts, base) for _ in ss]
    p = judge.compare(flat_prompts, [b.text for b, ss in zip(best, base) for _ in ss],
                      [s.text for ss in base for s in ss])
    per_prompt, i = [], 0
    for ss in base:
        per_prompt.append(float(np.mean(p[i:i + len(ss)])))
        i += len(ss)
    mean, lo, hi = mean_interval(per_prompt, seed=inp.seed)
    write_jsonl(workdir / "best_of.jsonl", (
        {"prompt_id": q.id, "win_rates": win_rate_estimates(np.asarray(m, dtype=np.float64)).round(8).tolist(),
         "kept": k, "win_prob_vs_base": v} for q, m, k, v in zip(prompts, matrices, kept, per_prompt)))
    write_outputs(workdir / "best_of_outputs.json", output_records(
        [q.text for q in prompts], [b.text for b in best], generator_name(inp.extras.run_name, t, n),
        [HELDOUT_DATASET] * len(prompts)))
    return {"best_of": n, "win_rate_best_of_vs_base": mean, "win_rate_best_of_vs_base_ci": [lo, hi],
            "best_of_mean_tokens": float(np.mean([b.num_tokens for b in best])),
            "best_of_finished_fraction": float(np.mean([b.finished for b in best]))}


def _sample_prompt_file(generator, inp: Inputs, workdir: Path, bar, name: str) -> dict:
    """One response per instruction of evaluation.prompts, as alpaca_eval_outputs.json."""
    extra = inp.extras.prompts
    prompts = list(extra.prompts)
    with bar(len(prompts), f"iter {inp.iteration} evaluate: evaluation.prompts") as b:
        samples = generator.sample(prompts, 1, inp.sampling, workdir / PROMPTS_STATE, (inp.seed, NAME, "prompts"),
                                   b.update)
    write_outputs(workdir / "alpaca_eval_outputs.json", output_records(
        [p.text for p in prompts], [ss[0].text for ss in samples], name, list(extra.datasets)))
    return {"alpaca_eval_outputs": len(prompts),
            "alpaca_eval_mean_tokens": float(np.mean([ss[0].num_tokens for ss in samples])),
            "alpaca_eval_prompts_cut": generator.cut_prompts(prompts)}


def _alpaca_eval(inp: Inputs, workdir: Path, bar) -> dict:
    """AlpacaEval 2.0's judge on this policy's outputs against the reference's (nothing at iteration 0
    when the reference is π_1 itself)."""
    from sppo_nemo.backends.alpaca_eval.annotate import judge
    from sppo_nemo.backends.alpaca_eval.spec import BASE

    spec = inp.extras.alpaca_eval
    file = "alpaca_eval_outputs.json" if inp.extras.prompts is not None else "model_outputs.json"
    if spec.reference == BASE and inp.iteration == 0:
        return {}
    ours = read_outputs(workdir / file)
    theirs = read_outputs(inp.opponents[0].path / file if spec.reference == BASE else Path(spec.reference))
    by_instruction = {rec["instruction"]: rec for rec in theirs}
    missing = [rec["instruction"] for rec in ours if rec["instruction"] not in by_instruction]
    if missing:
        raise DataError(f"evaluation.alpaca_eval.reference: {spec.reference} has no output for {len(missing)} of the "
                        f"{len(ours)} instructions of {file}, e.g. {missing[0][:80]!r}; give a reference file with an "
                        f"output for every instruction (AlpacaEval's reference outputs match its 805 instructions)")
    refs = [by_instruction[rec["instruction"]] for rec in ours]
    with bar(len(ours), f"iter {inp.iteration} evaluate: AlpacaEval judge") as b:
        return judge(spec, [rec["instruction"] for rec in ours], [rec["output"] for rec in ours],
                     [rec["output"] for rec in refs], (refs[0]["generator"], ours[0]["generator"]),
                     workdir / "alpaca_eval", b.update)


def _lm_eval(inp: Inputs, workdir: Path, bar) -> dict:
    """lm-eval's tasks on the evaluated policy, resumed per task (backends/lm_eval/controller.py)."""
    from sppo_nemo.backends.lm_eval import controller

    spec = inp.extras.lm_eval
    with bar(len(spec.tasks), f"iter {inp.iteration} evaluate: lm-eval") as b:
        results = controller.run(spec, policy_location(inp.policies[-1].location), workdir / "lm_eval", b.update)
    return controller.metrics(spec, results)


def read_metrics(ctx: Context, t: int) -> dict | None:
    stage = ctx.stage(t, NAME)
    return read_json(stage.path / "metrics.json") if stage.done() else None
