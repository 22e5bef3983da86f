"""π_t's HF weights into this rank's shard, and the trained shards back out as an HF checkpoint.

Loading reads one safetensors tensor at a time and converts and slices per parameter
(:mod:`.convert`); exporting gathers the tensor-parallel slices and the pipeline stages onto
global rank 0, which writes safetensors in the training precision with π_t's config and tokenizer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.models.gpt.gpt_model import GPTModel

from sppo_nemo.backends.megatron import convert as conv
from sppo_nemo.backends.megatron.arch import Arch
from sppo_nemo.backends.megatron.model import VOCAB_MULTIPLE, unwrap


def mark_tensor_parallel(model: GPTModel, arch: Arch) -> None:
    """Megatron sets its tensor-parallel parameter attributes inside weight initialisation, which
    is skipped here (the weights come from the checkpoint). Without them the optimizer would take
    every sharded parameter for a TP duplicate and count only rank 0's shard in the gradient
    norm, so they are set from the converter's own split table."""
    for name, p in model.named_parameters():
        if getattr(p, "tensor_model_parallel", None) is not None:
            continue
        dim = conv.tp_split_dim(name)
        if dim is None:
            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(p)
        else:
            stride = 2 if conv.is_gated_fc1(name, arch) else 1
            tensor_parallel.set_tensor_model_parallel_attributes(p, is_parallel=True, dim=dim, stride=stride)


def _global_name(model: GPTModel, name: str) -> str:
    """The full model's local-spec name of this stage's parameter ``name``."""
    name = conv.local_name(name)
    if name.startswith("decoder.layers."):
        parts = name.split(".")
        layer = model.decoder.layers[int(parts[2])]
        parts[2] = str(layer.layer_number - 1)
        name = ".".join(parts)
    return name


def _hf_getter(policy_dir: Path):
    """``get(name)`` over the checkpoint's safetensors files, reading one tensor at a time."""
    from safetensors import safe_open

    files = sorted(Path(policy_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{policy_dir} holds no *.safetensors weights: the megatron trainer reads HF "
                                f"checkpoints saved with safetensors")
    where = {}
    handles = [safe_open(str(f), framework="pt") for f in files]
    for h in handles:
        for k in h.keys():
            where[k] = h

    def get(name: str) -> torch.Tensor:
        if name not in where:
            raise KeyError(f"{policy_dir}: tensor {name!r} missing from the checkpoint")
        return where[name].get_tensor(name).float()

    return get


def load_hf_weights(model: GPTModel, arch: Arch, policy_dir: Path) -> None:
    """Copy π_t's HF weights into this rank's shard (a bare GPTModel, before any wrapper),
    converting and slicing per parameter, and give the parameters their tensor-parallel attributes."""
    mark_tensor_parallel(model, arch)
    get = _hf_getter(policy_dir)
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    padded = arch.padded_vocab(tp, VOCAB_MULTIPLE)
    with torch.no_grad():
        for name, p in model.named_parameters():
            g = _global_name(model, name)
            if g == "output_layer.weight" and arch.tied:  # last stage's copy of the tied embedding
                g = "embedding.word_embeddings.weight"
            full = conv.hf_tensor_for(g, get, arch)
            part = conv.shard(g, full, arch, tp_rank, tp, padded)
            if tuple(part.shape) != tuple(p.shape):
                raise ValueError(f"{name}: converted shape {tuple(part.shape)} != model shape {tuple(p.shape)}")
            p.copy_(part.to(p.dtype))


def gather_full_state(model: torch.nn.Module, arch: Arch, of=lambda p: p.detach()
                      ) -> dict[str, torch.Tensor] | None:
    """The full Megatron state (local-spec names, global layers, fp32, CPU) on global rank 0, None
    elsewhere; ``of(param)`` picks what is gathered (the weights, or e.g. ``main_grad``).
    Collective over the whole world: every rank must call it."""
    inner = unwrap(model)
    tp_group = ps.get_tensor_model_parallel_group()
    tp = ps.get_tensor_model_parallel_world_size()
    mine: dict[str, torch.Tensor] = {}
    for name, p in inner.named_parameters():
        g = _global_name(inner, name)
        if g == "output_layer.weight" and arch.tied:
            continue  # the copy of the word embedding kept by the last pipeline stage
        t = of(p).detach().float().contiguous()
        if conv.tp_split_dim(g) is not None and tp > 1:
            parts = [torch.empty_like(t) for _ in range(tp)]
            dist.all_gather(parts, t, group=tp_group)
        else:
            parts = [t]
        # a copy with storage of its own: with the distributed optimizer a parameter is a view into
        # one flat buffer, and pickling a view (all_gather_object below) writes the whole buffer
        mine[g] = conv.unshard(g, [x.cpu() for x in parts], arch).clone()
    lead = ps.get_tensor_model_parallel_rank() == 0 and ps.get_data_parallel_rank() == 0
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine if lead else None)
    if dist.get_rank() != 0:
        return None
    full: dict[str, torch.Tensor] = {}
    for part in gathered:
        if part:
            full.update(part)
    missing = set(conv.megatron_names(arch)) - set(full)
    if missing:
        raise RuntimeError(f"export is missing {sorted(missing)[:5]}")
    return full


def save_hf(full: dict[str, torch.Tensor], arch: Arch, policy_dir: Path, output_dir: Path,
            precision: str) -> None:
    """π_{t+1} as an HF checkpoint: safetensors weights in the training precision, π_t's config
    (dtype updated) and tokenizer files."""
    from safetensors.torch import save_file

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
