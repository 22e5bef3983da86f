"""The one trainer core: schedule, micro-batch plan, loss dispatch, step metrics and summary.

Every trainer backend (torch, megatron, game) drives the same :class:`Fit`, so "same steps, same
losses across backends" holds by construction rather than by copying:

- the plan: each epoch shuffles the rows (or, packing prompts, the prompts' groups of rows) with one
  seeded ``random.Random``, cuts them into
  micro-batches of ``batch_size`` rows, and consecutive micro-batches form an optimizer step of
  ``grad_accum × dp`` of them (data-parallel rank r takes slots r·grad_accum … (r+1)·grad_accum − 1);
  steps span epoch boundaries, and a short last step is padded with empty slots;
- each micro-batch contributes ``mean(per-row loss) / grad_accum`` to the gradient (a backend whose
  schedule divides by the micro-batch count itself, as megatron's does, passes the mean);
- the learning rate: linear warm-up over ``round(warmup_ratio · horizon)`` steps, then constant,
  linear or cosine decay to 0 at the horizon: the steps of ``schedule_epochs`` epochs (default
  ``epochs``, so the decay ends at the last step trained; the paper's appendix C schedules 18
  epochs and keeps the first, so there training stops where the schedule has barely begun);
- the loss of a micro-batch: :func:`batch_loss`, eq. 3.7 or B.1–B.3 (``sppo_nemo/maths/loss.py``);
- the metrics of a step (:class:`StepStats`, reducible over data-parallel ranks) and the summary.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch

from sppo_nemo.maths import loss as losses
from sppo_nemo.schema.config import TrainerConfig
from sppo_nemo.schema.errors import UserError
from sppo_nemo.schema.protocols import PointRow


class TrainingDiverged(UserError):
    pass


# What to change when training diverges (Fit.end_step, Fit.record_probe): the same words either way.
# Not clipping: AdamW's and RMSprop's steps are normalised, so a smaller trainer.max_grad_norm leaves
# the first update (≈ lr per weight) as large as it was.
DIVERGED_FIX = ("nothing of this stage was committed. Lower trainer.lr, raise trainer.warmup_ratio, or train in "
                "fp32 (trainer.precision=fp32).")


@dataclass(frozen=True)
class Slot:
    """One micro-batch of an optimizer step: row indices and their epoch (-1: padding, no rows)."""

    rows: tuple[int, ...]
    epoch: int


def plan_steps(n_rows: int, batch_size: int, grad_accum: int, dp: int, epochs: int, seed: int,
               groups: Sequence[Sequence[int]] | None = None) -> list[list[Slot]]:
    """Optimizer steps, each ``grad_accum × dp`` slots. Hand-worked: 5 rows, batch 2, accum 2,
    dp 1, 1 epoch → 3 micro-batches → steps [[mb0, mb1], [mb2, padding]].

    ``groups`` (the rows of each prompt, ``trainer.pack_prompts``): each epoch shuffles the groups
    instead of the rows and lays each group's rows side by side, so a prompt's rows share a
    micro-batch and its prompt is computed once (sppo_nemo/maths/packing.py). Groups of one row each, in
    order, give exactly the row shuffle."""
    rng = random.Random(seed)
    micro: list[Slot] = []
    for epoch in range(epochs):
        if groups is None:
            order = list(range(n_rows))
            rng.shuffle(order)
        else:
            shuffled = [list(g) for g in groups]
            rng.shuffle(shuffled)
            order = [i for g in shuffled for i in g]
        micro += [Slot(tuple(order[b:b + batch_size]), epoch) for b in range(0, n_rows, batch_size)]
    per_step = grad_accum * dp
    steps = []
    for s in range(0, len(micro), per_step):
        step = micro[s:s + per_step]
        steps.append(step + [Slot((), -1)] * (per_step - len(step)))
    return steps


def prompt_groups(rows: Sequence) -> list[list[int]]:
    """Row indices per prompt id, in order of first appearance. Hand-worked: prompt ids
    [a, b, a, c] → [[0, 2], [1], [3]]."""
    by: dict[object, list[int]] = {}
    for i, r in enumerate(rows):
        key = getattr(r, "prompt_id", None)
        by.setdefault(("row", i) if key is None else key, []).append(i)
    return list(by.values())


def horizon_steps(n_rows: int, batch_size: int, grad_accum: int, dp: int, epochs: int) -> int:
    """The optimizer steps ``epochs`` epochs take: :func:`plan_steps`'s count, without the plan.
    Hand-worked: 10 rows, batch 2, accum 1, dp 1 → 5 micro-batches an epoch; 18 epochs → 90 steps."""
    micro = epochs * math.ceil(n_rows / batch_size)
    return math.ceil(micro / (grad_accum * dp))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup`` steps from 1/(warmup+1), then constant, linear decay to 0 at
    ``total``, or cosine decay to 0. Hand-worked: total 10, warmup 2, linear: steps 0..3 →
    1/3, 2/3, 1.0, 0.875.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(groups, cfg: TrainerConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The recipe's optimizer over parameter groups (each may carry its own weight_decay).

    - ``adamw``: AdamW, betas (0.9, 0.999), eps 1e-8 (torch's and TRL's defaults);
    - ``rmsprop``: torch's RMSprop at its defaults (alpha 0.99, eps 1e-8, no momentum, not
      centred), what transformers' Trainer builds for ``--optim rmsprop``, the reference SPPO
      scripts' choice (uclaml/SPPO ``scripts/pipeline.sh``: OPTIM="rmsprop").

    ``fused`` asks for torch's single-kernel AdamW (RMSprop has no fused form in torch).
    """
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr, alpha=0.99, eps=1e-8, weight_decay=cfg.weight_decay,
                                   momentum=0.0, centered=False)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg.weight_decay,
                             **({"fused": True} if fused else {}))


