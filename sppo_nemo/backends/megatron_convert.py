"""HF ⇄ Megatron-core GPTModel weight conversion, in plain torch (megatron is not imported here).

Two families are handled, both directions:

- the Llama family (``llama``, ``mistral``, ``qwen2``): RMSNorm, SwiGLU, RoPE, grouped-query
  attention, tied or untied embeddings, and Qwen2's q/k/v biases;
- GPT-2 (``gpt2``): LayerNorm with biases, GELU (tanh), learned absolute positions, tied
  embeddings, Conv1D weights (stored transposed in HF).

Megatron's names are those of the local layer spec, with global layer numbers; :func:`te_name`
maps them onto the Transformer Engine spec, where the two layer norms live inside the fused
norm+linear modules. Layouts that differ between the two worlds:

- ``linear_qkv`` fuses q, k and v *per query group*: for group g, the q rows of its
  ``heads/groups`` heads, then its k rows, then its v rows. Tensor parallelism then takes whole
  groups, so a contiguous slice of dim 0 is one rank's shard.
- ``linear_fc1`` of a gated MLP is [gate; up]; its tensor-parallel shard is [gate_r; up_r], so it is
  split in two before slicing (``partition_stride`` 2 in megatron's parameter attributes).
- the word embedding and output layer are split over the vocabulary, padded with zero rows to a
  multiple of the tensor-parallel size; the trainer masks the padded logits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Mapping

import torch

SUPPORTED = ("llama", "mistral", "qwen2", "gpt2")


class UnsupportedModel(ValueError):
    """The HF checkpoint's architecture has no converter here."""


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder, in Megatron's terms, read from an HF ``config.json``."""

    family: str  # "llama" (llama, mistral, qwen2) or "gpt2"
    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    kv_channels: int
    ffn_hidden_size: int
    vocab_size: int
    max_position_embeddings: int
    norm_eps: float
    tied: bool
    qkv_bias: bool
    rotary_base: float = 10000.0
    rope_scaling_factor: float | None = None  # Llama 3.1 frequency scaling (megatron's rope_scaling)

    @property
    def gated(self) -> bool:
        return self.family == "llama"

    @property
    def normalization(self) -> str:
        return "RMSNorm" if self.family == "llama" else "LayerNorm"

    @property
    def position_embedding(self) -> str:
        return "rope" if self.family == "llama" else "learned_absolute"

    @property
    def linear_bias(self) -> bool:  # biases on every linear layer (GPT-2), not only q/k/v
        return self.family == "gpt2"

    def padded_vocab(self, tp: int, multiple: int = 1) -> int:
        m = tp * multiple
        return int(math.ceil(self.vocab_size / m) * m)

    def parallel_errors(self, tp: int, pp: int) -> list[str]:
        """Why this model cannot be split TP×PP, one message per reason (empty when it can)."""
        errs = []
        if self.num_attention_heads % tp:
            errs.append(f"{self.num_attention_heads} attention heads are not divisible by tensor parallel {tp}")
        if self.num_query_groups % tp:
            errs.append(f"{self.num_query_groups} key/value heads (query groups) are not divisible by tensor "
                        f"parallel {tp}")
        if self.ffn_hidden_size % tp:
            errs.append(f"MLP width {self.ffn_hidden_size} is not divisible by tensor parallel {tp}")
        if self.num_layers % pp:
            errs.append(f"{self.num_layers} layers are not divisible by pipeline parallel {pp}")
        return errs

    def to_dict(self) -> dict:
        return asdict(self)


