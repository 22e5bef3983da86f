"""Plain-torch trainer over an HF causal LM: any device, fp32 or bf16.

π_t is loaded once. Before the first update its sequence log-probabilities on every training
row are computed (no gradients) and kept as the reference: no second model is held in memory.
Then AdamW with warmup and a linear/cosine/constant schedule, gradient accumulation and clipping
fits π_{t+1} with the recipe's loss, and π_{t+1} is saved as an HF checkpoint (safetensors).
"""

from __future__ import annotations

import gc
import math
import random
import time
from pathlib import Path
from typing import Sequence

import torch

from sppo_nemo import loss as losses
from sppo_nemo.backends.hf import ChatFormat, Encoded, load_causal_lm, load_tokenizer, sequence_logps
from sppo_nemo.protocols import PairRow, PointRow, ProgressFn, TrainResult
from sppo_nemo.recipe import TrainerConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warmup over ``warmup`` steps from 1/(warmup+1), then constant, linear decay to 0 at
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


def encode_rows(fmt: ChatFormat, rows, max_prompt: int, max_len: int) -> list[list[Encoded]]:
    """Token ids of each training row: [response] for a PointRow, [chosen, rejected] for a PairRow."""
    out = []
    for r in rows:
        if isinstance(r, PointRow):
            out.append([fmt.encode(r.prompt, r.response, r.finished, max_prompt, max_len)])
        else:
            out.append([fmt.encode(r.prompt, r.chosen, r.chosen_finished, max_prompt, max_len),
                        fmt.encode(r.prompt, r.rejected, r.rejected_finished, max_prompt, max_len)])
    return out


def batch_loss(loss_type: str, eta: float, pol: torch.Tensor, ref: torch.Tensor, rows) -> torch.Tensor:
    """Per-row loss of a micro-batch: ``pol`` and ``ref`` are (rows, 1) for SPPO (eq. 3.7) and
    (rows, 2) = (chosen, rejected) for the pairwise losses (eq. B.1, B.2, B.3)."""
    if loss_type == "sppo":
        p = torch.tensor([r.win_prob for r in rows], dtype=torch.float32, device=pol.device)
        lz = None
        if any(r.log_z is not None for r in rows):
            lz = torch.tensor([r.log_z if r.log_z is not None else eta / 2 for r in rows],
                              dtype=torch.float32, device=pol.device)
        return losses.sppo_loss(pol[:, 0], ref[:, 0], p, eta, lz)
    if loss_type == "sppo_pair":
        p = torch.tensor([r.pair_prob for r in rows], dtype=torch.float32, device=pol.device)
        return losses.sppo_pair_loss(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], p, eta)
    fn = {"dpo": losses.dpo_loss, "ipo": losses.ipo_loss}[loss_type]
    return fn(pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1], eta)


