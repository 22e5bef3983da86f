"""Stage 5: evaluate π_{t+1} on the held-out prompts.

- win rate against π_1 and against π_t: for each held-out prompt, the judge's P(y ≻ y' | x)
  between the i-th sample of π_{t+1} and the i-th sample of the other policy, averaged over
  the samples; the mean over prompts with a 95% percentile-bootstrap interval over prompts;
- mean response length (tokens, end-of-turn included) and the fraction that finished;
- KL(π_{t+1} ‖ π_1) estimated as the mean of log π_{t+1}(y|x) − log π_1(y|x) over y ~ π_{t+1}.
  This is unbiased for the sampling distribution; it is the KL of the models themselves when
  evaluation samples at temperature 1 and top_p 1 (the paper's sampling setting).
- with a generator that can evaluate exactly (the game backends, backends/game.py): the exact
  duality gap of π_{t+1} and of the average policy (π_1 + … + π_{t+1})/(t + 1), and their
  distance to the Nash equilibrium (sppo_nemo/games.py).

Iteration 0 is the base policy π_1: its samples are the opponents of every later iteration.
All policies sample the held-out prompts with the same seeds (common random numbers).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sppo_nemo.artifacts import read_json, write_json, write_jsonl
from sppo_nemo.backends import GeneratorSpec, JudgeSpec, generator_spec, judge_spec, make_generator, make_judge
from sppo_nemo.context import Context, PolicyRef, PromptSet, Upstream
from sppo_nemo.protocols import SamplingParams
from sppo_nemo.stages.generate import STATE, read_responses, write_responses
from sppo_nemo.stats import mean_interval

NAME = "evaluate"


@dataclass(frozen=True)
class Inputs:
    iteration: int  # 0: the base policy π_1 alone, sampled once as every later iteration's opponent
    policies: tuple[PolicyRef, ...]  # π_1 … π_{t+1}: the last is evaluated, the first is the KL's base
    prompts: PromptSet  # the held-out prompts
    samples_per_prompt: int
    sampling: SamplingParams  # seed 0: each chunk's seed is derived from its position
    seed: int
    generation: GeneratorSpec
    judge: JudgeSpec | None  # None at iteration 0
    opponents: tuple[Upstream, ...]  # iter_00/evaluate and iter_{t-1}/evaluate; empty at iteration 0


def inputs(ctx: Context, t: int) -> Inputs:
    r = ctx.recipe
    policies = tuple(ctx.policy(s) for s in range(1, t + 2))
    opponents = (ctx.upstream(0, NAME), ctx.upstream(t - 1, NAME)) if t >= 1 else ()
    return Inputs(t, policies, ctx.eval_prompts(), r.evaluation.samples_per_prompt, ctx.sampling(evaluation=True),
                  r.seed, generator_spec(r), judge_spec(r) if t >= 1 else None, opponents)


def run(inp: Inputs, workdir: Path, bar) -> dict:
    t, n = inp.iteration, inp.samples_per_prompt
    prompts = list(inp.prompts.prompts)
    generator = make_generator(inp.generation, inp.policies[-1].location)
    with bar(len(prompts) * n, f"iter {t} evaluate: sample") as b:
        # the same seeds for every policy (common random numbers): the tag has no iteration
        samples = generator.sample(prompts, n, inp.sampling, workdir / STATE, (inp.seed, NAME), b.update)
    write_responses(workdir / "responses.jsonl", prompts, samples)
    shutil.rmtree(workdir / STATE)
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
    if inp.generation.backend == "game":  # finite games: exact duality gaps of π_{t+1} and of π̄
        metrics.update(generator.exact_metrics(prompts, [p.location for p in inp.policies]))
    if t == 0:
        generator.close()
        write_json(workdir / "metrics.json", metrics)
        return metrics

    own = generator.sequence_logprobs(flat_prompts, flat)
    generator.close()
    base = make_generator(inp.generation, inp.policies[0].location)
    base_logps = base.sequence_logprobs(flat_prompts, flat)
    base.close()
    log_ratio = (own - base_logps).reshape(len(prompts), n).mean(axis=1)
    kl, kl_lo, kl_hi = mean_interval(log_ratio, seed=inp.seed)
    metrics.update({"kl_to_base": kl, "kl_to_base_ci": [kl_lo, kl_hi]})

    judge = make_judge(inp.judge)
    rows = []
    for label, opponent in zip(("base", "previous"), inp.opponents):
        theirs = [s for ss in read_responses(opponent.path / "responses.jsonl") for s in ss]
        p = judge.compare(flat_prompts, [s.text for s in flat], [s.text for s in theirs])
        per_prompt = np.asarray(p, dtype=np.float64).reshape(len(prompts), n).mean(axis=1)
        mean, lo, hi = mean_interval(per_prompt, seed=inp.seed)
        metrics[f"win_rate_vs_{label}"] = mean
        metrics[f"win_rate_vs_{label}_ci"] = [lo, hi]
        rows += [{"opponent": label, "prompt_id": q.id, "win_prob": float(v)} for q, v in zip(prompts, per_prompt)]
    judge.close()
    write_jsonl(workdir / "judgements.jsonl", rows)
    write_json(workdir / "metrics.json", metrics)
    return metrics


def read_metrics(ctx: Context, t: int) -> dict | None:
    stage = ctx.stage(t, NAME)
    return read_json(stage.path / "metrics.json") if stage.done() else None