def arch_from_hf_config(cfg: Mapping) -> Arch:
    """Read an HF config (the dict of ``config.json``); raise :class:`UnsupportedModel` with the
    reason when the converter cannot reproduce the model exactly."""
    mt = cfg.get("model_type")
    if mt not in SUPPORTED:
        raise UnsupportedModel(
            f"model_type {mt!r} has no Megatron converter (supported: {', '.join(SUPPORTED)}); "
            f"train it with trainer.backend=torch")
    if mt == "gpt2":
        h = cfg["n_embd"]
        if cfg.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise UnsupportedModel(f"gpt2 activation_function {cfg.get('activation_function')!r} is not supported "
                                   f"(only gelu_new / gelu_pytorch_tanh)")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
            if cfg.get(flag):
                raise UnsupportedModel(f"gpt2 with {flag}=true is not supported")
        if cfg.get("scale_attn_weights") is False:
            raise UnsupportedModel("gpt2 with scale_attn_weights=false is not supported")
        return Arch(family="gpt2", model_type=mt, num_layers=cfg["n_layer"], hidden_size=h,
                    num_attention_heads=cfg["n_head"], num_query_groups=cfg["n_head"],
                    kv_channels=h // cfg["n_head"], ffn_hidden_size=cfg.get("n_inner") or 4 * h,
                    vocab_size=cfg["vocab_size"], max_position_embeddings=cfg["n_positions"],
                    norm_eps=cfg.get("layer_norm_epsilon", 1e-5), tied=bool(cfg.get("tie_word_embeddings", True)),
                    qkv_bias=True)
    problems = []
    if cfg.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {cfg.get('hidden_act')!r} (only silu)")
    # transformers ≥ 5 writes rope_parameters {rope_theta, rope_type, ...}; 4.x rope_theta + rope_scaling
    rope = dict(cfg.get("rope_parameters") or {})
    rope.update(cfg.get("rope_scaling") or {})
    theta = rope.get("rope_theta") or cfg.get("rope_theta") or 10000.0
    rope_type = rope.get("rope_type") or rope.get("type")
    scaling = None
    if rope_type == "llama3" and _megatron_llama3(rope):
        scaling = float(rope["factor"])
    elif rope_type not in (None, "default"):
        problems.append(f"rope scaling {rope!r} (only unscaled RoPE, or Llama 3.1's with low/high frequency "
                        f"factors 1/4 and original context 8192, which megatron hard-codes)")
    if mt in ("llama", "mistral") and (cfg.get("attention_bias") or cfg.get("mlp_bias")):
        problems.append("attention_bias/mlp_bias")
    if mt == "mistral" and cfg.get("sliding_window") not in (None, 0):
        problems.append(f"sliding_window {cfg.get('sliding_window')} (only full attention)")
    if mt == "qwen2" and cfg.get("use_sliding_window"):
        problems.append("use_sliding_window")
    if problems:
        raise UnsupportedModel(f"{mt} checkpoint uses what the Megatron converter does not reproduce: "
                               f"{'; '.join(problems)}; train it with trainer.backend=torch")
    heads = cfg["num_attention_heads"]
    return Arch(family="llama", model_type=mt, num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
                num_attention_heads=heads, num_query_groups=cfg.get("num_key_value_heads") or heads,
                kv_channels=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                ffn_hidden_size=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
                max_position_embeddings=cfg.get("max_position_embeddings", 4096),
                norm_eps=cfg.get("rms_norm_eps", 1e-6), tied=bool(cfg.get("tie_word_embeddings", False)),
                qkv_bias=(mt == "qwen2"), rotary_base=float(theta), rope_scaling_factor=scaling)


def _megatron_llama3(rope: Mapping) -> bool:
    """Llama 3.1 RoPE scaling with the constants megatron's RotaryEmbedding hard-codes."""
    return (rope.get("factor") is not None and float(rope.get("low_freq_factor", 1.0)) == 1.0
            and float(rope.get("high_freq_factor", 4.0)) == 4.0
            and int(rope.get("original_max_position_embeddings", 8192)) == 8192)


# -- names -----------------------------------------------------------------------------------

def megatron_names(arch: Arch) -> list[str]:
    """Every parameter of the full (unsharded, unpipelined) GPTModel, local-spec names."""
    names = ["embedding.word_embeddings.weight"]
    if arch.position_embedding == "learned_absolute":
        names.append("embedding.position_embeddings.weight")
    b = arch.linear_bias
    for i in range(arch.num_layers):
        p = f"decoder.layers.{i}."
        names += [p + "input_layernorm.weight", p + "self_attention.linear_qkv.weight",
                  p + "self_attention.linear_proj.weight", p + "pre_mlp_layernorm.weight",
                  p + "mlp.linear_fc1.weight", p + "mlp.linear_fc2.weight"]
        if arch.qkv_bias:
            names.append(p + "self_attention.linear_qkv.bias")
        if b:
            names += [p + "input_layernorm.bias", p + "pre_mlp_layernorm.bias", p + "self_attention.linear_proj.bias",
                      p + "mlp.linear_fc1.bias", p + "mlp.linear_fc2.bias"]
    names.append("decoder.final_layernorm.weight")
    if arch.family == "gpt2":
        names.append("decoder.final_layernorm.bias")
    if not arch.tied:
        names.append("output_layer.weight")
    return names


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


