"""Plain-torch trainer over an HF causal LM: any device, fp32 or bf16.

π_t is loaded once. Before the first update its sequence log-probabilities on every training
row are computed (no gradients) and kept as the reference: no second model is held in memory.
Then AdamW (or RMSprop: trainer.optimizer) with clipping fits π_{t+1} along the one trainer core's plan and schedule
(``sppo_nemo/training.py``), and π_{t+1} is saved as an HF checkpoint (safetensors).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch

from sppo_nemo.backends.hf import (ChatFormat, encode_rows, load_causal_lm, load_tokenizer, row_tokens,
                                  save_checkpoint, sequence_logps)
from sppo_nemo.config import TrainerConfig
from sppo_nemo.protocols import ProgressFn, TrainResult
from sppo_nemo.rows import read_rows
from sppo_nemo.training import Fit, StepStats, make_optimizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


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
        seqs = encode_rows(ChatFormat(tok, self.system_prompt), rows, c.max_prompt_length, c.max_length)
        pad = tok.pad_token_id

        def logps(ids) -> torch.Tensor:
            """(rows, 1 or 2) sequence log-probs of the rows ``ids``."""
            return sequence_logps(model, [e for i in ids for e in seqs[i]], pad).view(len(ids), -1)

        t0 = time.time()
        reference = self._reference(model, logps, len(rows), ref_progress)
        ref_seconds = time.time() - t0

        fit = Fit(rows, c, self.loss_type, self.eta, self.seed)
        opt = self._optimizer(model)
        model.train()
        for step, slots in enumerate(fit.steps):
            started, stats = time.time(), StepStats()
            for slot in fit.local_slots(slots):
                if not slot.rows:
                    continue
                ids = list(slot.rows)
                per_row = fit.micro_loss(slot, logps(ids), reference[ids], stats, row_tokens(seqs, ids))
                (per_row.mean() / fit.grad_accum).backward()
                if progress:
                    progress(len(ids))
            lr = fit.lr(step)
            for g in opt.param_groups:
                g["lr"] = lr
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), c.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            fit.end_step(step, lr, float(grad_norm), time.time() - started, stats.totals())

        # Free the optimizer state and gradients before serialising: saving builds a byte buffer
        # the size of the model, which must not stack on top of 3× the model in Adam state.
        del opt
        model.zero_grad(set_to_none=True)
        gc.collect()
        save_checkpoint(model, tok, output_dir)
        return TrainResult(metrics=fit.metrics, summary=fit.summary(ref_seconds))

    def _load(self, policy_dir: Path):
        model = load_causal_lm(str(policy_dir), dtype=DTYPES[self.cfg.precision]).to(self.device)
        for m in model.modules():  # dropout off: the reference log-probs must equal π_t's exactly
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        if self.cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model

    def _reference(self, model, logps, n_rows: int, ref_progress: ProgressFn | None) -> torch.Tensor:
        """π_t's log-probs of every row, once, before any update (eq. 3.7 uses π_t as reference)."""
        model.eval()
        out = []
        with torch.no_grad():
            for b in range(0, n_rows, self.cfg.batch_size):
                ids = list(range(b, min(n_rows, b + self.cfg.batch_size)))
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
