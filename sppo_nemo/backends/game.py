"""Game backends: the whole `sppo-run` loop on a finite response set, with no language model.

Chosen together in a recipe (sppo_nemo/recipe.py checks it): generation.backend=game,
judge.backend=matrix, trainer.backend=game, plus the `game` section (the preference matrix P, the
response names, π_1). The mathematics lives in sppo_nemo/games.py.

- The policy is a softmax over the n responses per context. The context of a prompt is its text:
  prompts with the same text share one row of logits, so the prompts of every split (training
  and held-out) can all be the same game state. A policy is a directory holding ``policy.json``:
  ``{"responses": [...], "default": logits, "logits": {context: logits}}``; a context without
  its own row uses ``default`` (π_1's logits), exactly as a tabular parameter never updated.
  ``policy.model: game`` stands for π_1 = softmax(log game.init) without a directory.
- :class:`GameGenerator` samples responses ("rock", or "y0".."y{n-1}" by default) with numpy,
  seeded from SamplingParams.seed, at the recipe's temperature and top_p; ``sequence_logprobs``
  is log π(y|x) exactly (the policy itself, at temperature 1, as the LM backend scores).
- :class:`MatrixJudge` reads P: M[i, j] = P[y_i, y_j].
- :class:`GameTrainer` fits π_{t+1} from the rows of the build stage with the recipe's loss
  (sppo_nemo/loss.py), π_t's exact log-probabilities as the reference, by gradient steps on the
  logits: AdamW (β = 0.9, 0.999, ε = 1e-8, as the torch trainer) with trainer.lr, schedule,
  warmup_ratio, batch_size, grad_accum, epochs, max_grad_norm and weight_decay, in float64
  (trainer.precision and the length keys do not apply). The AdamW update is written out on the
  one logits tensor: constructing a torch.optim optimizer imports torch._dynamo, seconds per
  process, which would dominate a game run.
- ``GameGenerator.exact_metrics`` gives the evaluate stage the exact duality gap of the current
  policy and of the average policy π̄ = mean(π_1..π_{t+1}), and their distance to the Nash
  equilibrium set (LP), averaged over the held-out contexts.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from sppo_nemo import games
from sppo_nemo.protocols import PairRow, PointRow, ProgressFn, Prompt, Sample, SamplingParams, TrainResult
from sppo_nemo.recipe import GAME_POLICY, GameConfig, TrainerConfig, resolve_path

POLICY_FILE = "policy.json"


class GameError(Exception):
    """A game section, matrix file or policy directory that cannot be used; one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


# ---------------------------------------------------------------------------------- the game


@dataclass(frozen=True)
class Game:
    matrix: np.ndarray  # P[i, j] = P(y_i ≻ y_j | x)
    responses: tuple[str, ...]
    init: np.ndarray  # π_1, probabilities

    @property
    def n(self) -> int:
        return len(self.responses)

    def __post_init__(self):
        object.__setattr__(self, "_index", {r: i for i, r in enumerate(self.responses)})

    def index(self, response: str) -> int:
        try:
            return self._index[response]
        except KeyError:
            raise ValueError(f"{response!r} is not a response of this game ({', '.join(self.responses)})") from None

    def identity(self) -> dict:
        """What a stage fingerprint records of the game: its content, not the file it came from."""
        digest = hashlib.sha256(json.dumps(self.matrix.tolist()).encode()).hexdigest()[:16]
        return {"matrix": digest, "responses": list(self.responses), "init": [float(x) for x in self.init]}