def _layer(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return int(parts[2]), ".".join(parts[3:])


# -- HF → Megatron ---------------------------------------------------------------------------

def _fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, arch: Arch) -> torch.Tensor:
    g, d = arch.num_query_groups, arch.kv_channels
    per = arch.num_attention_heads // g
    q = q.reshape(g, per * d, *q.shape[1:])
    k = k.reshape(g, d, *k.shape[1:])
    v = v.reshape(g, d, *v.shape[1:])
    return torch.cat([q, k, v], dim=1).reshape(g * (per + 2) * d, *q.shape[2:])


def _split_qkv(w: torch.Tensor, arch: Arch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g, d = arch.num_query_groups, arch.kv_channels
    per = arch.num_attention_heads // g
    w = w.reshape(g, (per + 2) * d, *w.shape[1:])
    q, k, v = w.split([per * d, d, d], dim=1)
    return (q.reshape(g * per * d, *w.shape[2:]), k.reshape(g * d, *w.shape[2:]),
            v.reshape(g * d, *w.shape[2:]))


def hf_tensor_for(name: str, get: Callable[[str], torch.Tensor], arch: Arch) -> torch.Tensor:
    """The full Megatron tensor ``name`` (local spec, global layer number), built from the HF
    tensors that ``get(hf_name)`` returns. Only the HF tensors it needs are read."""
    if arch.family == "gpt2":
        return _gpt2_to_megatron(name, get, arch)
    if name == "embedding.word_embeddings.weight":
        return get("model.embed_tokens.weight")
    if name == "decoder.final_layernorm.weight":
        return get("model.norm.weight")
    if name == "output_layer.weight":
        return get("lm_head.weight")
    i, rest = _layer(name)
    p = f"model.layers.{i}."
    match rest:
        case "input_layernorm.weight":
            return get(p + "input_layernorm.weight")
        case "pre_mlp_layernorm.weight":
            return get(p + "post_attention_layernorm.weight")
        case "self_attention.linear_qkv.weight" | "self_attention.linear_qkv.bias":
            kind = rest.rsplit(".", 1)[1]
            return _fuse_qkv(*(get(f"{p}self_attn.{x}_proj.{kind}") for x in "qkv"), arch)
        case "self_attention.linear_proj.weight":
            return get(p + "self_attn.o_proj.weight")
        case "mlp.linear_fc1.weight":
            return torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")], dim=0)
        case "mlp.linear_fc2.weight":
            return get(p + "mlp.down_proj.weight")
    raise KeyError(f"no HF source for Megatron parameter {name}")


def _gpt2_to_megatron(name: str, get, arch: Arch) -> torch.Tensor:
    if name == "embedding.word_embeddings.weight":
        return get("transformer.wte.weight")
    if name == "embedding.position_embeddings.weight":
        return get("transformer.wpe.weight")
    if name == "output_layer.weight":
        return get("lm_head.weight")
    if name.startswith("decoder.final_layernorm."):
        return get("transformer.ln_f." + name.rsplit(".", 1)[1])
    i, rest = _layer(name)
    p = f"transformer.h.{i}."
    module, kind = rest.rsplit(".", 1)
    match module:
        case "input_layernorm":
            return get(f"{p}ln_1.{kind}")
        case "pre_mlp_layernorm":
            return get(f"{p}ln_2.{kind}")
        case "self_attention.linear_qkv":
            t = get(f"{p}attn.c_attn.{kind}")  # Conv1D: weight (in, 3·out), bias (3·out)
            t = t.t() if kind == "weight" else t
            return _fuse_qkv(*t.chunk(3, dim=0), arch)
        case "self_attention.linear_proj":
            t = get(f"{p}attn.c_proj.{kind}")
            return t.t() if kind == "weight" else t
        case "mlp.linear_fc1":
            t = get(f"{p}mlp.c_fc.{kind}")
            return t.t() if kind == "weight" else t
        case "mlp.linear_fc2":
            t = get(f"{p}mlp.c_proj.{kind}")
            return t.t() if kind == "weight" else t
    raise KeyError(f"no HF source for Megatron parameter {name}")


def hf_to_megatron(hf: Mapping[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """The whole HF state dict as a full Megatron state dict (contiguous copies)."""
    return {n: hf_tensor_for(n, hf.__getitem__, arch).contiguous().clone() for n in megatron_names(arch)}


# -- Megatron → HF ---------------------------------------------------------------------------

def megatron_to_hf(mg: Mapping[str, torch.Tensor], arch: Arch) -> dict[str, torch.Tensor]:
    """A full Megatron state dict (local-spec names, global layers) as an HF state dict, with
    exactly the keys ``save_pretrained`` writes (no ``lm_head.weight`` when tied)."""
    out: dict[str, torch.Tensor] = {}
    for name in megatron_names(arch):
        t = mg[name]
        for k, v in _hf_pieces(name, t, arch):
            out[k] = v.contiguous().clone()
    return out


def _hf_pieces(name: str, t: torch.Tensor, arch: Arch) -> Iterable[tuple[str, torch.Tensor]]:
    if arch.family == "gpt2":
        yield from _gpt2_pieces(name, t, arch)
        return
    if name == "embedding.word_embeddings.weight":
        yield "model.embed_tokens.weight", t
        return
    if name == "decoder.final_layernorm.weight":
        yield "model.norm.weight", t
        return
    if name == "output_layer.weight":
        yield "lm_head.weight", t
        return
    i, rest = _layer(name)
    p = f"model.layers.{i}."
    match rest:
        case "input_layernorm.weight":
            yield p + "input_layernorm.weight", t
        case "pre_mlp_layernorm.weight":
            yield p + "post_attention_layernorm.weight", t
        case "self_attention.linear_qkv.weight" | "self_attention.linear_qkv.bias":
            kind = rest.rsplit(".", 1)[1]
            for x, part in zip("qkv", _split_qkv(t, arch)):
                yield f"{p}self_attn.{x}_proj.{kind}", part
        case "self_attention.linear_proj.weight":
            yield p + "self_attn.o_proj.weight", t
        case "mlp.linear_fc1.weight":
            gate, up = t.chunk(2, dim=0)
            yield p + "mlp.gate_proj.weight", gate
            yield p + "mlp.up_proj.weight", up
        case "mlp.linear_fc2.weight":
            yield p + "mlp.down_proj.weight", t
        case _:
            raise KeyError(f"no HF target for Megatron parameter {name}")


def _gpt2_pieces(name: str, t: torch.Tensor, arch: Arch) -> Iterable[tuple[str, torch.Tensor]]:
    if name == "embedding.word_embeddings.weight":
        yield "transformer.wte.weight", t
        return
    if name == "embedding.position_embeddings.weight":
        yield "transformer.wpe.weight", t
        return
    if name == "output_layer.weight":
        yield "lm_head.weight", t
        return
    if name.startswith("decoder.final_layernorm."):
        yield "transformer.ln_f." + name.rsplit(".", 1)[1], t
        return
    i, rest = _layer(name)
    p = f"transformer.h.{i}."
    module, kind = rest.rsplit(".", 1)
    hf_module = {"input_layernorm": "ln_1", "pre_mlp_layernorm": "ln_2", "self_attention.linear_qkv": "attn.c_attn",
                 "self_attention.linear_proj": "attn.c_proj", "mlp.linear_fc1": "mlp.c_fc",
                 "mlp.linear_fc2": "mlp.c_proj"}[module]
    if module == "self_attention.linear_qkv":
        t = torch.cat(_split_qkv(t, arch), dim=0)
    if kind == "weight" and "layernorm" not in module:
        t = t.t()
    yield f"{p}{hf_module}.{kind}", t


# -- tensor-parallel sharding ----------------------------------------------------------------

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


def shard(name: str, full: torch.Tensor, arch: Arch, tp_rank: int, tp: int, padded_vocab: int) -> torch.Tensor:
    """Rank ``tp_rank``'s slice of the full tensor ``name``."""
    if _is_vocab(name) and padded_vocab > full.shape[0]:
        full = torch.cat([full, full.new_zeros(padded_vocab - full.shape[0], *full.shape[1:])])
    dim = tp_split_dim(name)
    if dim is None or tp == 1:
        return full
    if arch.gated and local_name(name).endswith("linear_fc1.weight"):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[tp_rank], up.chunk(tp, dim=0)[tp_rank]], dim=0)
    return full.chunk(tp, dim=dim)[tp_rank]


def unshard(name: str, parts: list[torch.Tensor], arch: Arch) -> torch.Tensor:
    """Inverse of :func:`shard`: the full tensor from every tensor-parallel rank's slice, in rank
    order, with vocabulary padding removed."""
    dim = tp_split_dim(name)
    if dim is None or len(parts) == 1:
        full = parts[0]
    elif arch.gated and local_name(name).endswith("linear_fc1.weight"):
        halves = [p.chunk(2, dim=0) for p in parts]
        full = torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    else:
        full = torch.cat(parts, dim=dim)
    if _is_vocab(name):
        full = full[: arch.vocab_size]
    return full
