"""The shape of a decoder in Megatron's terms, read from an HF ``config.json``; pure Python.

Two families have a converter (:mod:`.convert`):

- the Llama family (``llama``, ``mistral``, ``qwen2``, ``qwen3``): RMSNorm, SwiGLU, RoPE,
  grouped-query attention, tied or untied embeddings, a head dimension of its own (``head_dim``),
  Qwen2's q/k/v biases, and Qwen3's per-head RMSNorm of queries and keys before RoPE (megatron's
  ``qk_layernorm``);
- GPT-2 (``gpt2``): LayerNorm with biases, GELU (tanh), learned absolute positions, tied
  embeddings, Conv1D weights (stored transposed in HF).

:func:`arch_from_hf_config` refuses, with the reason, any checkpoint the converter cannot
reproduce exactly. A sliding attention window (Mistral's ``sliding_window``, Qwen2/Qwen3's
``use_sliding_window``) is one: megatron's local layer spec attends over the whole causal prefix.
But a window of W tokens lets every token of a sequence of at most W tokens see its whole prefix
(HF masks key j from query i when i - j ≥ W), so such a model is exactly the full-attention one on
those sequences. Asked to (``accept_window``), the reader records the window in
:attr:`Arch.sliding_window` instead, and the caller holds every trained sequence to it
(:meth:`Arch.window_problem`): the recipe check against ``trainer.max_length``, and the worker
again before it builds the model. No torch here: the recipe check (:mod:`.layout`) reads the shape
too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3", "gpt2")


# Families the field aligns that megatron-core's local spec cannot express, with what it lacks.
_ZERO_CENTRED = "normalisation by (1 + w) (zero-centred RMSNorm), embeddings scaled by √hidden"
_POST_NORMS = "norms after attention and after the MLP"
NOT_EXPRESSED = {
    "gemma": _ZERO_CENTRED,
    "gemma2": f"{_ZERO_CENTRED}, {_POST_NORMS}, tanh soft-capping of attention scores and of the final logits",
    "gemma3": f"{_ZERO_CENTRED}, {_POST_NORMS}, zero-centred q/k norms, separate RoPE bases for local and "
              f"global layers",
}


class UnsupportedModel(ValueError):
    """The HF checkpoint's architecture has no converter here."""


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder, in Megatron's terms, read from an HF ``config.json``."""

    family: str  # "llama" (llama, mistral, qwen2, qwen3) or "gpt2"
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
    qk_norm: bool = False  # Qwen3: RMSNorm over each query and key head before RoPE (megatron's qk_layernorm)
    # a sliding attention window the layer spec does not apply: only sequences of at most this
    # many tokens train exactly (window_problem); None: full causal attention
    sliding_window: int | None = None

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

    def parallel_problems(self, tp: int, pp: int) -> list[tuple[str, str]]:
        """Why this model cannot be split TP×PP, as (the trainer.megatron key at fault, the
        reason), one per reason (empty when it can)."""
        p = []
        if self.num_attention_heads % tp:
            p.append(("tensor_parallel",
                      f"{self.num_attention_heads} attention heads are not divisible by tensor parallel {tp}"))
        if self.num_query_groups % tp:
            p.append(("tensor_parallel", f"{self.num_query_groups} key/value heads (query groups) are not "
                                         f"divisible by tensor parallel {tp}"))
        if self.ffn_hidden_size % tp:
            p.append(("tensor_parallel", f"MLP width {self.ffn_hidden_size} is not divisible by tensor parallel {tp}"))
        if self.num_layers % pp:
            p.append(("pipeline_parallel", f"{self.num_layers} layers are not divisible by pipeline parallel {pp}"))
        return p

    def parallel_errors(self, tp: int, pp: int) -> list[str]:
        """The reasons of :meth:`parallel_problems` alone."""
        return [reason for _, reason in self.parallel_problems(tp, pp)]

    def window_problem(self, max_length: int) -> str | None:
        """Why sequences of up to ``max_length`` tokens would not train exactly under full attention
        (the policy's sliding window is shorter), as 'what; fix'; None when they would."""
        w = self.sliding_window
        if w is None or max_length <= w:
            return None
        return (f"{self.model_type} attends through a sliding window, which megatron's layer spec does not apply: "
                f"a window of {w} tokens acts on sequences longer than {w}; set trainer.max_length ≤ {w} or "
                f"train with trainer.backend=torch")

    def to_dict(self) -> dict:
        return asdict(self)


