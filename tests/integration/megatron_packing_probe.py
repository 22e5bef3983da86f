"""torchrun worker for the shared-prompt packing tests: one batch, packed and unpacked, in one process.

    torchrun --nproc-per-node N tests/integration/megatron_packing_probe.py MODEL_DIR ROWS_JSONL OUT.pt \\
        --tp T --pp P [--micro ROWS] [--attention sdpa|local] [--loss sppo|dpo]

Runs the product's pieces (model.build_model, weights.load_hf_weights, DDP, packed.make_packed_micro_batch,
logps.make_micro_batch, logps.schedule_pass, weights.gather_full_state) on the rows cut into
consecutive micro-batches of ``--micro`` rows over the data-parallel ranks, twice: unpacked (one
sequence per prompt and response) and packed (neighbouring sequences with one prompt packed). Each
pass gives the forward-only sequence log-probs (rows, per_row), the per-token log-probs of every
sequence, the loss of one backward pass (SPPO eq. 3.7 or DPO eq. B.2 against the unpacked
log-probs minus 0.25, so it has a gradient) and the full, unsharded gradient after megatron's
all-reduce. Rank 0 writes {"unpacked": ..., "packed": ..., "packed_micro": how many micro-batches
were packed}. Needs cpu_patches/megatron_cpu_site on PYTHONPATH without CUDA.

    ... --steps BATCH_SIZE   (instead: the worker's own reference pass and optimizer steps)

runs :func:`sppo_nemo.backends.megatron.worker.reference_pass` and ``train_steps`` twice on the
rows (trainer.pack_prompts on, 2 epochs, micro-batches of BATCH_SIZE rows, grad_accum 2): as the
worker does, and with its micro-batches forced unpacked (the same plan, so the same rows per step).
Rank 0 writes {"packed"/"unpacked": {"reference", "metrics", "n_packed"}}.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("rows")
    ap.add_argument("out")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "local"])
    ap.add_argument("--loss", default="sppo", choices=["sppo", "dpo"])
    ap.add_argument("--steps", type=int, metavar="BATCH_SIZE")
    a = ap.parse_args()
    if a.steps:
        return worker_steps(a)

    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from sppo_nemo.backends.chat_format import ChatFormat, encode_rows
    from sppo_nemo.backends.hf import load_tokenizer
    from sppo_nemo.backends.megatron import logps, model as mdl, packed, weights
    from sppo_nemo.backends.megatron.arch import arch_from_hf_config
    from sppo_nemo.maths.loss import dpo_loss, sppo_loss
    from sppo_nemo.formats.rows import read_rows
    from sppo_nemo.maths.training import sequences_per_row

    device = mdl.init_parallel(a.tp, a.pp, seed=0)
    model_dir = Path(a.model)
    arch = arch_from_hf_config(json.loads((model_dir / "config.json").read_text()))
    model, cfg = mdl.build_model(arch, mdl.ModelOptions(attention=a.attention))
    weights.load_hf_weights(model, arch, model_dir)
    model = DistributedDataParallel(cfg, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    cfg.finalize_model_grads_func = finalize_model_grads
    cfg.no_sync_func = model.no_sync
    causal_mask = a.attention == "local"

    tok = load_tokenizer(str(model_dir))
    rows = read_rows(Path(a.rows))
    seqs = encode_rows(ChatFormat(tok, None), rows, 96, 128)
    per_row = sequences_per_row(rows)
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    chunks = [list(range(b, min(b + a.micro, len(rows)))) for b in range(0, len(rows), a.micro)][dp_rank::dp]

    def batches(pack: bool) -> list:
        out = []
        for ids in chunks:
            mb = packed.make_packed_micro_batch(ids, seqs, tok.pad_token_id, per_row) if pack else None
            out.append(mb or logps.make_micro_batch(ids, seqs, tok.pad_token_id, per_row))
        return out

    def one_pass(pack: bool, ref: dict | None) -> dict:
        micro = batches(pack)
        seq_lp, tokens = {}, {}

        def keep(mb, lp, tok_lp):
            counts = [len(e.response_ids) for i in mb.row_ids for e in seqs[i]]
            parts = tok_lp.detach().cpu().split(counts)
            for j, i in enumerate(mb.row_ids):
                seq_lp[i] = lp[j].detach().cpu()
                tokens[i] = [parts[j * per_row + k] for k in range(per_row)]
            return lp.sum() * 0.0

        model.eval()
        with torch.no_grad():
            logps.schedule_pass(model, micro, True, keep, device, causal_mask, arch.vocab_size)
        ref = ref or {i: v - 0.25 for i, v in seq_lp.items()}
        losses = []

        def loss(mb, lp, tok_lp):
            r = torch.stack([ref[i] for i in mb.row_ids]).to(lp.device)
            if a.loss == "sppo":
                p = torch.tensor([rows[i].win_prob for i in mb.row_ids])
                per = sppo_loss(lp[:, 0], r[:, 0], p, 10.0)
            else:
                per = dpo_loss(lp[:, 0], lp[:, 1], r[:, 0], r[:, 1], 0.5)
            losses.append(per.detach().sum().cpu())
            return per.mean()

        model.train()
        model.zero_grad_buffer()
        logps.schedule_pass(model, micro, False, loss, device, causal_mask, arch.vocab_size)
        grads = weights.gather_full_state(model, arch, of=lambda p: p.main_grad)
        return {"logps": seq_lp, "tokens": tokens, "loss": float(sum(losses)) if losses else 0.0, "grads": grads,
                "n_packed": sum(isinstance(mb, packed.PackedMicroBatch) for mb in micro), "ref": ref}

    unpacked = one_pass(False, None)
    pk = one_pass(True, unpacked["ref"])
    result = {}
    for name, r in (("unpacked", unpacked), ("packed", pk)):
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, {k: r[k] for k in ("logps", "tokens", "loss", "n_packed")})
        merged: dict = {"logps": {}, "tokens": {}, "loss": 0.0, "n_packed": 0}
        for g in gathered:  # the last pipeline stage of each data-parallel rank holds its rows
            if g and g["logps"]:
                merged["logps"].update(g["logps"])
                merged["tokens"].update(g["tokens"])
                merged["loss"] += g["loss"] / a.tp  # each tensor-parallel rank reports the same rows
                merged["n_packed"] = max(merged["n_packed"], g["n_packed"])
        merged["logps"] = torch.stack([merged["logps"][i] for i in range(len(rows))])
        merged["tokens"] = [merged["tokens"][i] for i in range(len(rows))]
        merged["grads"] = r["grads"]
        result[name] = merged
    if dist.get_rank() == 0:
        torch.save(result, a.out)
    dist.barrier()
    mdl.destroy_parallel()


def worker_steps(a) -> None:
    from megatron.core import parallel_state as ps

    from sppo_nemo.backends.megatron import logps, model as mdl, packed, worker
    from sppo_nemo.backends.megatron.controller import MegatronTrainer
    from sppo_nemo.schema.config import MegatronConfig, TrainerConfig
    from sppo_nemo.maths.training import sequences_per_row

    cfg = TrainerConfig(backend="megatron", lr=3e-3, warmup_ratio=0.0, batch_size=a.steps, grad_accum=2, epochs=2,
                        max_prompt_length=96, max_length=128, pack_prompts=True,
                        megatron=MegatronConfig(tensor_parallel=a.tp, pipeline_parallel=a.pp, attention=a.attention,
                                                nproc_per_node=int(os.environ["WORLD_SIZE"])))
    loss_type, eta = ("sppo", 10.0) if a.loss == "sppo" else ("dpo", 0.5)
    job = MegatronTrainer(cfg, loss_type, eta, None, seed=7).job(Path(a.model), Path(a.rows), Path(a.out).parent / "x")
    device = mdl.init_parallel(a.tp, a.pp, job.seed)
    result = {}
    for name in ("packed", "unpacked"):
        s = worker.set_up(job, device)
        made = []
        if name == "unpacked":  # the worker's plan and passes, its micro-batches as with pack_prompts off
            s.micro_batch = lambda rows, epoch=0, s=s: logps.make_micro_batch(
                rows, s.seqs, s.pad_id, sequences_per_row(s.rows), epoch=epoch)
        inner = s.micro_batch

        def counted(rows, epoch=0, inner=inner):
            mb = inner(rows, epoch)
            made.append(isinstance(mb, packed.PackedMicroBatch))
            return mb

        s.micro_batch = counted
        reference, _ = worker.reference_pass(s)
        fit = worker.train_steps(s, reference)
        result[name] = {"reference": reference.cpu(), "metrics": fit.metrics, "n_packed": sum(made),
                        "n_micro": len(made)}
    reporting = [None] * dist.get_world_size()
    dist.all_gather_object(reporting, result if s.reporting else None)
    if dist.get_rank() == 0:
        torch.save(next(r for r in reporting if r), a.out)
    dist.barrier()
    mdl.destroy_parallel()


if __name__ == "__main__":
    main()
