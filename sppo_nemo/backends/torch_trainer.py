"""Plain-torch trainer over an HF causal LM: any device, fp32 or bf16 autocast over fp32 weights.

π_t is loaded once. Before the first update its sequence log-probabilities on every training
row are computed (no gradients) and kept as the reference: no second model is held in memory.
Then AdamW (or RMSprop: trainer.optimizer) with clipping fits π_{t+1} along the one trainer core's plan and schedule
(``sppo_nemo/training.py``), and π_{t+1} is saved as an HF checkpoint (safetensors).

Shared prompts (``trainer.pack_prompts``, on by default): the sequences of a micro-batch that
share their prompt — a pair's chosen and rejected, the point rows of one prompt, which the plan
keeps side by side — are scored as one packed sequence, the prompt computed once
(:func:`sppo_nemo.backends.hf.packed_sequence_logps`; the same log-probs to float summation
order). The reference pass packs too, over batches of consecutive rows that keep a prompt's rows
together. Off, every sequence carries its own copy of the prompt (the code path of before).

Memory layout (``sppo_nemo/backends/flat_state.py``): the parameters, their gradients and AdamW's
moments live in three flat buffers allocated once, the gradients zeroed in place between steps,
and in fp32 the LM head's and input embedding's weight gradients are added into them in place
during backward. The arithmetic is that of the plain layout (tested); the heap holds only the
step's transients. Under bf16 autocast the LM head keeps autocast's own backward, which sums the
tied weight's chunk gradients in bf16 before one cast to fp32: the in-place path sums them in fp32
(0.33% from the fp32 gradient on the tiny model, against 0.38%), a change of rounding that moves
the default recipe's seeded trajectory (final win rate 0.775 → 0.727, inside each other's 95%
intervals), so it is left off there.

Precision (``trainer.precision``): ``fp32`` computes and keeps everything in fp32. ``bf16`` is
mixed precision: the weights stay fp32 (the master copy the optimizer updates, and the saved
checkpoint), and the forward passes — reference and training — run under
``torch.autocast(device_type, bfloat16)``, so matrix products (the decoder's linear layers,
attention, the LM head's logits) compute in bf16 while norms, the log-softmax, the loss, the
gradients and the optimizer state stay fp32. (bf16 weights would lose every update smaller than
their bf16 spacing, ~2⁻⁸ of the weight: at lr 5e-7 nothing would learn.)
"""

from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path

import torch

from sppo_nemo.allocator import return_free_memory
from sppo_nemo.backends.flat_state import accumulate_in_place, adamw_state, flatten
from sppo_nemo.backends.hf import (ChatFormat, encode_rows, load_causal_lm, load_tokenizer, packed_sequence_logps,
                                  packed_tokens, packs_prompts, row_tokens, save_checkpoint, sequence_logps)
from sppo_nemo.config import TrainerConfig
from sppo_nemo.protocols import ProgressFn, TrainResult
from sppo_nemo.rows import read_rows
from sppo_nemo.training import Fit, StepStats, make_optimizer


