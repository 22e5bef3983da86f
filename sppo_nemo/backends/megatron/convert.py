"""HF ⇄ Megatron-core GPTModel weights, in plain torch (megatron is not imported here).

One mapping table per model family (:data:`LLAMA` for llama/mistral/qwen2/qwen3, :data:`GPT2`) serves
both directions, as Megatron-Bridge's ``mapping_registry`` and torchtune's ``convert_weights`` do:
each :class:`Entry` names a Megatron parameter, the HF tensor(s) it is made of, and the
:class:`Transform` between them (``to_megatron`` and its inverse ``to_hf``).

Megatron's names are those of the local layer spec, with global layer numbers; :func:`te_name`
maps them onto the Transformer Engine spec, where the two layer norms live inside the fused
norm+linear modules. Layouts that differ between the two worlds:

- ``linear_qkv`` fuses q, k and v *per query group*: for group g, the q rows of its
  ``heads/groups`` heads, then its k rows, then its v rows. Tensor parallelism then takes whole
  groups, so a contiguous slice of dim 0 is one rank's shard.
- ``linear_fc1`` of a gated MLP is [gate; up]; its tensor-parallel shard is [gate_r; up_r], so it is
  split in two before slicing (``partition_stride`` 2 in megatron's parameter attributes).
- GPT-2's Conv1D weights are stored (in, out), transposed against a Linear's (out, in), and its
  ``c_attn`` packs [q | k | v] in one tensor.
- the word embedding and output layer are split over the vocabulary, padded with zero rows to a
  multiple of the tensor-parallel size; the trainer masks the padded logits.
- Qwen3's ``q_norm``/``k_norm`` weights ([head_dim], shared by every head) are megatron's
  ``q_layernorm``/``k_layernorm``, unchanged; each tensor-parallel rank holds them whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, NamedTuple

import torch

from sppo_nemo.backends.megatron.arch import Arch


# -- transforms: HF tensors → one Megatron tensor, and back ------------------------------------

def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, arch: Arch) -> torch.Tensor:
    g, d = arch.num_query_groups, arch.kv_channels
    per = arch.num_attention_heads // g
    q = q.reshape(g, per * d, *q.shape[1:])
    k = k.reshape(g, d, *k.shape[1:])
    v = v.reshape(g, d, *v.shape[1:])
    return torch.cat([q, k, v], dim=1).reshape(g * (per + 2) * d, *q.shape[2:])


def _split_qkv(w: torch.Tensor, arch: Arch) -> list[torch.Tensor]:
    g, d = arch.num_query_groups, arch.kv_channels
    per = arch.num_attention_heads // g
    w = w.reshape(g, (per + 2) * d, *w.shape[1:])
    q, k, v = w.split([per * d, d, d], dim=1)
    return [q.reshape(g * per * d, *w.shape[2:]), k.reshape(g * d, *w.shape[2:]), v.reshape(g * d, *w.shape[2:])]


class Transform(NamedTuple):
    """``to_megatron(hf_tensors, arch)`` and its inverse ``to_hf(tensor, arch)``."""

    to_megatron: Callable[[list[torch.Tensor], Arch], torch.Tensor]
    to_hf: Callable[[torch.Tensor, Arch], list[torch.Tensor]]


SAME = Transform(lambda ts, a: ts[0], lambda t, a: [t])
QKV = Transform(lambda ts, a: _fuse_qkv(*ts, a), _split_qkv)  # q, k, v → per-group [q; k; v]
GATE_UP = Transform(lambda ts, a: torch.cat(ts, dim=0), lambda t, a: list(t.chunk(2, dim=0)))  # [gate; up]
CONV1D = Transform(lambda ts, a: ts[0].t(), lambda t, a: [t.t()])  # (in, out) ⇄ (out, in)
PACKED_QKV = Transform(lambda ts, a: _fuse_qkv(*ts[0].chunk(3, dim=0), a),  # [q | k | v] bias
                       lambda t, a: [torch.cat(_split_qkv(t, a))])
CONV1D_QKV = Transform(lambda ts, a: _fuse_qkv(*ts[0].t().chunk(3, dim=0), a),  # Conv1D (in, 3·out) weight
                       lambda t, a: [torch.cat(_split_qkv(t, a)).t()])


# -- the tables --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """One Megatron parameter (in a layer table: the name after ``decoder.layers.{i}.``) and the
    HF tensors it is made of (``{i}``: the layer), present when ``when(arch)`` holds."""

    megatron: str
    hf: tuple[str, ...]
    transform: Transform = SAME
    when: Callable[[Arch], bool] | None = None

    def present(self, arch: Arch) -> bool:
        return self.when is None or self.when(arch)


def entry(megatron: str, hf: str | tuple[str, ...], transform: Transform = SAME,
          when: Callable[[Arch], bool] | None = None) -> Entry:
    return Entry(megatron, (hf,) if isinstance(hf, str) else hf, transform, when)


@dataclass(frozen=True)
class Family:
    before: tuple[Entry, ...]  # ahead of the layers (embeddings)
    layer: tuple[Entry, ...]  # every layer's, names relative to decoder.layers.{i}.
    after: tuple[Entry, ...]  # after the layers (final norm, untied output layer)


def _untied(a: Arch) -> bool:
    return not a.tied


def _has_qkv_bias(a: Arch) -> bool:
    return a.qkv_bias


def _has_qk_norm(a: Arch) -> bool:
    return a.qk_norm


_L = "model.layers.{i}."
LLAMA = Family(
    before=(entry("embedding.word_embeddings.weight", "model.embed_tokens.weight"),),
    layer=(
        entry("input_layernorm.weight", _L + "input_layernorm.weight"),
        entry("self_attention.linear_qkv.weight", tuple(f"{_L}self_attn.{x}_proj.weight" for x in "qkv"), QKV),
        entry("self_attention.linear_qkv.bias", tuple(f"{_L}self_attn.{x}_proj.bias" for x in "qkv"), QKV,
              when=_has_qkv_bias),  # Qwen2
        entry("self_attention.q_layernorm.weight", _L + "self_attn.q_norm.weight", when=_has_qk_norm),  # Qwen3
        entry("self_attention.k_layernorm.weight", _L + "self_attn.k_norm.weight", when=_has_qk_norm),
        entry("self_attention.linear_proj.weight", _L + "self_attn.o_proj.weight"),
        entry("pre_mlp_layernorm.weight", _L + "post_attention_layernorm.weight"),
        entry("mlp.linear_fc1.weight", (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"), GATE_UP),
        entry("mlp.linear_fc2.weight", _L + "mlp.down_proj.weight"),
    ),
    after=(entry("decoder.final_layernorm.weight", "model.norm.weight"),
           entry("output_layer.weight", "lm_head.weight", when=_untied)),
)

_H = "transformer.h.{i}."
GPT2 = Family(
    before=(entry("embedding.word_embeddings.weight", "transformer.wte.weight"),
            entry("embedding.position_embeddings.weight", "transformer.wpe.weight")),
    layer=(
        entry("input_layernorm.weight", _H + "ln_1.weight"),
        entry("input_layernorm.bias", _H + "ln_1.bias"),
        entry("self_attention.linear_qkv.weight", _H + "attn.c_attn.weight", CONV1D_QKV),
        entry("self_attention.linear_qkv.bias", _H + "attn.c_attn.bias", PACKED_QKV),
        entry("self_attention.linear_proj.weight", _H + "attn.c_proj.weight", CONV1D),
        entry("self_attention.linear_proj.bias", _H + "attn.c_proj.bias"),
        entry("pre_mlp_layernorm.weight", _H + "ln_2.weight"),
        entry("pre_mlp_layernorm.bias", _H + "ln_2.bias"),
        entry("mlp.linear_fc1.weight", _H + "mlp.c_fc.weight", CONV1D),
        entry("mlp.linear_fc1.bias", _H + "mlp.c_fc.bias"),
        entry("mlp.linear_fc2.weight", _H + "mlp.c_proj.weight", CONV1D),
        entry("mlp.linear_fc2.bias", _H + "mlp.c_proj.bias"),
    ),
    after=(entry("decoder.final_layernorm.weight", "transformer.ln_f.weight"),
           entry("decoder.final_layernorm.bias", "transformer.ln_f.bias"),
           entry("output_layer.weight", "lm_head.weight", when=_untied)),
)

FAMILIES = {"llama": LLAMA, "gpt2": GPT2}
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.(.+)")


class Mapped(NamedTuple):
    megatron: str  # full local-spec name, global layer number
    hf: tuple[str, ...]
    transform: Transform


def mappings(arch: Arch) -> Iterator[Mapped]:
    """Every parameter of the full (unsharded, unpipelined) GPTModel with its HF sources."""
    fam = FAMILIES[arch.family]
    for e in fam.before:
        if e.present(arch):
            yield Mapped(e.megatron, e.hf, e.transform)
    for i in range(arch.num_layers):
        for e in fam.layer:
            if e.present(arch):
                yield Mapped(f"decoder.layers.{i}.{e.megatron}", tuple(h.format(i=i) for h in e.hf), e.transform)
    for e in fam.after:
        if e.present(arch):
            yield Mapped(e.megatron, e.hf, e.transform)


def mapping_of(name: str, arch: Arch) -> Mapped:
    """The entry of one Megatron parameter (local spec, global layer number)."""
    fam = FAMILIES[arch.family]
    m = _LAYER.fullmatch(name)
    pool, key, i = (fam.layer, m[2], int(m[1])) if m else (fam.before + fam.after, name, 0)
    for e in pool:
        if e.megatron == key and e.present(arch):
            return Mapped(name, tuple(h.format(i=i) for h in e.hf), e.transform)
    raise KeyError(f"no HF source for Megatron parameter {name}")


def megatron_names(arch: Arch) -> list[str]:
    """Every parameter of the full (unsharded, unpipelined) GPTModel, local-spec names."""
    return [m.megatron for m in mappings(arch)]


def hf_tensor_for(name: str, get: Callable[[str], torch.Tensor], arch: Arch) -> torch.Tensor:
    """The full Megatron tensor ``name`` (local spec, global layer number), built from the HF
    tensors that ``get(hf_name)`` returns. Only the HF tensors it needs are read."""
    m = mapping_of(name, arch)
    return m.transform.to_megatron([get(h) for h in m.hf], arch)


def hf_to_megatron(hf: Mapping[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """The whole HF state dict as a full Megatron state dict (contiguous copies)."""
    return {m.megatron: m.transform.to_megatron([hf[h] for h in m.hf], arch).contiguous().clone()
            for m in mappings(arch)}


def megatron_to_hf(mg: Mapping[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """A full Megatron state dict (local-spec names, global layers) as an HF state dict, with
    exactly the keys ``save_pretrained`` writes (no ``lm_head.weight`` when tied)."""
    out: dict[str, torch.Tensor] = {}
    for m in mappings(arch):
        for h, t in zip(m.hf, m.transform.to_hf(mg[m.megatron], arch), strict=True):
            out[h] = t.contiguous().clone()
    return out


# -- Transformer Engine names ------------------------------------------------------------------

_TE_NAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "input_layernorm.bias": "self_attention.linear_qkv.layer_norm_bias",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
    "pre_mlp_layernorm.bias": "mlp.linear_fc1.layer_norm_bias",
}


def te_name(name: str) -> str:
    """The Transformer Engine spec's name for a local-spec parameter name."""
    for local, te in _TE_NAMES.items():
        if name.endswith("." + local):
            return name[: -len(local)] + te
    return name