class TorchTrainer:
    def __init__(self, cfg: TrainerConfig, loss_type: str, eta: float, system_prompt: str | None,
                 seed: int, device: str | None = None):
        self.cfg = cfg
        self.loss_type = loss_type
        self.eta = eta
        self.system_prompt = system_prompt
        self.seed = seed
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    # -- encoding -------------------------------------------------------------------------
    def _encode(self, fmt: ChatFormat, rows) -> list[list[Encoded]]:
        return encode_rows(fmt, rows, self.cfg.max_prompt_length, self.cfg.max_length)

    def _logps(self, model, seqs: list[list[Encoded]], pad_id: int) -> torch.Tensor:
        """(rows, 1 or 2) sequence log-probs for a micro-batch of rows."""
        flat = [e for row in seqs for e in row]
        return sequence_logps(model, flat, pad_id).view(len(seqs), -1)

    # -- the loop -------------------------------------------------------------------------
    def train(self, policy_dir: Path, rows: Sequence[PointRow] | Sequence[PairRow], output_dir: Path,
              progress: ProgressFn | None = None, ref_progress: ProgressFn | None = None) -> TrainResult:
        c = self.cfg
        torch.manual_seed(self.seed)
        tok = load_tokenizer(str(policy_dir))
        fmt = ChatFormat(tok, self.system_prompt)
        model = load_causal_lm(str(policy_dir), dtype=DTYPES[c.precision]).to(self.device)
        for m in model.modules():  # dropout off: the reference log-probs must equal π_t's exactly
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        if c.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        seqs = self._encode(fmt, rows)
        pad = tok.pad_token_id

        # Reference log-probs of π_t, once, before any update (eq. 3.7 uses π_t as reference).
        t0 = time.time()
        model.eval()
        ref = []
        with torch.no_grad():
            for b in range(0, len(seqs), c.batch_size):
                ref.append(self._logps(model, seqs[b:b + c.batch_size], pad).float())
                if ref_progress:
                    ref_progress(len(seqs[b:b + c.batch_size]))
        reference = torch.cat(ref)
        ref_seconds = time.time() - t0

        model.train()
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=c.lr, betas=(0.9, 0.999), eps=1e-8,
            fused=True,  # one kernel per step, no foreach temporaries the size of the model
        )
        micro_per_epoch = math.ceil(len(seqs) / c.batch_size)
        total_steps = math.ceil(micro_per_epoch * c.epochs / c.grad_accum)
        warmup = int(round(c.warmup_ratio * total_steps))
        order_rng = random.Random(self.seed)
        micro_batches, epoch_of = [], []
        for epoch in range(c.epochs):
            order = list(range(len(seqs)))
            order_rng.shuffle(order)
            chunks = [order[b:b + c.batch_size] for b in range(0, len(order), c.batch_size)]
            micro_batches += chunks
            epoch_of += [epoch] * len(chunks)
        epoch_sums = [0.0] * c.epochs

        metrics: list[dict] = []
        step, acc, acc_stats = 0, 0, StepStats()
        step_start = time.time()
        for mb, epoch in zip(micro_batches, epoch_of):
            batch_rows = [rows[i] for i in mb]
            pol = self._logps(model, [seqs[i] for i in mb], pad)
            ref_mb = reference[mb]
            per_example = batch_loss(self.loss_type, self.eta, pol, ref_mb, batch_rows)
            (per_example.mean() / c.grad_accum).backward()
            epoch_sums[epoch] += per_example.detach().sum().item()
            acc_stats.add(per_example.detach(), (pol.detach().float() - ref_mb), sum(
                len(e.prompt_ids) + len(e.response_ids) for i in mb for e in seqs[i]))
            acc += 1
            if progress:
                progress(len(mb))
            if acc == c.grad_accum or mb is micro_batches[-1]:
                factor = lr_factor(step, total_steps, warmup, c.schedule)
                for g in opt.param_groups:
                    g["lr"] = c.lr * factor
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                metrics.append(acc_stats.summary(step, c.lr * factor, float(grad_norm), self.loss_type,
                                                 self.eta, time.time() - step_start))
                step, acc, acc_stats = step + 1, 0, StepStats()
                step_start = time.time()

        # Free the optimizer state and gradients before serialising: saving builds a byte buffer
        # the size of the model, which must not stack on top of 3× the model in Adam state.
        del opt
        model.zero_grad(set_to_none=True)
        gc.collect()
        output_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(output_dir)
        tok.save_pretrained(output_dir)
        summary = train_summary(metrics, len(rows), ref_seconds, epoch_sums)
        return TrainResult(metrics=metrics, summary=summary)


def train_summary(metrics: list[dict], n_rows: int, ref_seconds: float, epoch_sums) -> dict:
    """The train stage's summary.json, from the per-step metrics (both LM trainers)."""
    first, last = (metrics[0], metrics[-1]) if metrics else ({}, {})
    return {
        "steps": len(metrics),
        "rows": n_rows,
        "reference_logps_seconds": round(ref_seconds, 3),
        "first_loss": first.get("loss"),
        "last_loss": last.get("loss"),
        "first_loss_scaled": first.get("loss_scaled"),
        "last_loss_scaled": last.get("loss_scaled"),
        "mean_step_seconds": round(sum(m["seconds"] for m in metrics) / max(1, len(metrics)), 3),
        # mean training loss over each epoch, as seen during the epoch (before its own updates)
        "epoch_losses": [float(v) / max(1, n_rows) for v in epoch_sums],
    }


class StepStats:
    """Accumulates what one optimizer step saw, over its micro-batches (and, reduced, over
    data-parallel ranks)."""

    def __init__(self):
        self.losses: list[torch.Tensor] = []
        self.ratios: list[torch.Tensor] = []
        self.tokens = 0

    def add(self, per_example: torch.Tensor, log_ratio: torch.Tensor, tokens: int) -> None:
        self.losses.append(per_example.float().reshape(-1))
        self.ratios.append(log_ratio.float().reshape(-1))
        self.tokens += tokens

    def totals(self, device=None) -> torch.Tensor:
        """[Σ loss, rows, Σ log-ratio, log-ratios, max |log-ratio|, tokens] in float64."""
        if not self.losses:
            return torch.zeros(6, dtype=torch.float64, device=device)
        loss, ratio = torch.cat(self.losses).double(), torch.cat(self.ratios).double()
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

    @staticmethod
    def summary_of(t: torch.Tensor, step: int, lr: float, grad_norm: float, loss_type: str, eta: float,
                   seconds: float) -> dict:
        t = t.tolist()
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

    def summary(self, step: int, lr: float, grad_norm: float, loss_type: str, eta: float, seconds: float) -> dict:
        return self.summary_of(self.totals(), step, lr, grad_norm, loss_type, eta, seconds)
