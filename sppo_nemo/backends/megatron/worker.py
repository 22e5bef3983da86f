"""One process of a megatron job, run under torchrun or srun in every rank:
``python -m sppo_nemo.backends.megatron JOB_DIR``.

It reads ``job.json`` (:class:`.job.Job`) and the build stage's rows, then

1. **set-up**: builds its shard of the GPTModel, loads π_t into it, wraps it in megatron's DDP
   (optionally the distributed optimizer) and encodes the rows;
2. **reference pass**: π_t's log-probabilities of every row, once, forward only, the rows split
   over data-parallel ranks and all-gathered;
3. **steps**: the plan of the one trainer core (:class:`sppo_nemo.maths.training.Fit`): the same seeded
   shuffle, ``grad_accum × DP`` micro-batches a step (data-parallel rank d takes the d-th run of
   ``grad_accum``), the recipe's loss on summed response-token log-probs; each micro-batch returns
   its mean row loss, megatron's schedule divides by the micro-batch count and DDP averages over
   data-parallel ranks, which is the torch trainer's mean / grad_accum. Padding slots of a short
   last step contribute nothing;
   With ``Job.state_dir`` and ``trainer.checkpoint_every`` set, a step checkpoint follows every
   due step (:class:`Checkpoints`): megatron's distributed checkpoint of the model and optimizer,
   each rank writing its own shards, and each rank's Fit state; a rerun resumes after the newest
   whole one, its reference log-probs read back instead of recomputed;
4. **export**: π_{t+1} streamed one tensor at a time onto global rank 0 (weights.export_hf: no rank but the
   writer holds the whole model) and written as an HF checkpoint; one rank
   writes ``result.json``.

Progress goes to stdout as true global counts from one rank (:func:`.job.progress_line`): the
rows of each step from the data-parallel totals, the reference pass's count all-reduced.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_config import TransformerConfig

from sppo_nemo.process import stopping
from sppo_nemo.process.allocator import keep_freed_memory
from sppo_nemo.backends.chat_format import ChatFormat, Encoded
from sppo_nemo.backends.hf import load_tokenizer
from sppo_nemo.backends.megatron.arch import Arch, UnsupportedModel, arch_from_hf_config
from sppo_nemo.backends.megatron.checkpoints import Checkpoints
from sppo_nemo.backends.megatron.job import STOPPED, Job, progress_line, read_job, write_result
from sppo_nemo.backends.megatron.logps import MicroBatch, make_micro_batch, schedule_pass
from sppo_nemo.backends.megatron.model import ModelOptions, build_model, destroy_parallel, init_parallel, use_te
from sppo_nemo.backends.megatron.packed import PackedMicroBatch, make_packed_micro_batch, reference_shares
from sppo_nemo.backends.megatron.weights import export_hf, load_hf_weights
from sppo_nemo.backends.chat_format import encode_rows, row_tokens
from sppo_nemo.schema.protocols import TrainResult
from sppo_nemo.formats.rows import read_rows
from sppo_nemo.maths.training import DIVERGED_FIX, Fit, Slot, StepStats, TrainingDiverged, sequences_per_row


@dataclass
class Setup:
    """What the reference pass, the steps and the export share."""

    job: Job
    arch: Arch
    opts: ModelOptions
    te: bool  # Transformer Engine layers
    model: DistributedDataParallel
    cfg: TransformerConfig
    device: torch.device
    rows: list
    seqs: list[list[Encoded]]  # [response] per point row, [chosen, rejected] per pair row
    pad_id: int

    @property
    def shares_prompts(self) -> bool:
        """trainer.pack_prompts where the attention keeps its fused kernel with the block mask: SDPA
        and megatron's local attention do; Transformer Engine does not (model.build_model), so under
        TE the micro-batches are right-padded and causal."""
        return self.job.trainer.pack_prompts and not self.te

    @property
    def reporting(self) -> bool:
        """One rank of the last pipeline stage reports progress and writes the result."""
        return (ps.is_pipeline_last_stage() and ps.get_data_parallel_rank() == 0
                and ps.get_tensor_model_parallel_rank() == 0)

    def report(self, kind: str, n: int) -> None:
        if self.reporting and n:
            sys.stdout.write(progress_line(kind, n) + "\n")  # one write: under python -u print makes two,
            sys.stdout.flush()  # and another process's stderr could land between the report and its newline

    def micro_batch(self, row_ids, epoch: int = 0) -> MicroBatch | PackedMicroBatch:
        """The rows' micro-batch; with trainer.pack_prompts, neighbouring sequences that share their
        prompt packed into one (:mod:`.packed`), when any do."""
        # sequence parallelism splits the sequence over TP ranks: widths must be a multiple of TP
        multiple = ps.get_tensor_model_parallel_world_size() if self.cfg.sequence_parallel else 1
        per_row = sequences_per_row(self.rows)
        if self.shares_prompts:
            packed = make_packed_micro_batch(row_ids, self.seqs, self.pad_id, per_row, multiple, epoch=epoch)
            if packed is not None:
                return packed
        return make_micro_batch(row_ids, self.seqs, self.pad_id, per_row, multiple, epoch=epoch)

    def run(self, micro: list, forward_only: bool, on_logps) -> None:
        causal_mask = not self.te and self.opts.attention == "local"
        schedule_pass(self.model, micro, forward_only, on_logps, self.device, causal_mask, self.arch.vocab_size)


def set_up(job: Job, device: torch.device) -> Setup:
    """This rank's model shard holding π_t, wrapped for bf16 and DDP, and the encoded rows."""
    c, m = job.trainer, job.trainer.megatron
    arch = arch_from_hf_config(json.loads((job.policy_dir / "config.json").read_text()), accept_window=True)
    # the recipe check holds the window to trainer.max_length where it can read config.json without the
    # network; a hub id it could not read is checked here
    window = arch.window_problem(c.max_length)
    if window:
        raise UnsupportedModel(f"trainer.max_length: {c.max_length}; {window}")
    opts = ModelOptions(precision=c.precision, transformer_engine=m.transformer_engine, recompute=m.recompute,
                        sequence_parallel=m.sequence_parallel, attention=m.attention)
    model, cfg = build_model(arch, opts)
    if device.type == "cuda":
        model.cuda(device)
    load_hf_weights(model, arch, job.policy_dir)
    if opts.precision == "bf16":
        model = Float16Module(cfg, model)
    ddp_cfg = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=m.overlap_grad_reduce,
                                            use_distributed_optimizer=m.distributed_optimizer)
    model = DistributedDataParallel(cfg, ddp_cfg, model)
    model.broadcast_params()  # identical replicas across data parallel ranks

    tok = load_tokenizer(str(job.policy_dir))
    rows = read_rows(job.rows_file)
    seqs = encode_rows(ChatFormat(tok, job.system_prompt), rows, c.max_prompt_length, c.max_length)
    return Setup(job=job, arch=arch, opts=opts, te=use_te(opts), model=model, cfg=cfg, device=device, rows=rows,
                 seqs=seqs, pad_id=tok.pad_token_id if tok.pad_token_id is not None else 0)


