"""π_t's HF weights into this rank's shard, and the trained shards back out as an HF checkpoint.

Loading reads one safetensors tensor at a time and converts and slices per parameter
(:mod:`.convert`); exporting streams the model onto global rank 0 one tensor at a time (each
tensor's slices broadcast within its tensor-parallel group, then sent on by its pipeline stage's
lead), and rank 0 writes safetensors in the training precision with π_t's config and tokenizer.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


# -- export: one tensor at a time onto the writer (global rank 0) -------------------------------
#
# No object collective, and no rank but the writer holding more than a tensor's shard or two:
# the exported names and their order are the converter's table (conv.megatron_names); which
# pipeline stage holds each, and its tensor-parallel shard's shape, are agreed in one small
# integer all-reduce over the pipeline group. Then, name by name, on the data-parallel rank 0
# replica of the owning stage, each tensor-parallel rank broadcasts its shard over the
# tensor-parallel group (the group's own communicator; no new one), and the stage's lead
# (tensor-parallel rank 0) sends each shard on to the writer, point to point over the pipeline
# group. The writer (stage 0's lead) unshards and converts each tensor as it arrives. Other
# data-parallel replicas take no part. A broadcast rather than a gather: gloo's gather copies
# the shards once more into a flat buffer of its own, and its root's peak RSS kept rising with
# each call (an ad hoc measurement, 2 ranks: 65 MB after one round of 33 MB gathers, 240 MB after
# six), while a broadcast into a reused buffer stays at that buffer; and NCCL point to point
# inside the tensor-parallel group would open a communicator per pair.

_MAX_DIMS = 4  # parameters are 1- or 2-dimensional; room to spare


@dataclass(frozen=True)
class _Plan:
    """What every exporting rank agrees on before the first tensor moves."""

    names: list[str]  # every exported Megatron parameter, in the converter's order
    owner: list[int]  # the pipeline rank holding each
    shapes: list[tuple[int, ...]]  # each one's tensor-parallel shard shape (the full shape if replicated)
    parts: list[int]  # tensor-parallel slices of each (1 if replicated)


def _comm_device() -> torch.device:
    """Where exported tensors travel: the current CUDA device under NCCL, the CPU under gloo."""
    if torch.cuda.is_available() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _settle(device: torch.device) -> None:
    """Wait for this tensor's transfers: NCCL calls return before the copy is done, and without
    waiting a rank would queue the next tensors, holding each until its transfer ends."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Scratch:
    """One flat fp32 buffer, allocated at first use and reused for every tensor: views of it of
    any shape up to ``numel`` elements."""

    def __init__(self, numel: int, device: torch.device):
        self.numel, self.device, self.flat = numel, device, None

    def view(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.flat is None:
            self.flat = torch.empty(self.numel, dtype=torch.float32, device=self.device)
        return self.flat[:math.prod(shape)].view(shape)


def _local_params(inner: GPTModel, arch: Arch) -> dict[str, torch.nn.Parameter]:
    """This stage's exported parameters by global local-spec name (not the last stage's copy of a
    tied word embedding)."""
    out = {}
    for name, p in inner.named_parameters():
        g = _global_name(inner, name)
        if g == "output_layer.weight" and arch.tied:
            continue
        out[g] = p
    return out


def _agree(local: dict[str, torch.nn.Parameter], arch: Arch, device: torch.device) -> _Plan:
    """One integer all-reduce over the pipeline group: per name of the converter's table, how
    many stages hold it, which, and its shard shape. Every rank of the group gets the same table,
    so a missing, duplicated or unknown parameter stops them all alike."""
    names = conv.megatron_names(arch)
    index = {n: i for i, n in enumerate(names)}
    pp_rank = ps.get_pipeline_model_parallel_rank()
    table = torch.zeros(len(names) + 1, 3 + _MAX_DIMS, dtype=torch.int64)
    for g, p in local.items():
        if g not in index or p.dim() > _MAX_DIMS:
            table[len(names), 0] += 1  # the last row counts what the converter cannot export
            continue
        table[index[g], :3] = torch.tensor([1, pp_rank, p.dim()])
        table[index[g], 3:3 + p.dim()] = torch.tensor(p.shape)
    table = table.to(device)
    dist.all_reduce(table, group=ps.get_pipeline_model_parallel_group())
    table = table.cpu()
    unknown = int(table[len(names), 0])
    counts = table[:len(names), 0].tolist()
    missing = [n for n, c in zip(names, counts) if c == 0]
    twice = [n for n, c in zip(names, counts) if c > 1]
    if unknown or missing or twice:
        raise RuntimeError(f"export: {unknown} parameter(s) outside the converter's table, missing "
                           f"{missing[:5]}, held by more than one stage {twice[:5]}")
    tp = ps.get_tensor_model_parallel_world_size()
    return _Plan(names=names, owner=[int(x) for x in table[:len(names), 1]],
                 shapes=[tuple(int(d) for d in row[3:3 + int(row[2])]) for row in table[:len(names)]],
                 parts=[tp if conv.tp_split_dim(n) is not None and tp > 1 else 1 for n in names])


def stream_full_state(model: torch.nn.Module, arch: Arch, consume: Callable[[str, torch.Tensor], None],
                      of: Callable[[torch.nn.Parameter], torch.Tensor] = lambda p: p.detach()) -> None:
    """Call ``consume(name, tensor)`` on global rank 0 for every parameter of the full Megatron
    model, in the converter's order (local-spec names, global layers; fp32, CPU, unsharded; the
    tensor may be a view of a parameter or of a buffer reused for the next one: copy what is
    kept). ``of(param)`` picks what is exported (the weights, or e.g. ``main_grad``).
    ``consume`` is never called elsewhere. Every rank must call it; ranks outside data-parallel
    rank 0 return at once. Another rank holds at most two fp32 shards beyond its own weights."""
    if ps.get_data_parallel_rank() != 0:
        return
    device = _comm_device()
    inner = unwrap(model)
    local = _local_params(inner, arch)
    plan = _agree(local, arch, device)
    pp_rank, pp_group = ps.get_pipeline_model_parallel_rank(), ps.get_pipeline_model_parallel_group()
    tp_rank, tp_group = ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_group()
    lead, writer = tp_rank == 0, dist.get_rank() == 0
    if writer and not (lead and pp_rank == 0):
        raise RuntimeError("export: global rank 0 is not the first pipeline stage's tensor-parallel rank 0")
    largest = max((math.prod(plan.shapes[i]) for i in range(len(plan.names)) if plan.owner[i] == pp_rank), default=0)
    staged, received = _Scratch(largest, device), _Scratch(largest, device)
    for i, name in enumerate(plan.names):
        stage, shape, n_parts = plan.owner[i], plan.shapes[i], plan.parts[i]
        if stage == pp_rank and (n_parts > 1 or lead):
            mine = of(local[name]).detach()
            if mine.dtype != torch.float32 or mine.device != device or not mine.is_contiguous():
                mine = staged.view(shape).copy_(mine)  # a bf16 weight, a parameter elsewhere
            parts = []
            for r in range(n_parts):
                if r == tp_rank:
                    x = mine
                elif writer:  # kept until the tensor is whole
                    x = torch.empty(shape, dtype=torch.float32, device=device)
                else:  # forwarded (the lead) or dropped
                    x = received.view(shape)
                if n_parts > 1:
                    dist.broadcast(x, src=dist.get_global_rank(tp_group, r), group=tp_group)
                if writer:
                    parts.append(x)
                elif lead:
                    dist.send(x, dst=0, group=pp_group)
            _settle(device)
        elif writer:
            src = dist.get_global_rank(pp_group, stage)
            parts = [torch.empty(shape, dtype=torch.float32, device=device) for _ in range(n_parts)]
            for x in parts:
                dist.recv(x, src=src, group=pp_group)
        else:
            continue
        if writer:
            consume(name, conv.unshard(name, [x.cpu() for x in parts], arch))
        del parts


def gather_full_state(model: torch.nn.Module, arch: Arch, of=lambda p: p.detach()
                      ) -> dict[str, torch.Tensor] | None:
    """The full Megatron state (local-spec names, global layers, fp32, CPU, each tensor owning its
    storage) on global rank 0, None elsewhere; ``of(param)`` picks what is gathered (the weights,
    or e.g. ``main_grad``). For tests and small models: the whole state lands on rank 0 (the
    export streams instead, :func:`export_hf`). Every rank must call it."""
    full: dict[str, torch.Tensor] = {}
    stream_full_state(model, arch, lambda name, t: full.__setitem__(name, t.clone()), of)
    return full if dist.get_rank() == 0 else None


def _dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _hf_tensors(name: str, full: torch.Tensor, arch: Arch, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The HF tensors of one full Megatron tensor, in ``dtype``, each a contiguous copy owning its
    storage (safetensors refuses tensors sharing memory)."""
    m = conv.mapping_of(name, arch)
    return {h: t.to(dtype=dtype, memory_format=torch.contiguous_format, copy=True)
            for h, t in zip(m.hf, m.transform.to_hf(full, arch), strict=True)}


def export_hf(model: torch.nn.Module, arch: Arch, policy_dir: Path, output_dir: Path, precision: str) -> None:
    """π_{t+1} as an HF checkpoint written by global rank 0 (as :func:`save_hf`), its tensors
    streamed there one at a time (:func:`stream_full_state`) and converted to the training
    precision as they arrive. Every rank must call it."""
    dtype = _dtype(precision)
    hf: dict[str, torch.Tensor] = {}
    stream_full_state(model, arch, lambda name, t: hf.update(_hf_tensors(name, t, arch, dtype)))
    if dist.get_rank() == 0:
        _write_hf(hf, policy_dir, output_dir, precision)


def save_hf(full: dict[str, torch.Tensor], arch: Arch, policy_dir: Path, output_dir: Path,
            precision: str) -> None:
    """A full Megatron state dict (:func:`gather_full_state`) as an HF checkpoint: safetensors
    weights in the training precision, π_t's config (dtype updated) and tokenizer files."""
    dtype = _dtype(precision)
    hf: dict[str, torch.Tensor] = {}
    for name in conv.megatron_names(arch):
        hf.update(_hf_tensors(name, full[name], arch, dtype))
    _write_hf(hf, policy_dir, output_dir, precision)


def _write_hf(hf: dict[str, torch.Tensor], policy_dir: Path, output_dir: Path, precision: str) -> None:
    """The HF tensors as ``model.safetensors``, with π_t's config (dtype updated) and tokenizer files."""
    from safetensors.torch import save_file

    output_dir.mkdir(parents=True, exist_ok=True)
    save_file(hf, str(output_dir / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((policy_dir / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16" if precision == "bf16" else "float32"
    cfg.pop("dtype", None)
    (output_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in policy_dir.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(f, output_dir / f.name)