def read_matrix_file(path: Path) -> tuple[list, list[str] | None]:
    """(matrix as nested lists, response names or None) from a .json or .npy file."""
    if not path.is_file():
        raise GameError([f"game.matrix_file: {path} does not exist; give a .json or .npy file"])
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False).tolist(), None
        except (ValueError, OSError) as exc:
            raise GameError([f"game.matrix_file: {path} is not a readable .npy array ({exc})"]) from None
    if path.suffix != ".json":
        raise GameError([f"game.matrix_file: {path}: unknown format {path.suffix!r}; use .json or .npy"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GameError([f"game.matrix_file: {path} is not valid JSON ({exc})"]) from None
    if isinstance(data, dict):
        unknown = set(data) - {"matrix", "responses"}
        if "matrix" not in data or unknown:
            raise GameError([f"game.matrix_file: {path} must hold a list of lists or an object with "
                             f"'matrix' (and optionally 'responses'); got keys {sorted(data)}"])
        return data["matrix"], data.get("responses")
    return data, None


def load_game(cfg: GameConfig, base_dir: Path = Path(".")) -> Game:
    """The game of a recipe's `game` section; GameError lists every problem (dotted key first)."""
    problems: list[str] = []
    names_from_file = None
    if cfg.matrix is not None and cfg.matrix_file is not None:
        raise GameError(["game.matrix_file: give game.matrix or game.matrix_file, not both"])
    if cfg.matrix is None and cfg.matrix_file is None:
        raise GameError(["game.matrix: the game backends need a preference matrix P[i][j] = P(y_i ≻ y_j); "
                         "give game.matrix (a list of lists) or game.matrix_file"])
    key = "game.matrix"
    raw = cfg.matrix
    if cfg.matrix_file is not None:
        key = "game.matrix_file"
        raw, names_from_file = read_matrix_file(resolve_path(cfg.matrix_file, base_dir))
    bad = games.matrix_problems(raw)
    if bad:
        raise GameError([f"{key}: {b}" for b in bad])
    matrix = np.asarray(raw, dtype=np.float64)
    n = len(matrix)

    names = cfg.responses if cfg.responses is not None else names_from_file
    if cfg.responses is not None and names_from_file is not None and list(cfg.responses) != list(names_from_file):
        problems.append(f"game.responses: {list(cfg.responses)} differs from the names in {cfg.matrix_file} "
                        f"({list(names_from_file)}); give them in one place")
    if names is None:
        names = [f"y{i}" for i in range(n)]
    if not (isinstance(names, list) and all(isinstance(x, str) and x.strip() for x in names)):
        problems.append("game.responses: must be a list of non-empty names")
    elif len(names) != n:
        problems.append(f"game.responses: {len(names)} names for a {n}×{n} matrix; give one name per row")
    elif len(set(names)) != n:
        problems.append(f"game.responses: names must be unique, got {names}")

    init = games.uniform(n)
    if cfg.init is not None:
        init = np.asarray(cfg.init, dtype=np.float64)
        if init.shape != (n,):
            problems.append(f"game.init: {len(cfg.init)} probabilities for {n} responses; give one per response")
        elif not np.all(init > 0):
            problems.append("game.init: probabilities must be > 0 (the policy is a softmax; a zero can never grow)")
        elif abs(init.sum() - 1) > 1e-6:
            problems.append(f"game.init: probabilities sum to {init.sum():.6g}; they must sum to 1")
    if problems:
        raise GameError(problems)
    return Game(matrix, tuple(names), init / init.sum())


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
    except (OSError, json.JSONDecodeError) as exc:
        raise GameError([f"cannot read the game policy {path}: {exc}"]) from None
    if tuple(data["responses"]) != game.responses:
        raise GameError([f"the game policy {path} is over responses {data['responses']}, "
                         f"but the game's are {list(game.responses)}"])
    return GamePolicy(game.responses, np.asarray(data["default"], dtype=np.float64),
                      {c: np.asarray(v, dtype=np.float64) for c, v in data["logits"].items()})


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


class GameGenerator:
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
            out.append([Sample(p.id, k, self.game.responses[i], 1, True) for k, i in enumerate(picks)])
            if progress:
                progress(num_samples)
        return out

    def sequence_logprobs(self, prompts: Sequence[Prompt], responses: Sequence[Sample]) -> np.ndarray:
        return np.array([games.log_softmax(self.policy.logits_for(p.text))[self.game.index(s.text)]
                         for p, s in zip(prompts, responses)])

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

    def preference_matrix(self, prompt: Prompt, responses: Sequence[str]) -> np.ndarray:
        idx = [self.game.index(r) for r in responses]
        return self.game.matrix[np.ix_(idx, idx)].copy()


class _AdamW:
    """torch.optim.AdamW's update (decoupled weight decay, bias correction) on one tensor."""

    def __init__(self, param, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        import torch

        self.param, self.weight_decay, self.betas, self.eps = param, weight_decay, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = 0

    def step(self, lr: float) -> None:
        import torch

        b1, b2 = self.betas
        self.t += 1
        with torch.no_grad():
            g = self.param.grad
            self.param.mul_(1 - lr * self.weight_decay)
            self.m.mul_(b1).add_(g, alpha=1 - b1)
            self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (self.v / (1 - b2 ** self.t)).sqrt_().add_(self.eps)
            self.param.addcdiv_(self.m, denom, value=-lr / (1 - b1 ** self.t))
        self.param.grad = None


class GameTrainer:
    """Fits the logits of π_{t+1} to the rows with the recipe's loss, π_t as the reference."""

    def __init__(self, game: Game, cfg: TrainerConfig, loss_type: str, eta: float, seed: int):
        self.game = game
        self.cfg = cfg
        self.loss_type = loss_type
        self.eta = eta
        self.seed = seed

    def _loss(self, pol, ref, rows):
        import torch

        from sppo_nemo import loss as losses

        def col(name):
            return torch.tensor([getattr(r, name) for r in rows], dtype=torch.float64)

        if self.loss_type == "sppo":
            lz = None
            if any(r.log_z is not None for r in rows):
                lz = torch.tensor([r.log_z if r.log_z is not None else self.eta / 2 for r in rows],
                                  dtype=torch.float64)
            return losses.sppo_loss(pol[:, 0], ref[:, 0], col("win_prob"), self.eta, lz)
        if self.loss_type == "sppo_pair":
            return losses.sppo_pair_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], col("pair_prob"), self.eta)
        fn = {"dpo": losses.dpo_loss, "ipo": losses.ipo_loss}[self.loss_type]
        return fn(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], self.eta)

    def train(self, policy_dir: Path, rows: Sequence[PointRow] | Sequence[PairRow], output_dir: Path,
              progress: ProgressFn | None = None, ref_progress: ProgressFn | None = None) -> TrainResult:
        import torch

        from sppo_nemo.backends.torch_trainer import lr_factor

        c = self.cfg
        torch.manual_seed(self.seed)
        policy = load_policy(policy_dir, self.game)
        contexts = sorted({r.prompt for r in rows})
        slot = {ctx: i for i, ctx in enumerate(contexts)}
        theta = torch.nn.Parameter(torch.tensor(np.stack([policy.logits_for(ctx) for ctx in contexts]),
                                                dtype=torch.float64))
        # (row, 1 or 2) context slot and response index of each sequence of each row
        ctx_of = torch.tensor([slot[r.prompt] for r in rows], dtype=torch.long)
        if rows and isinstance(rows[0], PointRow):
            resp = torch.tensor([[self.game.index(r.response)] for r in rows], dtype=torch.long)
        else:
            resp = torch.tensor([[self.game.index(r.chosen), self.game.index(r.rejected)] for r in rows],
                                dtype=torch.long)

        def logps(idx: list[int]) -> torch.Tensor:
            lp = torch.log_softmax(theta, dim=-1)[ctx_of[idx]]
            return torch.gather(lp, 1, resp[idx])

        with torch.no_grad():  # π_t's exact log-probabilities, the reference of eq. (3.7)
            reference = logps(list(range(len(rows))))
        if ref_progress:
            ref_progress(len(rows))

        adam = _AdamW(theta, c.weight_decay)
        micro_per_epoch = math.ceil(len(rows) / c.batch_size)
        total_steps = math.ceil(micro_per_epoch * c.epochs / c.grad_accum)
        warmup = int(round(c.warmup_ratio * total_steps))
        order_rng = random.Random(self.seed)
        micro_batches = []
        for epoch in range(c.epochs):
            order = list(range(len(rows)))
            order_rng.shuffle(order)
            micro_batches += [(epoch, order[b:b + c.batch_size]) for b in range(0, len(order), c.batch_size)]
        epoch_sums = [0.0] * c.epochs
        metrics: list[dict] = []
        step, acc, seen_loss, seen_ratio = 0, 0, [], []
        started = time.time()
        for k, (epoch, mb) in enumerate(micro_batches):
            pol = logps(mb)
            per_example = self._loss(pol, reference[mb], [rows[i] for i in mb])
            (per_example.mean() / c.grad_accum).backward()
            epoch_sums[epoch] += float(per_example.detach().sum())
            seen_loss.append(per_example.detach())
            seen_ratio.append((pol.detach() - reference[mb]).reshape(-1))
            acc += 1
            if progress:
                progress(len(mb))
            if acc == c.grad_accum or k == len(micro_batches) - 1:
                lr = c.lr * lr_factor(step, total_steps, warmup, c.schedule)
                grad_norm = float(theta.grad.norm())  # clipped as torch.nn.utils.clip_grad_norm_ does
                theta.grad.mul_(min(1.0, c.max_grad_norm / (grad_norm + 1e-6)))
                adam.step(lr)
                loss = float(torch.cat(seen_loss).mean())
                ratio = torch.cat(seen_ratio)
                m = {"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                     "log_ratio_mean": float(ratio.mean()), "log_ratio_abs_max": float(ratio.abs().max()),
                     "seconds": round(time.time() - started, 4)}
                if self.loss_type in ("sppo", "sppo_pair"):
                    m["loss_scaled"] = loss / (self.eta * self.eta)  # appendix B units
                metrics.append(m)
                step, acc, seen_loss, seen_ratio = step + 1, 0, [], []
                started = time.time()

        trained = theta.detach().numpy()
        new = GamePolicy(policy.responses, policy.default.copy(), dict(policy.logits))
        for ctx, i in slot.items():
            new.logits[ctx] = trained[i].copy()
        new.save(output_dir)
        first, last = (metrics[0], metrics[-1]) if metrics else ({}, {})
        summary = {
            "steps": len(metrics),
            "rows": len(rows),
            "contexts": len(contexts),
            "first_loss": first.get("loss"),
            "last_loss": last.get("loss"),
            "first_loss_scaled": first.get("loss_scaled"),
            "last_loss_scaled": last.get("loss_scaled"),
            "epoch_losses": [v / max(1, len(rows)) for v in epoch_sums],
            "mean_step_seconds": round(sum(m["seconds"] for m in metrics) / max(1, len(metrics)), 4),
        }
        return TrainResult(metrics=metrics, summary=summary)
