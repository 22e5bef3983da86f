"""torchrun worker for the megatron tests: per-token log-probs and gradients of one SPPO batch.

    torchrun --nproc-per-node N tests/integration/megatron_probe.py MODEL_DIR ROWS_JSONL OUT.pt \\
        --tp T --pp P [--micro ROWS]

Runs the product's own pieces (model.build_model, weights.load_hf_weights, DDP,
logps.schedule_pass, weights.gather_full_state) on 8 rows split into micro-batches of ``--micro``
rows over the data-parallel ranks, with the SPPO loss (eq. 3.7) against a reference of π_t's
log-probs minus 0.25 (so the loss has a gradient), and writes on rank 0: the per-token log-probs
of every row (response positions, row order) and the full, unsharded gradient of every parameter
after megatron's gradient all-reduce. Needs the CPU patches of cpu_patches/megatron_cpu_site on
PYTHONPATH when run without CUDA.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.distributed as dist

CONVERT_LENGTH = 48  # tokens of each --convert sequence


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("rows")
    ap.add_argument("out")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--micro", type=int, default=4)
    ap.add_argument("--eta", type=float, default=10.0)
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "local"])
    ap.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    ap.add_argument("--sequence-parallel", action="store_true")
    ap.add_argument("--convert", metavar="HF_OUT", help="instead: save the logits of fixed ids (vocab gathered "
                    "over TP) to OUT.pt and export the loaded model back to an HF checkpoint in HF_OUT")
    a = ap.parse_args()

    import json

    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    from sppo_nemo.backends.chat_format import ChatFormat
    from sppo_nemo.backends.hf import load_tokenizer
    from sppo_nemo.backends.megatron import logps, model as mdl, weights
    from sppo_nemo.backends.megatron.arch import arch_from_hf_config
    from sppo_nemo.backends.chat_format import encode_rows
    from sppo_nemo.maths.loss import sppo_loss
    from sppo_nemo.formats.rows import read_rows

    device = mdl.init_parallel(a.tp, a.pp, seed=0)
    model_dir = Path(a.model)
    arch = arch_from_hf_config(json.loads((model_dir / "config.json").read_text()), accept_window=True)
    longest = min(CONVERT_LENGTH, arch.max_position_embeddings) if a.convert else 128  # encode_rows' max_length
    assert arch.window_problem(longest) is None, arch.window_problem(longest)  # as the worker refuses it
    model, cfg = mdl.build_model(arch, mdl.ModelOptions(attention=a.attention, recompute=a.recompute,
                                                        sequence_parallel=a.sequence_parallel))
    weights.load_hf_weights(model, arch, model_dir)
    if a.convert:
        convert(model, arch, model_dir, Path(a.convert), a.out, device, a.attention == "local")
        return
    model = DistributedDataParallel(cfg, DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    cfg.finalize_model_grads_func = finalize_model_grads
    cfg.no_sync_func = model.no_sync

    tok = load_tokenizer(str(model_dir))
    fmt = ChatFormat(tok, None)
    rows = read_rows(Path(a.rows))
    seqs = encode_rows(fmt, rows, 96, 128)
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    chunks = [list(range(b, min(b + a.micro, len(rows)))) for b in range(0, len(rows), a.micro)]
    mine = chunks[dp_rank::dp]
    multiple = a.tp if a.sequence_parallel else 1
    micro = [logps.make_micro_batch(ids, seqs, tok.pad_token_id, 1, multiple) for ids in mine]

    tokens: dict[int, torch.Tensor] = {}
    ref: dict[int, torch.Tensor] = {}

    def keep(mb, lp, tok_lp):
        counts = mb.resp_mask.sum(dim=1).long().tolist()  # response tokens of each sequence (= row here)
        for j, (i, part) in enumerate(zip(mb.row_ids, tok_lp.detach().cpu().split(counts))):
            tokens[i] = part
            ref[i] = lp[j, 0].detach() - 0.25
        return lp.sum() * 0.0

    model.eval()
    with torch.no_grad():
        logps.schedule_pass(model, micro, True, keep, device, a.attention == "local", arch.vocab_size)

    def loss(mb, lp, tok_lp):
        p = torch.tensor([rows[i].win_prob for i in mb.row_ids])
        r = torch.stack([ref[i] for i in mb.row_ids])
        return sppo_loss(lp[:, 0], r, p, a.eta).mean()

    model.train()
    model.zero_grad_buffer()
    logps.schedule_pass(model, micro, False, loss, device, a.attention == "local", arch.vocab_size)
    grads = weights.gather_full_state(model, arch, of=lambda p: p.main_grad)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, tokens)
    if dist.get_rank() == 0:
        # main_grad is a view into DDP's flat gradient buffer: each gathered tensor must own just its
        # own bytes (pickling a view writes the whole buffer; that once multiplied memory by ~300)
        for k, v in grads.items():
            assert v.untyped_storage().nbytes() == v.numel() * v.element_size(), k
        all_tokens = {}
        for t in gathered:
            all_tokens.update(t or {})
        torch.save({"tokens": [all_tokens[i] for i in range(len(rows))], "grads": grads}, a.out)
    dist.barrier()
    mdl.destroy_parallel()


def convert(model, arch, model_dir: Path, hf_out: Path, out: str, device, causal_mask: bool) -> None:
    from megatron.core import parallel_state as ps

    from sppo_nemo.backends.megatron import logps, model as mdl, weights

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, arch.vocab_size, (2, min(CONVERT_LENGTH, arch.max_position_embeddings)), generator=g)
    mb = logps.MicroBatch(row_ids=[0, 1], ids=ids, targets=ids, resp_mask=torch.ones_like(ids, dtype=torch.float),
                       per_row=1)
    model.eval()
    with torch.no_grad():
        logits = logps.forward_logits(model, mb, device, causal_mask)
    parts = [torch.empty_like(logits) for _ in range(ps.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
    full = weights.gather_full_state(model, arch)
    if dist.get_rank() == 0:
        weights.save_hf(full, arch, model_dir, hf_out, "fp32")
        torch.save({"ids": ids, "logits": torch.cat(parts, dim=-1)[..., : arch.vocab_size]}, out)
    dist.barrier()
    mdl.destroy_parallel()


if __name__ == "__main__":
    main()