def batch_loss(loss_type: str, eta: float, pol: torch.Tensor, ref: torch.Tensor, rows) -> torch.Tensor:
    """Per-row loss of a micro-batch: ``pol`` and ``ref`` are (rows, 1) for SPPO (eq. 3.7) and
    (rows, 2) = (chosen, rejected) for the pairwise losses (eq. B.1, B.2, B.3; ``ipo_azar``: IPO in
    the IPO paper's form, loss.ipo_form=azar)."""
    dtype = torch.promote_types(pol.dtype, torch.float32)
    if loss_type == "sppo":
        p = torch.tensor([r.win_prob for r in rows], dtype=dtype, device=pol.device)
        lz = None
        if any(r.log_z is not None for r in rows):
            lz = torch.tensor([r.log_z if r.log_z is not None else eta / 2 for r in rows],
                              dtype=dtype, device=pol.device)
        return losses.sppo_loss(pol[:, 0], ref[:, 0], p, eta, lz)
    if loss_type == "sppo_pair":
        p = torch.tensor([r.pair_prob for r in rows], dtype=dtype, device=pol.device)
        return losses.sppo_pair_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], p, eta)
    if loss_type == "dpo":
        return losses.dpo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], eta)
    form = "azar" if loss_type == "ipo_azar" else "appendix_b"  # loss.ipo_form (backends.TrainerSpec.loss_name)
    return losses.ipo_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], eta, form)


def sequences_per_row(rows: Sequence) -> int:
    """1 for the square loss's point rows, 2 (chosen, rejected) for pair rows."""
    return 1 if not rows or isinstance(rows[0], PointRow) else 2


PROBE_ROWS = 64  # rows scored before and after training, the same ones, for the report


def probe_rows(n_rows: int, seed: int, size: int = PROBE_ROWS) -> list[int]:
    """A fixed subset of the rows, the same before and after training: ``size`` of them drawn with
    their own seeded generator (not the plan's), in row order. The first and last steps' losses
    are on different rows, so they cannot show what training did; these can."""
    if n_rows <= size:
        return list(range(n_rows))
    return sorted(random.Random(seed + 0x9E3779B9).sample(range(n_rows), size))


