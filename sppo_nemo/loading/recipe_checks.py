"""The recipe's general value checks: the top-level keys and the sections no backend owns (loss,
sampling, judge, trainer, evaluation, policy, data sizes), each problem as 'dotted.key: what; fix'.

Called from ``recipe.check`` after the structural check, with the sections' own checks (data, game,
megatron layout, vLLM, launch) beside it; nothing here reads a file but the policy directory's
``config.json`` presence. :func:`cost_warnings` are valid values that cost orders of magnitude more
than anyone runs: ``--validate`` prints them as warnings and refuses nothing.
"""

from __future__ import annotations

from pathlib import Path

from sppo_nemo.schema.config import SHIPPED_SMOLLM2, Recipe, looks_like_path, resolve_path, uses_games
from sppo_nemo.schema.errors import UserError
from sppo_nemo.formats.step_checkpoints import parse_period


def check_general(r: Recipe, base_dir: Path) -> list[str]:
    """Every problem of the keys no backend owns, section by section, in the recipe's order."""
    return [*_run_keys(r), *_loss(r), *_sampling_and_judge(r), *_trainer(r), *_evaluation(r),
            *_policy_and_data(r, base_dir)]


class _Problems(list):
    """The messages of one section's checks."""

    def need(self, cond: bool, msg: str) -> None:
        if not cond:
            self.append(msg)


def _run_keys(r: Recipe) -> list[str]:
    """The run's own keys: name, seeds, K, T, η, threads."""
    p = _Problems()
    p.need(bool(r.name.strip()) and r.name not in (".", "..") and not set(r.name) & {"/", "\\", "\0"},
           f"name: {r.name!r} names the run folder under output_dir; use a plain name without '/', '\\' or NUL, "
           f"not '.' or '..'")
    for key, seed in (("seed", r.seed), ("data.seed", r.data.seed)):
        p.need(0 <= seed < 2 ** 32, f"{key}: {seed}; seeds must be in [0, 2**32)")
    p.need(r.K >= 2, f"K: {r.K} responses per prompt; SPPO compares responses, so K must be at least 2")
    p.need(r.T >= 1, f"T: {r.T} iterations; set T to 1 or more")
    p.need(r.eta > 0, f"eta: {r.eta}; η must be positive (the paper uses 1e3)")
    p.need(r.threads is None or r.threads >= 1, f"threads: {r.threads}; use a positive count or null")
    return p


def _loss(r: Recipe) -> list[str]:
    """loss.*: which combinations of loss, selection, ranking and estimator make sense."""
    p = _Problems()
    lt, sel = r.loss.type, r.loss.selection
    if lt in ("sppo_pair", "dpo", "ipo"):
        p.need(sel == "best_worst", f"loss.selection: {lt} trains on pairs; set loss.selection=best_worst")
    p.need(r.loss.log_z == "constant" or lt == "sppo",
           "loss.log_z: 'estimated' applies to the square loss only; use loss.type=sppo or loss.log_z=constant")
    p.need(r.loss.rank_by == "win_rate" or sel == "best_worst",
           "loss.rank_by: ranks the responses to pick the winner and the loser; it needs loss.selection=best_worst")
    n_est = r.loss.estimator_samples
    if n_est is not None:
        p.need(2 <= n_est <= r.K, f"loss.estimator_samples: {n_est}; P̂ needs 2 to K={r.K} of the samples")
        p.need(sel == "best_worst" and lt == "sppo",
               "loss.estimator_samples: estimates P̂ from the winner, the loser and n − 2 others (app. D.3), for "
               "the square loss on the selected pair: set loss.type=sppo and loss.selection=best_worst, or null")
        p.need(r.loss.winrate == "average",
               "loss.estimator_samples: the judge's aggregated scores (loss.winrate=score_diff) average over all K "
               "samples; use loss.winrate=average with a smaller estimator sample")
    p.need(r.loss.ipo_form == "appendix_b" or lt == "ipo",
           f"loss.ipo_form: applies to loss.type=ipo; it is {lt}, so remove it")
    return p