def local_name(name: str) -> str:
    """Inverse of :func:`te_name` (identity on local-spec names)."""
    for local, te in _TE_NAMES.items():
        if name.endswith("." + te):
            return name[: -len(te)] + local
    return name


# -- tensor-parallel sharding ------------------------------------------------------------------

def tp_split_dim(name: str) -> int | None:
    """The dimension a parameter is split along under tensor parallelism, None if replicated.
    Accepts local- or TE-spec names."""
    name = local_name(name)
    if name.endswith(("word_embeddings.weight", "output_layer.weight")):
        return 0
    if name.endswith(("linear_qkv.weight", "linear_qkv.bias", "linear_fc1.weight", "linear_fc1.bias")):
        return 0
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return 1
    return None


def _is_vocab(name: str) -> bool:
    return name.endswith(("word_embeddings.weight", "output_layer.weight"))


def is_gated_fc1(name: str, arch: Arch) -> bool:
    """A gated MLP's [gate; up] ``linear_fc1`` weight: its shard is [gate_r; up_r] (stride 2)."""
    return arch.gated and local_name(name).endswith("linear_fc1.weight")


def shard(name: str, full: torch.Tensor, arch: Arch, tp_rank: int, tp: int, padded_vocab: int) -> torch.Tensor:
    """Rank ``tp_rank``'s slice of the full tensor ``name``."""
    if _is_vocab(name) and padded_vocab > full.shape[0]:
        full = torch.cat([full, full.new_zeros(padded_vocab - full.shape[0], *full.shape[1:])])
    dim = tp_split_dim(name)
    if dim is None or tp == 1:
        return full
    if is_gated_fc1(name, arch):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]], dim=0)
    return full.chunk(tp, dim=dim)[tp_rank]


def unshard(name: str, parts: list[torch.Tensor], arch: Arch) -> torch.Tensor:
    """Inverse of :func:`shard`: the full tensor from every tensor-parallel rank's slice, in rank
    order, with vocabulary padding removed."""
    dim = tp_split_dim(name)
    if dim is None or len(parts) == 1:
        full = parts[0]
    elif is_gated_fc1(name, arch):
        halves = [p.chunk(2, dim=0) for p in parts]
        full = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    else:
        full = torch.cat(parts, dim=dim)
    if _is_vocab(name):
        full = full[: arch.vocab_size]
    return full
