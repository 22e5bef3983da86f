"""Step checkpoints of a megatron job (sppo_nemo/formats/step_checkpoints.py's folder policy), in
``Job.state_dir``: megatron-core's distributed checkpointing of the model and the optimizer, every
rank writing its own shards, and each rank's share of the trainer core's state. Used by
:mod:`.worker`; the decisions (due, which checkpoint, the reference kept) are global rank 0's,
broadcast, so the ranks stay in step.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from sppo_nemo.process import stopping
from sppo_nemo.formats.step_checkpoints import CheckpointDue, StepCheckpoints, parse_period, saved_words
from sppo_nemo.maths.training import Fit

Setup = Any  # the worker's Setup (.worker imports this module, so not the other way round)

DIST = "dist"  # megatron's distributed checkpoint (every rank's shards) inside a step checkpoint
REFERENCE = "reference.pt"
# the distributed optimizer's format whose save and load need no communication (each rank its own
# buffers); megatron-core 0.16's default, "fully_sharded_model_space", is refused by its own
# ShardedTensor check (flattened_range)
SHARDED_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def _broadcast_int(value: int, device: torch.device) -> int:
    """Global rank 0's ``value`` on every rank."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


class Checkpoints:
    """The megatron job's step checkpoints (sppo_nemo/formats/step_checkpoints.py) in ``Job.state_dir``.

    A checkpoint is a folder ``checkpoints/step_NNNNNN/`` holding ``dist/`` (megatron's
    dist_checkpointing of the model and the optimizer: every rank writes its own shards) and
    ``fit_R.pt`` per global rank R (its Fit's metrics and epoch sums, the step, the layout). Global
    rank 0 alone touches the folders' names: it makes the ``.tmp`` folder, and once every rank has
    written (dist_checkpointing.save ends in a barrier) fsyncs, hashes and renames it. Every decision
    — whether a step is due (the clock is rank 0's), which checkpoint to resume from, whether the
    reference is kept — is rank 0's, broadcast, so the ranks stay in step. The reference
    log-probs are written once by the reporting rank (a last pipeline stage holds them)."""

    def __init__(self, s: Setup, plan_steps: int):
        self.s = s
        self.store = StepCheckpoints(s.job.state_dir, plan_steps)
        self.period = parse_period(s.job.trainer.checkpoint_every)
        self.due = CheckpointDue(self.period)
        self.rank = dist.get_rank()
        self.written, self.seconds = 0, 0.0

    @staticmethod
    def of(s: Setup, plan_steps: int) -> Checkpoints | None:
        if s.job.state_dir is None or parse_period(s.job.trainer.checkpoint_every).off:
            return None
        return Checkpoints(s, plan_steps)

    # --- the reference, once
    def reference(self, s: Setup, compute) -> tuple[torch.Tensor, float]:
        """π_t's log-probs: read back when a killed attempt kept them, else ``compute(s)`` (the
        worker's reference pass), kept for the next attempt."""
        kept = _broadcast_int(int(self.store.reference() is not None) if self.rank == 0 else 0, s.device)
        if kept:
            reference = torch.load(self.store.reference_dir / REFERENCE, weights_only=True).to(s.device)
            s.report("ref", len(s.rows))
            return reference, 0.0
        reference, seconds = compute(s)
        if s.reporting:
            self.store.save_reference(lambda d: torch.save(reference.cpu(), d / REFERENCE))
        return reference, seconds

    # --- save
    def _sharded(self, optimizer, loading: bool) -> dict:
        model_sd = self.s.model.module.sharded_state_dict(metadata=SHARDED_METADATA)
        return {"model": model_sd,
                "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=loading, metadata=SHARDED_METADATA)}

    def after_step(self, step: int, optimizer, fit: Fit) -> None:
        """A checkpoint if one is due, or if a stop was asked for (SIGTERM/SIGUSR1, which torchrun
        passes to every rank; rank 0's decides), then :class:`stopping.Terminated` naming it."""
        flag = 0
        if self.rank == 0:
            flag = int(self.due(step)) | (2 if stopping.requested() else 0)
        flag = _broadcast_int(flag, self.s.device)
        if not flag:
            return
        self._save(step, optimizer, fit)
        if flag & 2:
            name = stopping.requested() or "SIGTERM"
            stopping.acted_on()
            raise stopping.Terminated(name, saved_words(step, len(fit.steps), self.store.folder(step)))

    def _save(self, step: int, optimizer, fit: Fit) -> None:
        from megatron.core import dist_checkpointing

        t0 = time.time()
        if self.rank == 0:
            (self.store.begin(step) / DIST).mkdir()
        dist.barrier()
        tmp = self.store.tmp_folder(step)
        torch.save({"step": step, "metrics": fit.metrics, "epoch_sums": fit.epoch_sums,
                    "world": dist.get_world_size()}, tmp / f"fit_{self.rank}.pt")
        dist_checkpointing.save(self._sharded(optimizer, False), str(tmp / DIST))  # ends in a barrier
        if self.rank == 0:
            self.store.commit(step, tmp)
        self.due.written()
        self.written += 1
        self.seconds += time.time() - t0

    # --- resume
    def resume(self, optimizer, fit: Fit) -> int:
        """The first step to run: 0, or the one after the newest whole checkpoint, loaded into the
        model, the optimizer and ``fit`` on every rank."""
        step = -1
        if self.rank == 0:
            found = self.store.latest()
            for note in found.notes:
                print(f"train: {note}", flush=True)
            if found.folder is not None:
                saved = torch.load(found.folder / f"fit_{self.rank}.pt", weights_only=True)
                if saved.get("world") == dist.get_world_size():
                    step = found.step
                else:
                    print(f"train: checkpoint {found.folder.name} was written by {saved.get('world')} processes, "
                          f"this job has {dist.get_world_size()}; passed over", flush=True)
            if step < 0 and found.notes:
                print("train: no whole step checkpoint is left; training starts from its first step", flush=True)
        step = _broadcast_int(step, self.s.device)
        if step < 0:
            return 0
        from megatron.core import dist_checkpointing

        folder = self.store.folder(step)
        _initialise_adam_state(optimizer)
        loaded = dist_checkpointing.load(self._sharded(optimizer, True), str(folder / DIST))
        self.s.model.module.load_state_dict(loaded["model"])
        with torch.no_grad():  # fp32 distributed optimizer: its main params are views of the model's
            optimizer.load_state_dict(loaded["optimizer"])
        _set_adam_steps(optimizer, step + 1)
        saved = torch.load(folder / f"fit_{self.rank}.pt", weights_only=True)
        fit.metrics[:] = saved["metrics"]
        fit.epoch_sums.copy_(saved["epoch_sums"])
        if self.s.reporting:
            print(f"train: resumed after optimizer step {step + 1} of {len(fit.steps)} from {folder}", flush=True)
            done = sum(len(slot.rows) for slots in fit.steps[:step + 1] for slot in slots)
            self.s.report("train", done)
        dist.barrier()
        return step + 1


def _initialise_adam_state(optimizer) -> None:
    """Give torch's Adam (megatron's optimizer without Apex or Transformer Engine) its state before
    a load: megatron-core's DistributedOptimizer.state_dict asserts one "step" over the states
    (distrib_optimizer.py, ``assert len(steps) == 1``), which a fresh optimizer has none of. The
    zeros are overwritten by the load."""
    for o in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = o.optimizer
        if not isinstance(inner, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        for group in inner.param_groups:
            for p in group["params"]:
                if not inner.state[p]:
                    inner.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                      "exp_avg_sq": torch.zeros_like(p)}


def _set_adam_steps(optimizer, n: int) -> None:
    """Give each parameter's torch-Adam state its own "step" tensor holding ``n`` (the updates
    done) after a load. Without Apex or Transformer Engine, megatron-core 0.16's
    DistributedOptimizer.load_state_dict leaves one tensor shared by every state
    (distrib_optimizer.py: ``s["step"] = step``), which torch's Adam would then advance once per
    parameter per update, and on CPU it came back as 0 after a dist_checkpointing load (the moments
    and main parameters came back exact): either way Adam's bias correction after a resume would
    be wrong. Every step of the plan is an update (a skipped one raises), so ``n`` is exact."""
    for o in getattr(optimizer, "chained_optimizers", [optimizer]):
        for state in o.optimizer.state.values():
            if isinstance(state.get("step"), torch.Tensor):
                state["step"] = torch.full_like(state["step"], float(n))