class TorchTrainer:
    def __init__(self, cfg: TrainerConfig, loss_type: str, eta: float, system_prompt: str | None,
                 seed: int, device: str | None = None):
        self.cfg = cfg
        self.loss_type = loss_type
        self.eta = eta
        self.system_prompt = system_prompt
        self.seed = seed
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def train(self, policy_dir: Path, rows_file: Path, output_dir: Path, progress: ProgressFn | None = None,
              ref_progress: ProgressFn | None = None) -> TrainResult:
        c = self.cfg
        torch.manual_seed(self.seed)
        rows = read_rows(rows_file)
        tok = load_tokenizer(str(policy_dir))
        model = self._load(policy_dir)
        state = flatten(model)  # parameters and gradients in two flat buffers (flat_state.py)
        if c.precision != "bf16":  # under autocast, autocast's own path: the bf16 results stay as they were
            accumulate_in_place(model)
        return_free_memory()  # the loaded parameters' pages, now copied into the flat buffer
        seqs = encode_rows(ChatFormat(tok, self.system_prompt), rows, c.max_prompt_length, c.max_length)
        pad = tok.pad_token_id
        packed = c.pack_prompts and packs_prompts(model)
        score = packed_sequence_logps if packed else sequence_logps
        tokens = packed_tokens if packed else row_tokens

        def logps(ids) -> torch.Tensor:
            """(rows, 1 or 2) sequence log-probs of the rows ``ids``."""
            with self._autocast():
                return score(model, [e for i in ids for e in seqs[i]], pad).view(len(ids), -1)

        t0 = time.time()
        reference = self._reference(logps, model, reference_batches(rows, c.batch_size, packed), ref_progress)
        ref_seconds = time.time() - t0

        fit = Fit(rows, c, self.loss_type, self.eta, self.seed)
        opt = self._optimizer(model)
        adamw_state(opt, state)  # AdamW's moments in a third
        model.train()
        for step, slots in enumerate(fit.steps):
            started, stats = time.time(), StepStats()
            for slot in fit.local_slots(slots):
                if not slot.rows:
                    continue
                ids = list(slot.rows)
                per_row = fit.micro_loss(slot, logps(ids), reference[ids], stats, tokens(seqs, ids))
                (per_row.mean() / fit.grad_accum).backward()
                if progress:
                    progress(len(ids))
            lr = fit.lr(step)
            for g in opt.param_groups:
                g["lr"] = lr
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.max_grad_norm)
            opt.step()
            state.zero_grad()
            fit.end_step(step, lr, float(grad_norm), time.time() - started, stats.totals())

        # Free the optimizer state and gradients before serialising: saving builds a byte buffer
        # the size of the model, which must not stack on top of 3× the model in Adam state.
        del opt
        state.release()
        gc.collect()
        model.eval()
        with torch.no_grad():  # the loss on the same fixed rows after training (before: log-ratio 0)
            probe = [fit.probe[b:b + c.batch_size] for b in range(0, len(fit.probe), c.batch_size)]
            after = torch.cat([logps(ids).float() for ids in probe]) if probe else torch.zeros(0, 1)
        fit.record_probe(after, reference[fit.probe])
        save_checkpoint(model, tok, output_dir)
        return TrainResult(metrics=fit.metrics, summary=fit.summary(ref_seconds))

    def _autocast(self):
        """bf16 compute over the fp32 weights for trainer.precision=bf16; nothing for fp32."""
        if self.cfg.precision != "bf16":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _load(self, policy_dir: Path):
        # fp32 in both precisions: bf16 is autocast compute over fp32 master weights (module docstring)
        model = load_causal_lm(str(policy_dir), dtype=torch.float32).to(self.device)
        for m in model.modules():  # dropout off: the reference log-probs must equal π_t's exactly
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def _reference(self, logps, model, batches: list[list[int]], ref_progress: ProgressFn | None) -> torch.Tensor:
        """π_t's log-probs of every row, once, before any update (eq. 3.7 uses π_t as reference)."""
        model.eval()
        out = []
        with torch.no_grad():
            for ids in batches:
                out.append(logps(ids).float())
                if ref_progress:
                    ref_progress(len(ids))
        return torch.cat(out)


    def _optimizer(self, model) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
        # fused AdamW: one kernel per step, no foreach temporaries the size of the model
        return make_optimizer(
            [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            self.cfg, fused=True)


def reference_batches(rows, batch_size: int, keep_prompts: bool) -> list[list[int]]:
    """The reference pass's batches of consecutive row indices, in row order (so the log-probs
    concatenate in row order). Unpacked: every ``batch_size`` rows. Packed: a batch is closed
    before a run of rows with one prompt id that would not fit in it whole, so a prompt's rows
    (adjacent in rows.jsonl: the build stage writes them per prompt) share a batch; a run longer
    than ``batch_size`` is cut into full batches. Hand-worked: prompts [a, a, b, b, b, c], batch 4
    → [[0, 1], [2, 3, 4, 5]]; unpacked → [[0, 1, 2, 3], [4, 5]]."""
    n = len(rows)
    if not keep_prompts:
        return [list(range(b, min(n, b + batch_size))) for b in range(0, n, batch_size)]
    runs: list[list[int]] = []
    for i, r in enumerate(rows):
        if runs and getattr(r, "prompt_id", None) is not None and rows[runs[-1][0]].prompt_id == r.prompt_id:
            runs[-1].append(i)
        else:
            runs.append([i])
    batches: list[list[int]] = []
    for run in runs:
        if batches and len(batches[-1]) + len(run) <= batch_size:
            batches[-1] += run
            continue
        for s in range(0, len(run), batch_size):
            batches.append(run[s:s + batch_size])
    return batches
