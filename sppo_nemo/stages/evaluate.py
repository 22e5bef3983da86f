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

from pathlib import Path

import numpy as np

from sppo_nemo.artifacts import read_json, write_json, write_jsonl
from sppo_nemo.context import Context
from sppo_nemo.data import prompts_digest
from sppo_nemo.stages.generate import read_responses, sample_resumable, write_responses
from sppo_nemo.stats import mean_interval


def fingerprint(ctx: Context, t: int) -> dict:
    r = ctx.recipe
    fp = {
        "policy": ctx.policy_key(t + 1) if t >= 1 else ctx.policy_key(1),
        "policy.system_prompt": r.policy.system_prompt,
        "prompts": prompts_digest(ctx.splits.eval),
        "evaluation": vars(r.evaluation).copy(),
        "sampling": vars(r.sampling).copy(),
        "seed": r.seed,
    }
    if t >= 1:
        fp["judge"] = vars(r.judge).copy()
        fp["opponent.base"] = ctx.stage(0, "evaluate").digest()
        fp["opponent.previous"] = ctx.stage(t - 1, "evaluate").digest()
    return fp


def run(ctx: Context, t: int, workdir: Path) -> dict:
    from sppo_nemo.backends import make_generator, make_judge

    r = ctx.recipe
    prompts = ctx.splits.eval
    n = r.evaluation.samples_per_prompt
    policy = ctx.policy(t + 1) if t >= 1 else ctx.policy(1)
    generator = make_generator(r, policy)
    with ctx.bar(len(prompts) * n, f"iter {t} evaluate: sample") as bar:
        samples = sample_resumable(generator, prompts, n, ctx.sampling(evaluation=True),
                                   workdir / "samples.log.jsonl", f"{r.seed}:evaluate", bar.update)
    write_responses(workdir / "responses.jsonl", prompts, samples)
    (workdir / "samples.log.jsonl").unlink()
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat = [s for ss in samples for s in ss]
    lengths = np.array([s.num_tokens for s in flat], dtype=np.float64)
    metrics: dict = {
        "iteration": t,
        "mean_tokens": float(lengths.mean()),
        "finished_fraction": float(np.mean([s.finished for s in flat])),
    }
    exact = getattr(generator, "exact_metrics", None)
    if exact is not None:  # finite games (backends/game.py): exact duality gaps of π_{t+1} and of π̄
        metrics.update(exact(prompts, [ctx.policy(s) for s in range(1, t + 2)]))
    if t == 0:
        generator.close()
        write_json(workdir / "metrics.json", metrics)
        return metrics

    own = generator.sequence_logprobs(flat_prompts, flat)
    generator.close()
    base = make_generator(r, ctx.policy(1))
    base_logps = base.sequence_logprobs(flat_prompts, flat)
    base.close()
    log_ratio = (own - base_logps).reshape(len(prompts), n).mean(axis=1)
    kl, kl_lo, kl_hi = mean_interval(log_ratio, seed=r.seed)
    metrics.update({"kl_to_base": kl, "kl_to_base_ci": [kl_lo, kl_hi]})

    judge = make_judge(r)
    rows = []
    for label, opponent in (("base", 0), ("previous", t - 1)):
        theirs = [s for ss in read_responses(ctx.stage(opponent, "evaluate").path / "responses.jsonl") for s in ss]
        p = judge.compare(flat_prompts, [s.text for s in flat], [s.text for s in theirs])
        per_prompt = np.asarray(p, dtype=np.float64).reshape(len(prompts), n).mean(axis=1)
        mean, lo, hi = mean_interval(per_prompt, seed=r.seed)
        metrics[f"win_rate_vs_{label}"] = mean
        metrics[f"win_rate_vs_{label}_ci"] = [lo, hi]
        rows += [{"opponent": label, "prompt_id": q.id, "win_prob": float(v)} for q, v in zip(prompts, per_prompt)]
    write_jsonl(workdir / "judgements.jsonl", rows)
    write_json(workdir / "metrics.json", metrics)
    return metrics


def read_metrics(ctx: Context, t: int) -> dict | None:
    stage = ctx.stage(t, "evaluate")
    return read_json(stage.path / "metrics.json") if stage.done() else None