class StepStats:
    """What one optimizer step saw, over its micro-batches (and, reduced, over data-parallel ranks)."""

    def __init__(self):
        self.losses: list[torch.Tensor] = []
        self.ratios: list[torch.Tensor] = []
        self.tokens = 0

    def add(self, per_example: torch.Tensor, log_ratio: torch.Tensor, tokens: int) -> None:
        self.losses.append(per_example.detach().double().reshape(-1))
        self.ratios.append(log_ratio.detach().double().reshape(-1))
        self.tokens += tokens

    def totals(self, device=None) -> torch.Tensor:
        """[Σ loss, rows, Σ log-ratio, log-ratios, max |log-ratio|, tokens] in float64."""
        if not self.losses:
            return torch.zeros(6, dtype=torch.float64, device=device)
        loss, ratio = torch.cat(self.losses), torch.cat(self.ratios)
        return torch.stack([loss.sum(), torch.tensor(float(loss.numel()), dtype=torch.float64, device=loss.device),
                            ratio.sum(), torch.tensor(float(ratio.numel()), dtype=torch.float64, device=loss.device),
                            ratio.abs().max(),
                            torch.tensor(float(self.tokens), dtype=torch.float64, device=loss.device)]).to(device)

    def reduce(self, group, device) -> torch.Tensor:
        """:meth:`totals` summed (max for the max) over a process group."""
        import torch.distributed as dist

        t = self.totals(device)
        m = t[4:5].clone()
        dist.all_reduce(t, group=group)
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
        t[4] = m[0]
        return t


def step_metrics(totals: torch.Tensor, step: int, lr: float, grad_norm: float, loss_type: str, eta: float,
                 seconds: float) -> dict:
    """One line of metrics.jsonl from a step's (reduced) :meth:`StepStats.totals`."""
    t = totals.tolist()
    out = {
        "step": step,
        "loss": t[0] / max(1.0, t[1]),
        "lr": lr,
        "grad_norm": grad_norm,
        "log_ratio_mean": t[2] / max(1.0, t[3]),
        "log_ratio_abs_max": t[4],
        "tokens": int(t[5]),
        "seconds": round(seconds, 4),
    }
    if loss_type in ("sppo", "sppo_pair"):
        # Appendix B units: (β·log-ratio − (P̂ − ½))², β = 1/η; 0.25 at π = π_t for P̂ ∈ {0, 1}.
        out["loss_scaled"] = losses.sppo_loss_scaled(out["loss"], eta)
    return out


