"""The SPPO training step of the megatron backend on one GPU: tokens/s and model FLOP utilisation.

    python benchmarks/bench_megatron_step.py [--attention sdpa|local|te] [--micro 4] [--seq 2048] ...

A Llama-3.2-1B-shaped decoder (hidden 2048, 16 layers, 32 heads, 8 key/value heads, MLP 8192,
vocabulary 128256, tied; 1.24 B parameters) with random weights, bf16 with fp32 main parameters
and gradients (megatron's distributed optimizer), sequences of --seq tokens. One optimizer step =
--accum micro-batches of --micro sequences through the product's own schedule pass and SPPO loss
(sppo_nemo.backends.megatron.logps.schedule_pass). Also times the forward-only reference pass.

MFU = model FLOPs per second / the device's bf16 peak *measured here* (an 8192³ bf16 matmul).
Model FLOPs per token of a training step: 6·N + 6·L·s·d, N the matmul parameters (layers and the
output layer), L layers, s sequence length, d hidden: the causal attention term (half of the
12·L·s·d of the dense-attention formula, since a causal kernel skips the masked half). The
dense-attention figure is printed too. Needs CUDA; megatron-core is the only extra package.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch


def measured_bf16_peak(n: int = 8192, reps: int = 10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--micro", type=int, default=4, help="sequences per micro-batch")
    ap.add_argument("--accum", type=int, default=2, help="micro-batches per optimizer step")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "local", "te"])
    ap.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    ap.add_argument("--json", help="append the figures as one JSON line to this file")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531", "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(k, v)

    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer.module import Float16Module

    from sppo_nemo.backends.megatron import model as mdl
    from sppo_nemo.backends.megatron.arch import Arch
    from sppo_nemo.backends.megatron.logps import MicroBatch, schedule_pass
    from sppo_nemo.backends.megatron.weights import mark_tensor_parallel
    from sppo_nemo.loss import sppo_loss

    peak = measured_bf16_peak()
    device = mdl.init_parallel(1, 1, seed=0)
    arch = Arch(family="llama", model_type="llama", num_layers=a.layers, hidden_size=a.hidden,
                num_attention_heads=a.heads, num_query_groups=a.kv_heads, kv_channels=a.hidden // a.heads,
                ffn_hidden_size=a.ffn, vocab_size=a.vocab, max_position_embeddings=a.seq, norm_eps=1e-5,
                tied=True, qkv_bias=False, rotary_base=500000.0)
    opts = mdl.ModelOptions(precision="bf16", transformer_engine="on" if a.attention == "te" else "off",
                            recompute=a.recompute, attention="sdpa" if a.attention == "te" else a.attention)
    model, cfg = mdl.build_model(arch, opts)
    model.cuda()
    mark_tensor_parallel(model, arch)  # random weights instead of load_hf_weights, which marks them
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.normal_(0, 0.02) if p.ndim >= 2 else p.fill_(1.0)
    params = sum(p.numel() for p in model.parameters())
    # every 2-D weight is a matmul per token; tied, the embedding matrix is the output layer's
    matmul_params = sum(p.numel() for p in model.parameters() if p.ndim >= 2)
    model = Float16Module(cfg, model)
    model = DistributedDataParallel(cfg, DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                                                       use_distributed_optimizer=True), model)
    cfg.finalize_model_grads_func = finalize_model_grads
    cfg.no_sync_func = model.no_sync
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="adam", lr=1e-6, bf16=True, params_dtype=torch.bfloat16,
                                                 use_distributed_optimizer=True, clip_grad=1.0), [model])

    g = torch.Generator().manual_seed(0)
    prompt = 256
    ids = torch.randint(0, a.vocab, (a.micro, a.seq), generator=g)
    resp = torch.zeros(a.micro, a.seq)
    resp[:, prompt - 1: a.seq - 1] = 1.0
    targets = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    mb = MicroBatch(row_ids=list(range(a.micro)), ids=ids, targets=targets, resp_mask=resp, per_row=1)
    ref = torch.full((a.micro,), -12000.0, device=device)
    win = torch.linspace(0.1, 0.9, a.micro, device=device)
    causal_mask = a.attention == "local"

    def loss(m, lp, tok):
        return sppo_loss(lp[:, 0], ref, win, 1000.0).mean()

    def step() -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.zero_grad_buffer()
        opt.zero_grad()
        schedule_pass(model, [mb] * a.accum, False, loss, device, causal_mask, arch.vocab_size)
        ok, _, _ = opt.step()
        torch.cuda.synchronize()
        assert ok
        return time.perf_counter() - t

    def ref_pass() -> float:
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.no_grad():
            schedule_pass(model, [mb] * a.accum, True, lambda m, lp, tok: lp.sum() * 0, device, causal_mask,
                          arch.vocab_size)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    model.train()
    for _ in range(2):
        step()
    torch.cuda.reset_peak_memory_stats()
    times = sorted(step() for _ in range(a.steps))
    t_step = times[len(times) // 2]
    model.eval()
    ref_pass()
    t_ref = sorted(ref_pass() for _ in range(3))[1]

    tokens = a.micro * a.accum * a.seq
    L, s, d = a.layers, a.seq, a.hidden
    flops_causal = 6 * matmul_params + 6 * L * s * d
    flops_dense = 6 * matmul_params + 12 * L * s * d
    out = {
        "attention": a.attention, "recompute": a.recompute, "params": params, "seq": a.seq, "micro": a.micro,
        "accum": a.accum, "device": torch.cuda.get_device_name(), "measured_bf16_peak_tflops": round(peak / 1e12, 1),
        "step_seconds": round(t_step, 4), "train_tokens_per_s": round(tokens / t_step),
        "mfu_causal": round(flops_causal * tokens / t_step / peak, 4),
        "mfu_dense_attention_formula": round(flops_dense * tokens / t_step / peak, 4),
        "reference_pass_tokens_per_s": round(tokens / t_ref),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
        "torch": torch.__version__,
    }
    print(json.dumps(out), flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(out) + "\n")
    mdl.destroy_parallel()


if __name__ == "__main__":
    main()