def _sampling_and_judge(r: Recipe) -> list[str]:
    """sampling.* and the judge's sizes."""
    p = _Problems()
    s = r.sampling
    p.need(s.temperature > 0, f"sampling.temperature: {s.temperature}; must be > 0 (SPPO samples from π_t)")
    p.need(0 < s.top_p <= 1, f"sampling.top_p: {s.top_p}; must be in (0, 1]")
    p.need(s.max_new_tokens >= 1, f"sampling.max_new_tokens: {s.max_new_tokens}; must be at least 1")
    p.need(s.batch_size >= 1, f"sampling.batch_size: {s.batch_size}; must be at least 1")
    p.need(r.judge.batch_size >= 1, f"judge.batch_size: {r.judge.batch_size}; must be at least 1")
    p.need(r.judge.max_batch_tokens is None or r.judge.max_batch_tokens >= 1,
           f"judge.max_batch_tokens: {r.judge.max_batch_tokens}; must be at least 1, or null")
    p.need(not (r.judge.backend == "llm_blender" and r.judge.dtype == "bf16"),
           "judge.dtype: llm-blender does not run PairRM in bf16; use judge.backend=pairrm or judge.dtype=auto")
    return p


def _trainer(r: Recipe) -> list[str]:
    """trainer.*: the optimizer, its schedule, the checkpoint period and the lengths."""
    p = _Problems()
    t = r.trainer
    p.need(t.lr > 0, f"trainer.lr: {t.lr}; must be > 0")
    p.need(0 <= t.warmup_ratio < 1, f"trainer.warmup_ratio: {t.warmup_ratio}; must be in [0, 1)")
    p.need(t.batch_size >= 1, f"trainer.batch_size: {t.batch_size}; must be at least 1")
    p.need(t.grad_accum >= 1, f"trainer.grad_accum: {t.grad_accum}; must be at least 1")
    p.need(t.epochs >= 1, f"trainer.epochs: {t.epochs}; must be at least 1")
    p.need(t.schedule_epochs is None or t.schedule_epochs >= t.epochs,
           f"trainer.schedule_epochs: {t.schedule_epochs}; the schedule's horizon must hold the "
           f"trainer.epochs={t.epochs} trained (at least that many), or null")
    p.need(t.optimizer == "adamw" or t.backend in ("torch", "game"),
           f"trainer.optimizer: {t.optimizer} is not offered by megatron-core's optimizer (adam and sgd only); "
           f"use trainer.optimizer=adamw with trainer.backend=megatron, or trainer.backend=torch")
    p.need(t.max_grad_norm > 0, f"trainer.max_grad_norm: {t.max_grad_norm}; must be > 0")
    try:
        parse_period(t.checkpoint_every)
    except ValueError as exc:
        p.append(f"trainer.checkpoint_every: {exc}")
    p.need(t.weight_decay >= 0, f"trainer.weight_decay: {t.weight_decay}; must be >= 0")
    p.need(t.max_prompt_length >= 1, f"trainer.max_prompt_length: {t.max_prompt_length}; must be at least 1")
    p.need(t.max_length > t.max_prompt_length,
           f"trainer.max_length: {t.max_length} leaves no room for a response after "
           f"trainer.max_prompt_length={t.max_prompt_length}; raise max_length")
    return p


def _evaluation(r: Recipe) -> list[str]:
    """evaluation.*: sampling, best-of-n and the prompt file's keys."""
    p = _Problems()
    e = r.evaluation
    p.need(e.samples_per_prompt >= 1, f"evaluation.samples_per_prompt: {e.samples_per_prompt}; must be at least 1")
    p.need(e.temperature is None or e.temperature > 0, f"evaluation.temperature: {e.temperature}; must be > 0")
    p.need(e.top_p is None or 0 < e.top_p <= 1, f"evaluation.top_p: {e.top_p}; must be in (0, 1]")
    p.need(e.max_new_tokens is None or e.max_new_tokens >= 1, "evaluation.max_new_tokens: must be at least 1")
    p.need(e.best_of is None or e.best_of >= 2,
           f"evaluation.best_of: {e.best_of}; best-of-n needs n ≥ 2 samples per prompt, or null for off")
    p.need(e.best_of is None or e.enabled,
           f"evaluation.best_of: {e.best_of}, but evaluation.enabled is false: no evaluate stage runs, so nothing "
           f"would be sampled best-of-n; set evaluation.enabled=true or remove evaluation.best_of (null)")
    p.need(not e.prompts or e.enabled,
           f"evaluation.prompts: {e.prompts}, but evaluation.enabled is false: no evaluate stage runs, so no outputs "
           f"would be written for it; set evaluation.enabled=true or remove evaluation.prompts")
    p.need(bool(e.prompt_field.strip()), "evaluation.prompt_field: empty; name the field holding the instruction")
    return p


