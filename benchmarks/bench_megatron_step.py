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

Shared prompts, packed against unpacked, on the shared workload (CPU or GPU):

    python benchmarks/bench_megatron_step.py --data ../shared/bench-data/pref64.jsonl [--steps 3] [--micro 4]
        [--threads 2] [--precision fp32|bf16]

SmolLM2-135M-Instruct through the worker's own set-up, reference pass and optimizer (TP=1, one
process; without CUDA with the test-only CPU patches of cpu_patches/megatron_cpu.py), 4 pairs an optimizer
step in micro-batches of --micro pairs, max length 256, pairwise hard-label SPPO (eq. B.1, P = 1).
Each step's rows are trained twice, packed (trainer.pack_prompts: the prompt once, chosen and
rejected behind it) and unpacked, the order alternating step by step, after one warm-up step of
each; so is one forward-only (reference) pass over them. Prints the median seconds of each, the
decoder positions per step (with padding) and real tokens, and the packed/unpacked ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from matmul_peak import measured_bf16_peak


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
    ap.add_argument("--data", help="instead: packed vs unpacked steps on this pairs file (e.g. pref64.jsonl)")
    ap.add_argument("--threads", type=int, default=2, help="--data: torch threads")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="--data: trainer.precision")
    a = ap.parse_args()
    if a.data:
        return packed_vs_unpacked(a)
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
    from sppo_nemo.maths.loss import sppo_loss

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


