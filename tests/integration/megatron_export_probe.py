"""torchrun worker for the export test: the streamed export against the previous one, with each
rank's peak memory growth over each.

    torchrun --nproc-per-node N tests/integration/megatron_export_probe.py MODEL_DIR OUT_DIR \\
        --tp T --pp P [--precision fp32|bf16] [--reference]

Builds the product's model shard (model.build_model, weights.load_hf_weights, Float16Module in
bf16, megatron's DDP with the distributed optimizer's buffers, as the worker does), moves every
weight by seeded noise (the stand-in for training: the export must differ from π_t), then runs
``weights.export_hf`` into OUT_DIR/new and, with ``--reference``, the export as it was before it
streamed (:func:`reference_export`, kept here verbatim as the test's reference) into OUT_DIR/old.
Around each, every rank resets its peak RSS (``/proc/self/clear_refs``, 5) and records how far
VmHWM rose above VmRSS at the start: OUT_DIR/rss/RANK.json. Needs the CPU patches of
cpu_patches/megatron_cpu_site on PYTHONPATH when run without CUDA.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import re
import zlib
from pathlib import Path

import torch
import torch.distributed as dist


def _status_kb(key: str) -> int:
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)[1])


def _reset_peak() -> bool:
    """VmHWM back to the current RSS (Linux ≥ 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kb("VmHWM") <= _status_kb("VmRSS") + 1024


def _trim() -> None:
    """Hand the heap's free pages back to the kernel (glibc's ``malloc_trim``), so that what a
    measured call allocates shows in RSS instead of reusing pages left resident by the set-up."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measured(fn) -> dict:
    """Run ``fn`` on every rank at once; this rank's peak RSS growth over it, in bytes."""
    gc.collect()
    _trim()
    dist.barrier()
    reset = _reset_peak()
    before = _status_kb("VmRSS")
    fn()
    grown = _status_kb("VmHWM") - before
    dist.barrier()
    return {"grown_bytes": grown * 1024, "reset": reset}


# -- the export as it was before it streamed: the test's reference ----------------------------

def reference_gather_full_state(model, arch):
    """The previous ``weights.gather_full_state``: every pipeline stage's lead builds its whole
    stage in fp32 and all ranks ``all_gather_object`` it."""
    from megatron.core import parallel_state as ps

    from sppo_nemo.backends.megatron import convert as conv
    from sppo_nemo.backends.megatron.model import unwrap
    from sppo_nemo.backends.megatron.weights import _global_name

    inner = unwrap(model)
    tp_group = ps.get_tensor_model_parallel_group()
    tp = ps.get_tensor_model_parallel_world_size()
    mine = {}
    for name, p in inner.named_parameters():
        g = _global_name(inner, name)
        if g == "output_layer.weight" and arch.tied:
            continue
        t = p.detach().float().contiguous()
        if conv.tp_split_dim(g) is not None and tp > 1:
            parts = [torch.empty_like(t) for _ in range(tp)]
            dist.all_gather(parts, t, group=tp_group)
        else:
            parts = [t]
        mine[g] = conv.unshard(g, [x.cpu() for x in parts], arch).clone()
    lead = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine if lead else None)
    if dist.get_rank() != 0:
        return None
    full = {}
    for part in gathered:
        if part:
            full.update(part)
    return full


def reference_export(model, arch, policy_dir: Path, output_dir: Path, precision: str) -> None:
    """The previous export: the gather above, then the previous ``save_hf`` on rank 0."""
    import shutil

    from safetensors.torch import save_file

    from sppo_nemo.backends.megatron import convert as conv

    full = reference_gather_full_state(model, arch)
    if dist.get_rank() != 0:
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    hf = {k: v.to(dtype).contiguous() for k, v in conv.megatron_to_hf(full, arch).items()}
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(output_dir / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((policy_dir / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16" if precision == "bf16" else "float32"
    cfg.pop("dtype", None)
    (output_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in policy_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(f, output_dir / f.name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--reference", action="store_true", help="also run the previous export into OUT/old")
    a = ap.parse_args()

    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.transformer.module import Float16Module

    from sppo_nemo.process.allocator import keep_freed_memory
    from sppo_nemo.backends.megatron import model as mdl, weights
    from sppo_nemo.backends.megatron.arch import arch_from_hf_config

    keep_freed_memory()  # as the worker does
    mdl.init_parallel(a.tp, a.pp, seed=0)
    model_dir, out = Path(a.model), Path(a.out)
    arch = arch_from_hf_config(json.loads((model_dir / "config.json").read_text()))
    model, cfg = mdl.build_model(arch, mdl.ModelOptions(precision=a.precision))
    weights.load_hf_weights(model, arch, model_dir)
    if a.precision == "bf16":
        model = Float16Module(cfg, model)
    model = DistributedDataParallel(cfg, DistributedDataParallelConfig(grad_reduce_in_fp32=True,
                                                                       use_distributed_optimizer=True), model)
    model.broadcast_params()
    inner = mdl.unwrap(model)
    tp_rank = ps.get_tensor_model_parallel_rank()
    with torch.no_grad():  # "training": seeded per global name and TP shard, equal on every DP replica
        for name, p in inner.named_parameters():
            seed = zlib.crc32(weights._global_name(inner, name).encode()) * 8 + tp_rank
            noise = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed))
            p.add_(noise.to(p.dtype), alpha=0.05)
    del noise

    rss = {"rank": dist.get_rank(), "tp_rank": tp_rank, "pp_rank": ps.get_pipeline_model_parallel_rank(),
           "dp_rank": ps.get_data_parallel_rank()}
    rss["new"] = measured(lambda: weights.export_hf(model, arch, model_dir, out / "new", a.precision))
    if a.reference:
        rss["old"] = measured(lambda: reference_export(model, arch, model_dir, out / "old", a.precision))
    (out / "rss").mkdir(parents=True, exist_ok=True)
    (out / "rss" / f"{dist.get_rank()}.json").write_text(json.dumps(rss))
    dist.barrier()
    mdl.destroy_parallel()


if __name__ == "__main__":
    main()