def reference_pass(s: Setup) -> tuple[torch.Tensor, float]:
    """π_t's (rows, 1 or 2) sequence log-probs, the reference of eq. 3.7 and B.1–B.3, on the last
    pipeline stage (zeros elsewhere), and the seconds it took. Data-parallel rank d computes its
    share of the rows (:func:`.packed.reference_shares`: rows d, d+DP, ...; packing prompts, a
    contiguous block in prompt order, so a prompt's rows share micro-batches); the ranks then
    all-gather."""
    t0 = time.time()
    n, per_row = len(s.rows), sequences_per_row(s.rows)
    dp, dp_rank, dp_group = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank(), ps.get_data_parallel_group()
    s.model.eval()
    shares = reference_shares(s.rows, dp, s.job.trainer.batch_size, s.job.trainer.pack_prompts)
    assigned = [[i for ch in share for i in ch] for share in shares]
    slot = {i: k for k, i in enumerate(assigned[dp_rank])}
    ref_local = torch.zeros(max(1, max(len(a) for a in assigned)), per_row, dtype=torch.float32, device=s.device)
    chunks = list(shares[dp_rank])
    n_chunks = torch.tensor([len(chunks)], device=s.device)
    dist.all_reduce(n_chunks, op=dist.ReduceOp.MAX, group=dp_group)
    chunks += [[]] * (int(n_chunks.item()) - len(chunks))  # equal pass counts keep DDP/pipeline in step
    done = torch.zeros(1, dtype=torch.float64, device=s.device)

    def keep_ref(mb, lp: torch.Tensor, _tok) -> torch.Tensor:
        for j, i in enumerate(mb.row_ids):
            ref_local[slot[i]] = lp[j].detach().float()
        done.add_(len(mb.row_ids))
        return lp.sum() * 0.0

    with torch.no_grad():
        if chunks:
            s.run([s.micro_batch(ch) for ch in chunks], True, keep_ref)
    reference = torch.zeros(n, per_row, dtype=torch.float32, device=s.device)
    if ps.is_pipeline_last_stage():
        gathered = [torch.empty_like(ref_local) for _ in range(dp)]
        dist.all_gather(gathered, ref_local, group=dp_group)
        for r in range(dp):
            if assigned[r]:
                reference[assigned[r]] = gathered[r][:len(assigned[r])]
        dist.all_reduce(done, group=dp_group)
        s.report("ref", int(done.item()))
    return reference, time.time() - t0