class Fit:
    """The loop state a trainer backend drives, step by step::

        fit = Fit(rows, cfg, loss_type, eta, seed, dp=dp, grad_accum=accum, keep_prompts=pack)
        for step, slots in enumerate(fit.steps):
            lr = fit.lr(step)                      # set it on the optimizer
            stats = StepStats()
            for slot in fit.local_slots(slots, dp_rank):
                pol = ...                          # (rows, 1 or 2) log π_θ of slot.rows
                per_row = fit.micro_loss(slot, pol, reference[list(slot.rows)], stats, tokens)
                (per_row.mean() / fit.grad_accum).backward()
            ... clip, optimizer step ...
            fit.end_step(step, lr, grad_norm, seconds, stats.totals())
        summary = fit.summary(ref_seconds)
    """

    def __init__(self, rows: Sequence, cfg: TrainerConfig, loss_type: str, eta: float, seed: int,
                 dp: int = 1, grad_accum: int | None = None, keep_prompts: bool = False):
        self.rows = rows
        self.cfg = cfg
        self.loss_type = loss_type
        self.eta = eta
        self.dp = dp
        self.grad_accum = grad_accum or cfg.grad_accum
        # ``keep_prompts``: a language-model trainer keeps a prompt's rows together to pack them
        # (trainer.pack_prompts); the backend says so, the core does not know backends
        groups = prompt_groups(rows) if keep_prompts else None
        self.steps = plan_steps(len(rows), cfg.batch_size, self.grad_accum, dp, cfg.epochs, seed, groups)
        horizon_epochs = cfg.schedule_epochs or cfg.epochs
        self.horizon = (len(self.steps) if horizon_epochs == cfg.epochs else
                        horizon_steps(len(rows), cfg.batch_size, self.grad_accum, dp, horizon_epochs))
        self.warmup = int(round(cfg.warmup_ratio * self.horizon))
        self.epoch_sums = torch.zeros(cfg.epochs, dtype=torch.float64)
        self.metrics: list[dict] = []
        self.probe = probe_rows(len(rows), seed)
        self.probe_losses: tuple[float, float] | None = None

    def lr(self, step: int) -> float:
        return self.cfg.lr * lr_factor(step, self.horizon, self.warmup, self.cfg.schedule)

    def local_slots(self, slots: list[Slot], dp_rank: int = 0) -> list[Slot]:
        """The slots data-parallel rank ``dp_rank`` computes in this step."""
        g = self.grad_accum
        return slots[dp_rank * g:(dp_rank + 1) * g]

    def micro_loss(self, slot: Slot, pol: torch.Tensor, ref: torch.Tensor, stats: StepStats,
                   tokens: int) -> torch.Tensor:
        """Per-row loss of one slot (``pol``, ``ref``: its rows' sequence log-probs), recorded in the
        step's stats and its epoch's sum."""
        per_row = batch_loss(self.loss_type, self.eta, pol, ref, [self.rows[i] for i in slot.rows])
        self.epoch_sums[slot.epoch] += per_row.detach().double().sum().cpu()
        stats.add(per_row, pol.detach().to(ref.dtype) - ref, tokens)
        return per_row

    def end_step(self, step: int, lr: float, grad_norm: float, seconds: float, totals: torch.Tensor) -> dict:
        """The step's metrics; a non-finite loss or gradient norm stops training before anything is
        committed (TrainingDiverged names the step). The loss is π's before the step's update: the
        last update is checked by :meth:`record_probe`."""
        m = step_metrics(totals, step, lr, grad_norm, self.loss_type, self.eta, seconds)
        if not (math.isfinite(m["loss"]) and math.isfinite(grad_norm)):
            raise TrainingDiverged(
                f"training diverged at optimizer step {step} of {len(self.steps)}: loss {m['loss']}, gradient norm "
                f"{grad_norm} (lr {lr:.3g}); {DIVERGED_FIX}")
        self.metrics.append(m)
        return m

    def record_probe(self, pol_after: torch.Tensor, ref: torch.Tensor) -> None:
        """The loss on the fixed probe rows (:attr:`probe`) before training and after it:
        ``pol_after`` (probe rows, 1 or 2) are π_{t+1}'s log-probs of them, ``ref`` π_t's. Before
        training π = π_t, so the loss there is the batch loss at log-ratio 0: no extra pass.

        The probe is the one look at π after the last update (:meth:`end_step` sees each step's loss
        before its update): a non-finite loss here, as a single step at a huge learning rate leaves
        it, stops training before anything is committed, as a diverging step does."""
        rows = [self.rows[i] for i in self.probe]
        ref = ref.double()
        before = batch_loss(self.loss_type, self.eta, ref, ref, rows).mean().item()
        after = batch_loss(self.loss_type, self.eta, pol_after.double(), ref, rows).mean().item()
        if rows and not math.isfinite(after):
            last = self.metrics[-1] if self.metrics else {"step": len(self.steps) - 1, "lr": self.cfg.lr}
            raise TrainingDiverged(
                f"training diverged at optimizer step {last['step']} of {len(self.steps)}: after its update the "
                f"loss on the {len(rows)} fixed probe rows is {after} (it was {before:.4g} before training; lr "
                f"{last['lr']:.3g}); {DIVERGED_FIX}")
        self.probe_losses = (before, after)

    def summary(self, ref_seconds: float, **extra) -> dict:
        """The train stage's summary.json (timing keys are moved out of the digest by the stage)."""
        first, last = (self.metrics[0], self.metrics[-1]) if self.metrics else ({}, {})
        n = max(1, len(self.rows))
        probe: dict = {}
        if self.probe_losses is not None:
            before, after = self.probe_losses
            probe = {"probe_rows": len(self.probe), "probe_loss_before": before, "probe_loss_after": after}
            if self.loss_type in ("sppo", "sppo_pair"):
                probe["probe_loss_before_scaled"] = losses.sppo_loss_scaled(before, self.eta)
                probe["probe_loss_after_scaled"] = losses.sppo_loss_scaled(after, self.eta)
        return {
            **probe,
            "steps": len(self.metrics),
            "schedule_steps": self.horizon,
            "rows": len(self.rows),
            "reference_logps_seconds": round(ref_seconds, 3),
            "first_loss": first.get("loss"),
            "last_loss": last.get("loss"),
            "first_loss_scaled": first.get("loss_scaled"),
            "last_loss_scaled": last.get("loss_scaled"),
            "mean_step_seconds": round(sum(m["seconds"] for m in self.metrics) / max(1, len(self.metrics)), 3),
            # mean training loss over each epoch, as seen during the epoch (before its own updates)
            "epoch_losses": [float(v) / n for v in self.epoch_sums],
            **extra,
        }