def packed_vs_unpacked(a) -> None:
    import statistics
    import sys
    import tempfile
    from pathlib import Path

    cuda = torch.cuda.is_available()
    torch.set_num_threads(a.threads)
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29532", "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0"}.items():
        os.environ.setdefault(k, v)
    if not cuda:  # megatron-core on CPU: the test-only patches, in this process
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from cpu_patches import megatron_cpu

        megatron_cpu.apply()
    from sppo_nemo.backends.hf import smollm2_checkpoint
    from sppo_nemo.backends.megatron import model as mdl, worker
    from sppo_nemo.backends.megatron.controller import MegatronTrainer
    from sppo_nemo.backends.megatron.logps import make_micro_batch
    from sppo_nemo.backends.megatron.packed import make_packed_micro_batch
    from sppo_nemo.schema.config import MegatronConfig, TrainerConfig
    from sppo_nemo.schema.protocols import PairRow
    from sppo_nemo.formats.rows import write_rows
    from sppo_nemo.maths.training import batch_loss

    if 4 % a.micro:
        raise SystemExit("--micro (pairs per micro-batch) must divide 4")
    steps = a.steps + 1  # the first of each is a warm-up
    src = [json.loads(x) for x in Path(a.data).read_text().splitlines()][: 4 * steps]
    if len(src) < 4 * steps:
        raise SystemExit(f"{a.data} has {len(src)} rows; {4 * steps} needed for {a.steps} steps")
    pairs = [PairRow(str(r["id"]), r["prompt"], r["chosen"], r["rejected"], True, True, 1.0) for r in src]
    cfg = TrainerConfig(backend="megatron", lr=5e-7, warmup_ratio=0.0, batch_size=a.micro, grad_accum=4 // a.micro,
                        epochs=1, precision=a.precision, max_prompt_length=256, max_length=256,
                        megatron=MegatronConfig(attention="local" if a.attention == "local" else "sdpa",
                                                transformer_engine="on" if a.attention == "te" else "off",
                                                recompute=a.recompute))
    eta = 1e3
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        write_rows(rows_file, pairs)
        job = MegatronTrainer(cfg, "sppo_pair", eta, None, seed=0).job(smollm2_checkpoint(), rows_file,
                                                                        Path(tmp) / "policy")
        device = mdl.init_parallel(1, 1, job.seed)
        s = worker.set_up(job, device)
        t = time.perf_counter()
        reference, _ = worker.reference_pass(s)  # packed, as the worker does; excluded from the step times
        ref_seconds = time.perf_counter() - t
    optimizer = worker._optimizer(s)

    def micro_batches(rows: list[int], packed: bool) -> list:
        out = []
        for b in range(0, len(rows), a.micro):
            part = rows[b:b + a.micro]
            mb = make_packed_micro_batch(part, s.seqs, s.pad_id, 2) if packed else None
            out.append(mb or make_micro_batch(part, s.seqs, s.pad_id, 2))
        return out

    def positions(micro) -> tuple[int, int]:
        real = sum(sum(mb.lengths) if hasattr(mb, "lengths") else
                   sum(len(e.prompt_ids) + len(e.response_ids) for i in mb.row_ids for e in s.seqs[i]) for mb in micro)
        return sum(mb.ids.numel() for mb in micro), real

    def loss(mb, lp, _tok):
        return batch_loss("sppo_pair", eta, lp, reference[mb.row_ids], [s.rows[i] for i in mb.row_ids]).mean()

    def timed(fn) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def train(micro) -> None:
        s.model.train()
        s.model.zero_grad_buffer()
        optimizer.zero_grad()
        s.run(micro, False, loss)
        ok, _, _ = optimizer.step()
        assert ok

    def forward(micro) -> None:
        s.model.eval()
        with torch.no_grad():
            s.run(micro, True, lambda mb, lp, tok: lp.sum() * 0.0)

    times = {(kind, m): [] for kind in ("packed", "unpacked") for m in ("train", "forward")}
    shape, last = {}, {}
    for step in range(steps):
        rows = list(range(4 * step, 4 * step + 4))
        for kind in (("packed", "unpacked") if step % 2 == 0 else ("unpacked", "packed")):
            micro = micro_batches(rows, kind == "packed")
            shape.setdefault(kind, []).append(positions(micro))
            t_train, t_fwd = timed(lambda: train(micro)), timed(lambda: forward(micro))
            last[kind] = (t_train, t_fwd)
            if step:
                times[kind, "train"].append(t_train)
                times[kind, "forward"].append(t_fwd)
        print(f"step {step}{' (warm-up)' if not step else ''}: " + ", ".join(
            f"{k} train {last[k][0]:.2f} s, forward {last[k][1]:.2f} s" for k in ("packed", "unpacked")), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    pos = {k: statistics.mean(p for p, _ in v) for k, v in shape.items()}
    real = {k: statistics.mean(r for _, r in v) for k, v in shape.items()}
    out = {
        "workload": Path(a.data).name, "pairs_per_step": 4, "micro_pairs": a.micro, "precision": a.precision,
        "device": torch.cuda.get_device_name() if cuda else f"cpu, {a.threads} threads",
        "attention": a.attention, "timed_steps": a.steps, "reference_pass_seconds_packed": round(ref_seconds, 2),
        **{f"{k}_{m}_seconds": round(v, 3) for (k, m), v in med.items()},
        **{f"{k}_positions_per_step": round(v) for k, v in pos.items()},
        **{f"{k}_tokens_per_step": round(v) for k, v in real.items()},
        "ratio_train_seconds": round(med["packed", "train"] / med["unpacked", "train"], 3),
        "ratio_forward_seconds": round(med["packed", "forward"] / med["unpacked", "forward"], 3),
        "ratio_positions": round(pos["packed"] / pos["unpacked"], 3),
        "ratio_tokens": round(real["packed"] / real["unpacked"], 3),
    }
    print(f"packed/unpacked: train step {out['ratio_train_seconds']:.3f}x "
          f"({med['packed', 'train']:.2f} s vs {med['unpacked', 'train']:.2f} s, median of {a.steps}), "
          f"forward-only {out['ratio_forward_seconds']:.3f}x "
          f"({med['packed', 'forward']:.2f} s vs {med['unpacked', 'forward']:.2f} s); "
          f"decoder positions per step {pos['packed']:.0f} vs {pos['unpacked']:.0f} ({out['ratio_positions']:.3f}x), "
          f"real tokens {real['packed']:.0f} vs {real['unpacked']:.0f} ({out['ratio_tokens']:.3f}x)")
    print(json.dumps(out), flush=True)
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(out) + "\n")
    mdl.destroy_parallel()


if __name__ == "__main__":
    main()