def _optimizer(s: Setup):
    """Megatron's Adam (betas 0.9/0.999, eps 1e-8, as the torch trainer's AdamW) with gradient
    clipping at trainer.max_grad_norm, wired into the model's gradient synchronisation."""
    c, m = s.job.trainer, s.job.trainer.megatron
    opt_cfg = OptimizerConfig(
        optimizer="adam", lr=c.lr, weight_decay=c.weight_decay, adam_beta1=0.9, adam_beta2=0.999,
        adam_eps=1e-8, clip_grad=c.max_grad_norm, bf16=s.opts.precision == "bf16",
        params_dtype=s.cfg.params_dtype, use_distributed_optimizer=m.distributed_optimizer)
    optimizer = get_megatron_optimizer(opt_cfg, [s.model])
    s.cfg.finalize_model_grads_func = finalize_model_grads
    s.cfg.no_sync_func = s.model.no_sync
    if m.overlap_grad_reduce:
        s.cfg.grad_sync_func = s.model.start_grad_sync
    return optimizer


def train_steps(s: Setup, reference: torch.Tensor, fit: Fit | None = None, optimizer=None, start: int = 0,
                ckpts: Checkpoints | None = None) -> Fit:
    """Every optimizer step of the plan from ``start``; on the reporting rank the returned Fit holds
    the metrics. After each due step, a step checkpoint (``ckpts``)."""
    dp_rank, dp_group = ps.get_data_parallel_rank(), ps.get_data_parallel_group()
    last = ps.is_pipeline_last_stage()
    fit = fit if fit is not None else Fit(s.rows, s.job.trainer, s.job.loss_type, s.job.eta, s.job.seed,
                                          dp=s.job.layout.data, grad_accum=s.job.layout.grad_accum,
                                          keep_prompts=s.job.trainer.pack_prompts)
    optimizer = optimizer if optimizer is not None else _optimizer(s)
    s.model.train()
    for step, slots in enumerate(fit.steps):
        if step < start:
            continue
        t_step = time.time()
        micro = [s.micro_batch(slot.rows, epoch=max(slot.epoch, 0)) for slot in fit.local_slots(slots, dp_rank)]
        stats = StepStats()

        def train_loss(mb, lp: torch.Tensor, _tok) -> torch.Tensor:
            if not mb.row_ids:
                return lp.sum() * 0.0
            per_row = fit.micro_loss(Slot(tuple(mb.row_ids), mb.epoch), lp, reference[mb.row_ids], stats,
                                     row_tokens(s.seqs, mb.row_ids))
            return per_row.mean()  # the schedule divides by the micro-batch count (grad_accum)

        lr = fit.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        s.model.zero_grad_buffer()
        optimizer.zero_grad()
        s.run(micro, False, train_loss)
        ok, grad_norm, _ = optimizer.step()
        if not ok:  # megatron's optimizer skips a step with non-finite gradients: the core's divergence
            raise TrainingDiverged(f"training diverged at optimizer step {step} of {len(fit.steps)}: non-finite "
                                   f"gradients, so megatron's optimizer skipped the step (lr {lr:.3g}); {DIVERGED_FIX}")
        if last:
            totals = stats.reduce(dp_group, s.device)
            if s.reporting:
                fit.end_step(step, lr, float(grad_norm), time.time() - t_step, totals)
            s.report("train", int(totals[1].item()))  # the step's rows over every data-parallel rank
        if ckpts is not None:
            ckpts.after_step(step, optimizer, fit)
    if last:
        sums = fit.epoch_sums.to(s.device)
        dist.all_reduce(sums, group=dp_group)
        fit.epoch_sums.copy_(sums.cpu())
    return fit


