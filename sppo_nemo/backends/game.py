"""Game backends: the whole `sppo-run` loop on a finite response set, with no language model.

Chosen together (``game_file.check``): generation.backend=game, judge.backend=matrix, trainer.backend=game,
plus ``game:``, one file stating the matrix P, the response names and π_1 (``game_file.load_game``).
The mathematics lives in sppo_nemo/maths/games.py.

- The policy is a softmax over the n responses per context, a prompt's context being its text
  (prompts with the same text share one row of logits). A policy is a directory holding
  ``policy.json``: ``{"responses": [...], "default": logits, "logits": {context: logits}}``; a
  context without its own row uses ``default`` (π_1's logits), as a tabular parameter never
  updated. ``policy.model: game`` stands for π_1 = the game file's ``init``.
- :class:`GameGenerator` samples responses with numpy, seeded from SamplingParams.seed, at the
  recipe's temperature and top_p; ``sequence_logprobs`` is log π(y|x) exactly (temperature 1);
  ``exact_metrics`` gives the evaluate stage the exact duality gaps of π_{t+1} and of the average
  policy π̄ = mean(π_1..π_{t+1}) and their distance to the Nash set (LP).
- :class:`MatrixJudge` reads P: M[i, j] = P[y_i, y_j].
- :class:`GameTrainer` fits π_{t+1} to the build stage's rows with the recipe's loss, π_t's exact
  log-probabilities as the reference, through the one trainer core (sppo_nemo/maths/training.py) with
  the recipe's optimizer (training.make_optimizer, as the torch trainer) and clip_grad_norm_ on the
  float64 logits (trainer.precision and the length keys do not apply).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sppo_nemo.maths import games
from sppo_nemo.schema.config import GAME_POLICY, TrainerConfig
from sppo_nemo.schema.protocols import ProgressFn, Prompt, Sample, SamplingParams, TrainResult, check_judge_inputs
from sppo_nemo.backends.game_file import POLICY_FILE, Game, GameError
from sppo_nemo.backends.sampling import ChunkedSampling

# ------------------------------------------------------------------------------- the policy


@dataclass
class GamePolicy:
    """Logits per context (prompt text); ``default`` for a context never trained."""

    responses: tuple[str, ...]
    default: np.ndarray
    logits: dict[str, np.ndarray]

    @classmethod
    def initial(cls, game: Game) -> "GamePolicy":
        return cls(game.responses, np.log(game.init), {})

    def logits_for(self, context: str) -> np.ndarray:
        return self.logits.get(context, self.default)

    def probs(self, context: str) -> np.ndarray:
        return games.softmax(self.logits_for(context))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        data = {"responses": list(self.responses), "default": self.default.tolist(),
                "logits": {c: v.tolist() for c, v in sorted(self.logits.items())}}
        (directory / POLICY_FILE).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def load_policy(spec: str | Path, game: Game) -> GamePolicy:
    """π from ``policy.model: game`` (π_1 = game.init) or a directory holding policy.json."""
    if str(spec) == GAME_POLICY:
        return GamePolicy.initial(game)
    path = Path(spec) / POLICY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        responses, default, logits = data["responses"], data["default"], data["logits"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise GameError([f"cannot read the game policy {path} ({exc!r}); give a policy/ folder of a game run "
                         f"or policy.model={GAME_POLICY}"]) from None
    if tuple(responses) != game.responses:
        raise GameError([f"the game policy {path} is over responses {responses}, but the game's are "
                         f"{list(game.responses)}; use a policy made with this game file"])
    return GamePolicy(game.responses, np.asarray(default, dtype=np.float64),
                      {c: np.asarray(v, dtype=np.float64) for c, v in logits.items()})


def sampling_probs(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """softmax(θ / temperature), then nucleus: the most probable responses whose mass reaches top_p."""
    p = games.softmax(np.asarray(logits) / temperature)
    if top_p >= 1.0:
        return p
    order = np.argsort(-p, kind="stable")
    keep = np.searchsorted(np.cumsum(p[order]), top_p - 1e-12) + 1
    q = np.zeros_like(p)
    q[order[:keep]] = p[order[:keep]]
    return q / q.sum()


# ---------------------------------------------------------------------------- the backends


class GameGenerator(ChunkedSampling):
    """Samples from a game policy; exact log-probabilities and exact evaluation."""

    def __init__(self, game: Game, policy: str | Path):
        self.game = game
        self.policy = load_policy(policy, game)

    def generate(self, prompts: Sequence[Prompt], num_samples: int, params: SamplingParams,
                 progress: ProgressFn | None = None) -> list[list[Sample]]:
        rng = np.random.default_rng(params.seed)
        out = []
        for p in prompts:
            probs = sampling_probs(self.policy.logits_for(p.text), params.temperature, params.top_p)
            picks = rng.choice(self.game.n, size=num_samples, p=probs)
            out.append([Sample(p.id, k, self.game.responses[i], 1, True, [int(i)]) for k, i in enumerate(picks)])
            if progress:
                progress(num_samples)
        return out

    def sequence_logprobs(self, prompts: Sequence[Prompt], responses: Sequence[Sample],
                          precision: str = "fp32") -> np.ndarray:  # exact float64: precision does not apply
        return np.array([games.log_softmax(self.policy.logits_for(p.text))[self.game.index(s.text)]
                         for p, s in zip(prompts, responses)])

    def kl_terms(self, base: str, prompts: Sequence[Prompt], responses: Sequence[Sample],
                 precision: str = "fp32") -> np.ndarray:
        """Exact in float64: a response is one position, so its KL term is KL(π(·|x) ‖ π_base(·|x))."""
        other = load_policy(base, self.game)
        out = []
        for p, s in zip(prompts, responses):
            lp, lq = games.log_softmax(self.policy.logits_for(p.text)), games.log_softmax(other.logits_for(p.text))
            i = self.game.index(s.text)
            out.append([lp[i], lq[i], max(0.0, float(np.exp(lp) @ (lp - lq)))])
        return np.array(out, dtype=np.float64).reshape(len(out), 3)

    def cut_prompts(self, prompts: Sequence[Prompt]) -> int:
        return 0  # the whole prompt text is the context: nothing is ever cut

    def close(self) -> None:
        pass

    def exact_metrics(self, prompts: Sequence[Prompt], history: Sequence[str | Path]) -> dict:
        """Exact figures of this policy (the last of ``history``) and of the average policy.

        ``history`` is π_1, …, π_{t+1}; π̄ = (1/(t+1)) Σ_s π_s, the mixture of Theorem 3.1.
        Per context (held-out prompt text, weighted by how often it occurs), then averaged:
        duality gap (games.duality_gap) and total-variation distance to the Nash set (LP).
        """
        m = self.game.matrix
        policies = [load_policy(h, self.game) for h in history]
        contexts: dict[str, int] = {}
        for p in prompts:
            contexts[p.text] = contexts.get(p.text, 0) + 1
        weights = np.array(list(contexts.values()), dtype=np.float64) / len(prompts)
        current = {c: self.policy.probs(c) for c in contexts}
        average = {c: np.mean([pi.probs(c) for pi in policies], axis=0) for c in contexts}

        def mean(fn, table):
            return float(np.dot(weights, [fn(table[c]) for c in contexts]))

        nash, value = games.nash_equilibrium(m)
        return {
            "duality_gap": mean(lambda x: games.duality_gap(m, x), current),
            "duality_gap_avg": mean(lambda x: games.duality_gap(m, x), average),
            "nash_tv": mean(lambda x: games.nash_distance(m, x)[0], current),
            "nash_tv_avg": mean(lambda x: games.nash_distance(m, x)[0], average),
            "game": {
                "responses": list(self.game.responses),
                "nash": nash.round(10).tolist(),
                "value": round(value, 10),
                "policy": {c: v.round(10).tolist() for c, v in current.items()},
                "policy_avg": {c: v.round(10).tolist() for c, v in average.items()},
                "policies_averaged": len(policies),
            },
        }


class MatrixJudge:
    """P(y ≻ y' | x) read from the game's matrix, the same for every prompt."""

    name = "matrix"

    def __init__(self, game: Game):
        self.game = game

    def compare(self, prompts: Sequence[Prompt], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(a)} a, {len(b)} b")
        return np.array([self.game.matrix[self.game.index(x), self.game.index(y)] for x, y in zip(a, b)])

    def preference_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                            progress: ProgressFn | None = None) -> list[np.ndarray]:
        check_judge_inputs(prompts, responses)
        out = []
        for texts in responses:
            idx = [self.game.index(r) for r in texts]
            out.append(self.game.matrix[np.ix_(idx, idx)].copy())
        if progress:
            progress(len(prompts))
        return out

    def scored_matrices(self, prompts: Sequence[Prompt], responses: Sequence[Sequence[str]],
                        progress: ProgressFn | None = None) -> list[tuple[np.ndarray, None]]:
        """(M, None) per prompt: the game's matrix has no logits to aggregate."""
        return [(m, None) for m in self.preference_matrices(prompts, responses, progress)]

    def close(self) -> None:
        pass


class GameTrainer:
    """Fits the logits of π_{t+1} to the rows with the recipe's loss, π_t as the reference."""

    def __init__(self, game: Game, cfg: TrainerConfig, loss_type: str, eta: float, seed: int):
        self.game = game
        self.cfg = cfg
        self.loss_type = loss_type
        self.eta = eta
        self.seed = seed

    def train(self, policy_dir: Path, rows_file: Path, output_dir: Path, progress: ProgressFn | None = None,
              ref_progress: ProgressFn | None = None, state_dir: Path | None = None) -> TrainResult:
        import torch  # the trainer core's dependency; the generator, judge and check need numpy only

        from sppo_nemo.formats.rows import read_rows
        from sppo_nemo.maths.training import Fit, StepStats, make_optimizer, sequences_per_row

        rows = read_rows(rows_file)
        policy = load_policy(policy_dir, self.game)
        contexts = sorted({r.prompt for r in rows})
        slot_of = {ctx: i for i, ctx in enumerate(contexts)}
        start = np.array([policy.logits_for(ctx) for ctx in contexts]).reshape(len(contexts), self.game.n)
        theta = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
        # the context slot of each row, and the response index of each of its 1 or 2 sequences
        width = sequences_per_row(rows)
        ctx_of = torch.tensor([slot_of[r.prompt] for r in rows], dtype=torch.long)
        names = [[r.response] if width == 1 else [r.chosen, r.rejected] for r in rows]
        resp = torch.tensor([[self.game.index(y) for y in ys] for ys in names], dtype=torch.long).reshape(-1, width)

        def logps(idx: list[int]) -> torch.Tensor:
            return torch.gather(torch.log_softmax(theta, dim=-1)[ctx_of[idx]], 1, resp[idx])

        t0 = time.time()
        with torch.no_grad():  # π_t's exact log-probabilities, the reference of eq. (3.7)
            reference = logps(list(range(len(rows))))
        if ref_progress:
            ref_progress(len(rows))
        ref_seconds = time.time() - t0

        c = self.cfg
        fit = Fit(rows, c, self.loss_type, self.eta, self.seed)
        opt = make_optimizer([theta], c)
        for step, slots in enumerate(fit.steps):
            started = time.time()
            lr = fit.lr(step)
            for group in opt.param_groups:
                group["lr"] = lr
            stats = StepStats()
            for slot in fit.local_slots(slots):
                if not slot.rows:  # padding of a short last step
                    continue
                idx = list(slot.rows)
                per_row = fit.micro_loss(slot, logps(idx), reference[idx], stats, tokens=len(idx) * width)
                (per_row.mean() / fit.grad_accum).backward()
                if progress:
                    progress(len(idx))
            grad_norm = float(torch.nn.utils.clip_grad_norm_([theta], c.max_grad_norm))
            opt.step()
            opt.zero_grad(set_to_none=True)
            fit.end_step(step, lr, grad_norm, time.time() - started, stats.totals())

        with torch.no_grad():
            fit.record_probe(logps(fit.probe), reference[fit.probe])
        trained = theta.detach().numpy()
        new = GamePolicy(policy.responses, policy.default.copy(), dict(policy.logits))
        for ctx, i in slot_of.items():
            new.logits[ctx] = trained[i].copy()
        new.save(output_dir)
        return TrainResult(metrics=fit.metrics, summary=fit.summary(ref_seconds, contexts=len(contexts)))