def _policy_and_data(r: Recipe, base_dir: Path) -> list[str]:
    """policy.model as a directory, and the data sizes."""
    p = _Problems()
    model = r.policy.model
    if not uses_games(r) and model != SHIPPED_SMOLLM2 and looks_like_path(model):
        path = resolve_path(model, base_dir)
        p.need(path.is_dir(), f"policy.model: {model!r} is not a directory; give an HF checkpoint directory, "
                              f"a hub id (org/name) or 'smollm2'")
        if path.is_dir():
            p.need((path / "config.json").is_file(),
                   f"policy.model: {path} has no config.json; is it an HF checkpoint?")

    p.need(r.data.eval_size >= (1 if r.evaluation.enabled else 0),
           f"data.eval_size: {r.data.eval_size}; evaluation needs at least 1 held-out prompt "
           f"(or evaluation.enabled=false)")
    p.need(r.data.split_size >= 1, f"data.split_size: {r.data.split_size}; must be at least 1")
    return p


# The paper samples K = 5 responses per prompt (appendix C); practice stays within a few dozen. The
# judge compares every ordered pair, K·(K−1) per prompt, so a K past this is most likely a typo.
K_PRACTICE = 64
# The estimate's judging "dwarfs" generation: this many times its hours, and over an hour an iteration.
JUDGE_OVER_GENERATION = 100.0


def cost_warnings(r: Recipe, base_dir: Path) -> list[str]:
    """Valid values whose cost is orders of magnitude off, as 'dotted.key: what; fix': K beyond
    :data:`K_PRACTICE`, or, where the policy's shape is known (sppo_nemo/loading/estimate.py), a judge whose
    K·(K−1) comparisons per prompt take over :data:`JUDGE_OVER_GENERATION` times generation's hours."""
    from sppo_nemo.loading.estimate import estimate  # the policy's shape from its config.json, or the HF cache

    comparisons = r.K * (r.K - 1)
    try:
        e = estimate(r, Path(r.output_dir) / r.name, base_dir=base_dir)
    except (UserError, ArithmeticError, LookupError, TypeError, ValueError):  # games, a shape not known here
        e = None
    dwarfs, costed = False, ""
    if e is not None:
        hours = {s.stage: s.seconds / 3600 for s in e.stages}
        gen, judge, it = hours["generate"], hours["annotate"], e.iteration_seconds / 3600
        dwarfs = judge > max(1.0, JUDGE_OVER_GENERATION * gen)
        costed = (f"; the estimate puts one iteration at {f'{it:,.2f}' if it >= 0.01 else f'{it:.2g}'} h on "
                  f"{e.gpus} × {e.gpu.name}, {judge / it if it else 0:.0%} of it judging (sppo-run RECIPE "
                  f"--estimate prints the whole cost)")
    if r.K <= K_PRACTICE and not dwarfs:
        return []
    why = ("far beyond the paper's K = 5 and the few dozen of practice" if r.K > K_PRACTICE
           else "and judging them dwarfs generating them")
    return [f"K: {r.K} responses per prompt, {why}: the judge makes K·(K−1) = {comparisons:,} comparisons per "
            f"prompt, {comparisons * r.data.split_size:,} an iteration of data.split_size={r.data.split_size} "
            f"prompts{costed}. If K is a typo, fix it"]