def probe_pass(s: Setup, fit: Fit, reference: torch.Tensor) -> None:
    """π_{t+1}'s log-probs of the fixed probe rows (:attr:`Fit.probe`), recorded in ``fit`` on the
    reporting rank: the loss on the same rows before and after training. Every data-parallel rank
    runs the same few micro-batches (64 rows at most), forward only, so the pipeline stays in step."""
    per_row = sequences_per_row(s.rows)
    got = torch.zeros(len(fit.probe), per_row, dtype=torch.float32, device=s.device)
    slot = {i: k for k, i in enumerate(fit.probe)}

    def keep(mb, lp: torch.Tensor, _tok) -> torch.Tensor:
        for j, i in enumerate(mb.row_ids):
            got[slot[i]] = lp[j].detach().float()
        return lp.sum() * 0.0

    size = s.job.trainer.batch_size
    chunks = [fit.probe[b:b + size] for b in range(0, len(fit.probe), size)]
    s.model.eval()
    with torch.no_grad():
        if chunks:
            s.run([s.micro_batch(ch) for ch in chunks], True, keep)
    if s.reporting:
        fit.record_probe(got.cpu(), reference[fit.probe].cpu())


def export(s: Setup, fit: Fit, ref_seconds: float, job_dir: Path, extra: dict | None = None) -> None:
    """π_{t+1} as an HF checkpoint (global rank 0 writes it), and the result (the reporting rank)."""
    export_hf(s.model, s.arch, s.job.policy_dir, s.job.output_dir, s.opts.precision)  # streamed onto rank 0
    if s.reporting:
        summary = fit.summary(
            ref_seconds,
            parallel={"tensor": ps.get_tensor_model_parallel_world_size(),
                      "pipeline": ps.get_pipeline_model_parallel_world_size(),
                      "data": ps.get_data_parallel_world_size()},
            transformer_engine=s.te,
            attention="te" if s.te else s.opts.attention,
            **(extra or {}),
        )
        write_result(job_dir, TrainResult(metrics=fit.metrics, summary=summary))
    dist.barrier()


def run_job(job_dir: Path) -> None:
    job = read_job(job_dir)
    device = init_parallel(job.layout.tensor, job.layout.pipeline, job.seed)
    if device.type == "cpu":  # the CPU engines' allocator setting (sppo_nemo/process/allocator.py), not a GPU worker's
        keep_freed_memory()
    try:
        s = set_up(job, device)
        fit = Fit(s.rows, job.trainer, job.loss_type, job.eta, job.seed, dp=job.layout.data,
                  grad_accum=job.layout.grad_accum, keep_prompts=job.trainer.pack_prompts)
        ckpts = Checkpoints.of(s, len(fit.steps))
        # with step checkpoints, from the reference pass on a signal stops training at the next step
        # boundary, saved there (Checkpoints.after_step)
        with stopping.at_step_boundaries() if ckpts is not None else contextlib.nullcontext():
            reference, ref_seconds = ckpts.reference(s, reference_pass) if ckpts is not None else reference_pass(s)
            optimizer = _optimizer(s)
            start = ckpts.resume(optimizer, fit) if ckpts is not None else 0
            fit = train_steps(s, reference, fit, optimizer, start, ckpts)
        probe_pass(s, fit, reference)
        extra = {"resumed_at_step": start, "checkpoints_written": ckpts.written if ckpts else 0,
                 "checkpoint_seconds": round(ckpts.seconds, 3) if ckpts else 0.0}
        export(s, fit, ref_seconds, job_dir, extra)
    finally:
        destroy_parallel()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sppo_nemo.backends.megatron JOB_DIR", file=sys.stderr)
        return 2
    stopping.install()  # SIGTERM/SIGUSR1 (torchrun passes sppo-run's stop on): a checkpoint, then exit 143
    try:
        run_job(Path(argv[0]))
    except stopping.Terminated as exc:  # global rank 0 says what was kept
        if exc.kept and os.environ.get("RANK", "0") == "0":
            print(f"{STOPPED}{exc.signal_name}\t{exc.kept}", flush=True)
        return 143
    return 0
