"""Plain-torch trainer over an HF causal LM: any device, fp32 or bf16 autocast over fp32 weights.

π_t is loaded once. Before the first update its sequence log-probabilities on every training
row are computed (no gradients) and kept as the reference: no second model is held in memory.
Then AdamW (or RMSprop: trainer.optimizer) with clipping fits π_{t+1} along the one trainer core's plan and schedule
(``sppo_nemo/maths/training.py``), and π_{t+1} is saved as an HF checkpoint (safetensors).

Shared prompts (``trainer.pack_prompts``, on by default): the sequences of a micro-batch that
share their prompt — a pair's chosen and rejected, the point rows of one prompt, which the plan
keeps side by side — are scored as one packed sequence, the prompt computed once
(:func:`sppo_nemo.backends.hf.packed_sequence_logps`; the same log-probs to float summation
order). The reference pass packs too, over batches of consecutive rows that keep a prompt's rows
together. Off, every sequence carries its own copy of the prompt (the code path of before).

Memory layout (``sppo_nemo/backends/flat_state.py``): the parameters, their gradients and AdamW's
moments live in three flat buffers allocated once, the gradients zeroed in place between steps,
and the LM head's and input embedding's weight gradients are added into them in place during
backward. The arithmetic is that of the plain layout (tested); the heap holds only the step's
transients. Under bf16 autocast the products are computed in bf16 as autocast's own backward
computes them, and the tied weight's chunk gradients are summed in fp32 (autocast's own backward
sums them in bf16 before one cast): 0.33% from the fp32 gradient on the tiny model, against 0.38%.

Step checkpoints (``trainer.checkpoint_every``, sppo_nemo/formats/step_checkpoints.py): in the stage's
partial folder, the reference log-probs once, then after every period the flat parameters, the
optimizer's state, the metrics so far and the RNG state. A killed stage resumes after the newest
whole checkpoint and ends byte-identical to an uninterrupted one (the plan and the learning rate
are functions of the step). SIGTERM or SIGUSR1 during the step loop writes one at the next step
boundary, then stops (sppo_nemo/process/stopping.py).

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

from sppo_nemo.process import stopping
from sppo_nemo.process.allocator import return_free_memory
from sppo_nemo.backends.flat_state import accumulate_in_place, adamw_state, flatten
from sppo_nemo.backends.chat_format import ChatFormat, encode_rows, packed_tokens, row_tokens
from sppo_nemo.backends.hf import load_causal_lm, load_tokenizer, packed_sequence_logps, packs_prompts
from sppo_nemo.backends.checkpoint_files import save_checkpoint
from sppo_nemo.backends.seq_logps import sequence_logps
from sppo_nemo.schema.config import TrainerConfig
from sppo_nemo.schema.protocols import ProgressFn, TrainResult
from sppo_nemo.formats.rows import read_rows
from sppo_nemo.formats.step_checkpoints import CheckpointDue, StepCheckpoints, parse_period, saved_words
from sppo_nemo.maths.training import Fit, StepStats, make_optimizer

STATE = "state.pt"  # one step checkpoint's file
REFERENCE = "reference.pt"


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
              ref_progress: ProgressFn | None = None, state_dir: Path | None = None) -> TrainResult:
        c = self.cfg
        torch.manual_seed(self.seed)
        rows = read_rows(rows_file)
        tok = load_tokenizer(str(policy_dir))
        model = self._load(policy_dir)
        state = flatten(model)  # parameters and gradients in two flat buffers (flat_state.py)
        accumulate_in_place(model)  # the LM head's and embedding's weight gradients added into the buffer
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

        fit = Fit(rows, c, self.loss_type, self.eta, self.seed, keep_prompts=c.pack_prompts)
        period = parse_period(c.checkpoint_every)
        ckpts = StepCheckpoints(state_dir, len(fit.steps)) if state_dir is not None and not period.off else None
        # From the reference pass on, SIGTERM/SIGUSR1 stop training at the next step boundary, saved.
        with stopping.at_step_boundaries():
            t0 = time.time()
            reference = self._reference_once(ckpts, logps, model, reference_batches(rows, c.batch_size, packed),
                                             ref_progress)
            ref_seconds = time.time() - t0

            opt = self._optimizer(model)
            adamw_state(opt, state)  # AdamW's moments in a third
            start = self._resume(ckpts, state, opt, fit, progress)
            due, saved = CheckpointDue(period), {"checkpoints_written": 0, "checkpoint_seconds": 0.0}
            model.train()
            for step in range(start, len(fit.steps)):
                self._step(step, fit, model, opt, state, seqs, logps, reference, tokens, progress)
                stop = stopping.requested()
                if ckpts is not None and (stop or due(step)):
                    t1 = time.time()
                    folder = ckpts.save(step, lambda d: torch.save(self._state(step, state, opt, fit), d / STATE))
                    saved["checkpoints_written"] += 1
                    saved["checkpoint_seconds"] += time.time() - t1
                    due.written()
                if stop:
                    stopping.acted_on()
                    kept = (saved_words(step, len(fit.steps), folder) if ckpts is not None else
                            "the train stage keeps no step checkpoints (trainer.checkpoint_every=off)")
                    raise stopping.Terminated(stop, kept)
        # Free the optimizer state and gradients before serialising: saving builds a byte buffer
        # the size of the model, which must not stack on top of 3× the model in Adam state.
        del opt
        state.release()
        gc.collect()
        return self._finish(fit, model, logps, reference, tok, output_dir, ref_seconds,
                            {**saved, "resumed_at_step": start})

    def _step(self, step, fit, model, opt, state, seqs, logps, reference, tokens, progress) -> None:
        """One optimizer step of the plan: its micro-batches' gradients, clipping, the update."""
        c = self.cfg
        slots = fit.steps[step]
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

    def _finish(self, fit, model, logps, reference, tok, output_dir, ref_seconds, extra) -> TrainResult:
        """The probe rows' loss after training, and π_{t+1} saved."""
        c = self.cfg
        model.eval()
        with torch.no_grad():  # the loss on the same fixed rows after training (before: log-ratio 0)
            probe = [fit.probe[b:b + c.batch_size] for b in range(0, len(fit.probe), c.batch_size)]
            after = torch.cat([logps(ids).float() for ids in probe]) if probe else torch.zeros(0, 1)
        fit.record_probe(after, reference[fit.probe])
        save_checkpoint(model, tok, output_dir)
        return TrainResult(metrics=fit.metrics, summary=fit.summary(ref_seconds, **extra))

    # --------------------------------------------------------------- step checkpoints
    def _reference_once(self, ckpts, logps, model, batches, ref_progress) -> torch.Tensor:
        """The reference log-probs: read back from the stage's folder when a killed attempt wrote
        them, else computed (and written there, once, for the next attempt)."""
        found = ckpts.reference() if ckpts is not None else None
        if found is not None:
            reference = torch.load(found / REFERENCE, weights_only=True)
            if ref_progress:
                ref_progress(sum(len(b) for b in batches))
            return reference
        reference = self._reference(logps, model, batches, ref_progress)
        if ckpts is not None:
            ckpts.save_reference(lambda d: torch.save(reference, d / REFERENCE))
        return reference

    @staticmethod
    def _state(step: int, state, opt, fit: Fit) -> dict:
        """What a resumed stage needs after optimizer ``step``: the flat parameters (AdamW's moments
        share one buffer too, saved once), the optimizer's state, the metrics and RNG state."""
        return {"step": step, "params": state.data, "optimizer": opt.state_dict(), "metrics": fit.metrics,
                "epoch_sums": fit.epoch_sums, "rng": torch.get_rng_state()}

    def _resume(self, ckpts, state, opt, fit: Fit, progress) -> int:
        """The first optimizer step to run: 0, or the one after the newest whole checkpoint, whose
        state is copied into the parameters and the optimizer in place (the flat layout stays)."""
        if ckpts is None:
            return 0
        found = ckpts.latest()
        for note in found.notes:
            print(f"train: {note}", flush=True)
        if found.folder is None:
            if found.notes:
                print("train: no whole step checkpoint is left; training starts from its first step", flush=True)
            return 0
        saved = torch.load(found.folder / STATE, weights_only=True)
        with torch.no_grad():
            state.data.copy_(saved["params"])
        load_optimizer(opt, saved["optimizer"])
        fit.metrics[:] = saved["metrics"]
        fit.epoch_sums.copy_(saved["epoch_sums"])
        torch.set_rng_state(saved["rng"])
        step = found.step
        print(f"train: resumed after optimizer step {step + 1} of {len(fit.steps)} from {found.folder}", flush=True)
        if progress:
            progress(sum(len(s.rows) for slots in fit.steps[:step + 1] for s in fit.local_slots(slots)))
        return step + 1

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


def load_optimizer(opt: torch.optim.Optimizer, saved: dict) -> None:
    """Restore an optimizer's state_dict. Where its state already exists (AdamW's moments as views of
    one flat buffer, flat_state.adamw_state) the values are copied into it in place, so the layout
    stays; otherwise (RMSprop before its first step) torch's own load_state_dict."""
    params = [p for g in opt.param_groups for p in g["params"]]
    if not all(opt.state.get(p) for p in params):
        opt.load_state_dict(saved)
        return
    with torch.no_grad():
        for i, p in enumerate(params):
            for key, value in saved["state"][i].items():
                opt.state[p][key].copy_(value)
    for group, kept in zip(opt.param_groups, saved["param_groups"]):
        group.update({k: v for k, v in kept.items() if k != "params"})


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