def arch_from_hf_config(cfg: Mapping, *, accept_window: bool = False) -> Arch:
    """Read an HF config (the dict of ``config.json``); raise :class:`UnsupportedModel` with the
    reason when the converter cannot reproduce the model exactly. With ``accept_window`` a sliding
    attention window is recorded in :attr:`Arch.sliding_window` rather than refused: the caller
    then keeps every sequence within it (:meth:`Arch.window_problem`)."""
    mt = cfg.get("model_type")
    if mt in NOT_EXPRESSED:
        raise UnsupportedModel(f"model_type {mt!r}: megatron-core's local layer spec, which the megatron trainer "
                               f"builds, has no {NOT_EXPRESSED[mt]}, so it cannot train this model exactly; "
                               f"train it with trainer.backend=torch")
    if mt not in SUPPORTED:
        raise UnsupportedModel(
            f"model_type {mt!r} has no Megatron converter (supported: {', '.join(SUPPORTED)}); "
            f"train it with trainer.backend=torch")
    if mt == "gpt2":
        return _gpt2_arch(cfg)
    return _llama_arch(cfg, mt, accept_window)


def _gpt2_arch(cfg: Mapping) -> Arch:
    h = cfg["n_embd"]
    if cfg.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UnsupportedModel(f"gpt2 activation_function {cfg.get('activation_function')!r} is not supported "
                               f"(only gelu_new / gelu_pytorch_tanh)")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if cfg.get(flag):
            raise UnsupportedModel(f"gpt2 with {flag}=true is not supported")
    if cfg.get("scale_attn_weights") is False:
        raise UnsupportedModel("gpt2 with scale_attn_weights=false is not supported")
    return Arch(family="gpt2", model_type="gpt2", num_layers=cfg["n_layer"], hidden_size=h,
                num_attention_heads=cfg["n_head"], num_query_groups=cfg["n_head"],
                kv_channels=h // cfg["n_head"], ffn_hidden_size=cfg.get("n_inner") or 4 * h,
                vocab_size=cfg["vocab_size"], max_position_embeddings=cfg["n_positions"],
                norm_eps=cfg.get("layer_norm_epsilon", 1e-5), tied=bool(cfg.get("tie_word_embeddings", True)),
                qkv_bias=True)


def _llama_arch(cfg: Mapping, mt: str, accept_window: bool) -> Arch:
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
    if mt in ("llama", "mistral", "qwen3") and (cfg.get("attention_bias") or cfg.get("mlp_bias")):
        problems.append("attention_bias/mlp_bias")
    window = _sliding_window(cfg, mt)
    if window is not None and not accept_window:
        problems.append(f"sliding_window {window} (only full attention; the megatron trainer accepts the "
                        f"window where trainer.max_length ≤ {window})")
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
                qkv_bias=(mt == "qwen2"), rotary_base=float(theta), rope_scaling_factor=scaling,
                qk_norm=(mt == "qwen3"), sliding_window=window)


def _sliding_window(cfg: Mapping, mt: str) -> int | None:
    """The attention window of a Llama-family config, None for full attention. Mistral's applies to
    every layer. Qwen2/Qwen3's needs ``use_sliding_window`` and applies to the layers ``layer_types``
    marks ``sliding_attention``; without ``layer_types`` every layer counts, since the documented
    meaning of ``max_window_layers`` (the bottom layers slide) and transformers' code (the layers
    from it up slide) disagree (transformers issues 35896, 38787)."""
    w = cfg.get("sliding_window")
    if not w:
        return None
    if mt == "mistral":
        return int(w)
    if mt in ("qwen2", "qwen3") and cfg.get("use_sliding_window"):
        types = cfg.get("layer_types")
        return int(w) if types is None or "sliding_attention" in types else None
    return None


def _megatron_llama3(rope: Mapping) -> bool:
    """Llama 3.1 RoPE scaling with the constants megatron's RotaryEmbedding hard-codes."""
    return (rope.get("factor") is not None and float(rope.get("low_freq_factor", 1.0)) == 1.0
            and float(rope.get("high_freq_factor", 4.0)) == 4.0
            and int(rope.get("original_max_position_embeddings", 8192)) == 8192)
