"""torchrun worker of tests/gpu/test_megatron_cuda_packing_export.py: the megatron worker's own
pieces on one GPU (world size 1), for each precision, packed against unpacked, and the export.

    torchrun --standalone --nproc-per-node 1 tests/gpu/megatron_cuda_probe.py MODEL_DIR ROWS_JSONL OUT_DIR \\
        --te off|on [--precisions fp32,bf16]

For each precision it runs :func:`worker.set_up`, :func:`worker.reference_pass` and
:func:`worker.train_steps` (trainer.pack_prompts on, 2 epochs) twice: as the worker does (packed
where ``Setup.shares_prompts``: SDPA packs a prompt's responses behind it; under Transformer Engine
the worker shares no prompt and every micro-batch stays a plain causal one) and with every
micro-batch forced unpacked (the same plan, so the same rows per step). Around the packed run it
exports with :func:`weights.export_hf` (the streaming export onto rank 0): once before the first
step, which must give back π_t's own tensors, and once after the last, beside the trained model's
sequence log-probs of every row (forward only, unpacked), which transformers must reproduce from
the exported checkpoint. Under TE it also records which attention backend TE chose last.

Rank 0 writes OUT_DIR/probe.pt: {precision: {"packed"|"unpacked": {"reference", "metrics",
"n_packed", "n_micro", "te", "shares_prompts"}, "after_logps", "export_initial", "export_trained",
"te_attention"}}. Without CUDA it runs over gloo only with cpu_patches/megatron_cpu_site on PYTHONPATH
(how it was checked on a CPU); the GPU test runs it on CUDA with NCCL and no patches.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist


def te_attention_backends() -> dict | None:
    """Transformer Engine's last attention choice (which of flash, fused (cuDNN), unfused it used),
    where this TE version exposes it; None otherwise."""
    for module in ("transformer_engine.pytorch.attention.dot_product_attention",
                   "transformer_engine.pytorch.attention"):
        try:
            mod = __import__(module, fromlist=["_attention_backends"])
            chosen = getattr(mod, "_attention_backends")
        except (ImportError, AttributeError):
            continue
        return {k: chosen.get(k) for k in ("use_flash_attention", "use_fused_attention", "use_unfused_attention")
                if k in chosen}
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("rows")
    ap.add_argument("out")
    ap.add_argument("--te", default="off", choices=["off", "on"])
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--batch-size", type=int, default=3)
    a = ap.parse_args()

    from sppo_nemo.backends.megatron import logps, model as mdl, packed, weights, worker
    from sppo_nemo.backends.megatron.controller import MegatronTrainer
    from sppo_nemo.schema.config import MegatronConfig, TrainerConfig
    from sppo_nemo.maths.training import sequences_per_row

    out = Path(a.out)
    result: dict = {}
    device = None
    for precision in a.precisions.split(","):
        cfg = TrainerConfig(backend="megatron", lr=3e-3, warmup_ratio=0.0, batch_size=a.batch_size, grad_accum=2,
                            epochs=2, precision=precision, max_prompt_length=96, max_length=128, pack_prompts=True,
                            megatron=MegatronConfig(transformer_engine=a.te, attention="sdpa"))
        job = MegatronTrainer(cfg, "sppo", 10.0, None, seed=7).job(Path(a.model), Path(a.rows), out / "unused")
        if device is None:
            device = mdl.init_parallel(1, 1, job.seed)
        got: dict = {}
        for name in ("packed", "unpacked"):
            s = worker.set_up(job, device)
            per_row = sequences_per_row(s.rows)
            if name == "packed":
                weights.export_hf(s.model, s.arch, job.policy_dir, out / f"export-initial-{precision}", precision)
                got["export_initial"] = str(out / f"export-initial-{precision}")
            else:  # the worker's plan and passes, its micro-batches as with pack_prompts off
                s.micro_batch = lambda rows, epoch=0, s=s, per_row=per_row: logps.make_micro_batch(
                    rows, s.seqs, s.pad_id, per_row, epoch=epoch)
            made = []
            inner = s.micro_batch

            def counted(rows, epoch=0, inner=inner, made=made):
                mb = inner(rows, epoch)
                made.append(isinstance(mb, packed.PackedMicroBatch))
                return mb

            s.micro_batch = counted
            reference, _ = worker.reference_pass(s)
            fit = worker.train_steps(s, reference)
            got[name] = {"reference": reference.cpu(), "metrics": fit.metrics, "n_packed": sum(made),
                         "n_micro": len(made), "te": s.te, "shares_prompts": s.shares_prompts}
            if s.te:
                got["te_attention"] = te_attention_backends()
            if name == "packed":  # the trained model's log-probs, then its export
                after = torch.zeros(len(s.rows), per_row, dtype=torch.float32)

                def keep(mb, lp, _tok):
                    after[mb.row_ids] = lp.detach().float().cpu()
                    return lp.sum() * 0.0

                chunks = [list(range(b, min(b + a.batch_size, len(s.rows)))) for b in range(0, len(s.rows),
                                                                                           a.batch_size)]
                s.model.eval()
                with torch.no_grad():
                    s.run([logps.make_micro_batch(ch, s.seqs, s.pad_id, per_row) for ch in chunks], True, keep)
                got["after_logps"] = after
                weights.export_hf(s.model, s.arch, job.policy_dir, out / f"export-trained-{precision}", precision)
                got["export_trained"] = str(out / f"export-trained-{precision}")
            del s
        result[precision] = got
    if dist.get_rank() == 0:
        torch.save(result, out / "probe.pt")
    dist.barrier()
    mdl.destroy_parallel()


if __name__ == "__main__":
    main()
