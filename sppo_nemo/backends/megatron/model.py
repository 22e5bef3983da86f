"""The model side of a worker: process groups, the TransformerConfig, and this rank's GPTModel shard.

Each process builds its shard of a Megatron ``GPTModel``: Transformer Engine's layer spec when
Transformer Engine is importable and allowed, else the local spec with torch SDPA attention (or
megatron's own). Its weights are left uninitialised; :mod:`.weights` loads them from π_t.

Attention is always full causal: an :class:`Arch` with a ``sliding_window`` reaches here only
after its caller held every sequence to the window (:meth:`Arch.window_problem`), where the window
masks nothing.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_layer_local_spec,
                                                      get_gpt_layer_with_transformer_engine_spec)
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from sppo_nemo.backends.megatron.arch import Arch

try:  # Transformer Engine: fused kernels, flash attention; optional
    importlib.import_module("transformer_engine.pytorch")
    HAVE_TE = True
except ImportError:
    HAVE_TE = False

VOCAB_MULTIPLE = 128  # pad the vocabulary to a multiple of 128·TP for aligned GEMMs; padded logits are masked


# -- process groups --------------------------------------------------------------------------

def init_parallel(tp: int, pp: int, seed: int) -> torch.device:
    """Join the job's process group (torchrun's or Slurm's environment) and build megatron's
    tensor/pipeline/data groups. NCCL on CUDA, gloo otherwise."""
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ:  # srun without torchrun
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(device_index(int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def device_index(local_rank: int, visible: int) -> int:
    """The GPU this rank uses among those it sees. torchrun shows every rank all of the node's GPUs
    (rank k takes GPU k); srun with per-task binding (--gpus-per-task, --gpu-bind) shows each task
    only its own, so LOCAL_RANK 3 must take device 0 of the one it sees."""
    return local_rank % max(1, visible)


def destroy_parallel() -> None:
    ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


# -- the model -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelOptions:
    precision: str = "fp32"  # fp32 | bf16
    transformer_engine: str = "auto"  # auto | on | off
    recompute: str = "none"  # none | selective | full
    sequence_parallel: bool = False
    attention: str = "sdpa"  # without Transformer Engine: sdpa (torch's fused kernels) | local (megatron's)


def use_te(opts: ModelOptions) -> bool:
    if opts.transformer_engine == "on" and not HAVE_TE:
        raise RuntimeError("trainer.megatron.transformer_engine=on but transformer_engine is not importable; "
                           "install it (the NGC container has it) or set it to auto")
    return HAVE_TE and torch.cuda.is_available() and opts.transformer_engine != "off"


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def transformer_config(arch: Arch, opts: ModelOptions) -> TransformerConfig:
    tp, pp = ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()
    errs = arch.parallel_errors(tp, pp)
    if errs:
        raise ValueError("; ".join(errs))
    bf16 = opts.precision == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    cuda = torch.cuda.is_available()
    te = use_te(opts)
    if opts.sequence_parallel and tp > 1 and not te:
        raise ValueError("trainer.megatron.sequence_parallel needs Transformer Engine's norms (megatron's local "
                         "layer spec refuses it); install transformer_engine or set sequence_parallel=false")
    kw = dict(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, num_attention_heads=arch.num_attention_heads,
        num_query_groups=arch.num_query_groups, kv_channels=arch.kv_channels, ffn_hidden_size=arch.ffn_hidden_size,
        normalization=arch.normalization, layernorm_epsilon=arch.norm_eps, gated_linear_unit=arch.gated,
        activation_func=F.silu if arch.gated else gelu_tanh, add_bias_linear=arch.linear_bias,
        add_qkv_bias=arch.qkv_bias, hidden_dropout=0.0, attention_dropout=0.0,
        # Qwen3's per-head q/k RMSNorm (eps layernorm_epsilon); the flag also makes finalize_model_grads
        # sum those replicated weights' gradients over tensor-parallel ranks, each rank seeing its heads only
        qk_layernorm=arch.qk_norm,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, sequence_parallel=opts.sequence_parallel and tp > 1,
        bf16=bf16, params_dtype=dtype, pipeline_dtype=dtype, autocast_dtype=dtype,
        # micro-batches differ in length: pipeline stages then exchange shapes before activations
        # (0.16 refuses that with its default MoE dispatcher, irrelevant to a dense model)
        variable_seq_lengths=pp > 1, moe_token_dispatcher_type="alltoall",
        use_cpu_initialization=not cuda, perform_initialization=False,  # weights come from the HF checkpoint
        bias_activation_fusion=te and arch.gated, bias_dropout_fusion=te, masked_softmax_fusion=te,
        apply_rope_fusion=False, persist_layer_norm=te, gradient_accumulation_fusion=False,
        deallocate_pipeline_outputs=pp > 1,
    )
    if opts.recompute == "selective":
        kw.update(recompute_granularity="selective")
    elif opts.recompute == "full":
        kw.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return TransformerConfig(**kw)


class SDPAttention(DotProductAttention):
    """Megatron's core attention computed by ``torch.nn.functional.scaled_dot_product_attention``
    (flash / memory-efficient kernels on GPU) instead of materialising the (b, h, s, s) scores:
    the local layer spec's attention when Transformer Engine is absent. Causal without a mask,
    which is all a right-padded decoder batch needs (padding comes after every real token); with
    an ``attention_mask`` (a shared-prompt packed batch, :mod:`.packed`: megatron's convention,
    True = masked out) that mask alone, which already holds the causal part."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        if packed_seq_params is not None or attention_bias is not None or mask_type != AttnMaskType.causal:
            raise NotImplementedError("SDPAttention handles causal, unpacked, bias-free attention only")
        # [s, b, heads, d] → [b, heads, s, d]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        if attention_mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                                 enable_gqa=k.shape[1] != q.shape[1])
        else:  # torch's boolean mask is True where attention is allowed
            if k.shape[1] != q.shape[1]:  # CUDA's masked (memory-efficient) kernel takes no enable_gqa
                k, v = (x.repeat_interleave(q.shape[1] // k.shape[1], dim=1) for x in (k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=~attention_mask, scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(out.shape[2], out.shape[0], -1)


def build_model(arch: Arch, opts: ModelOptions) -> tuple[GPTModel, TransformerConfig]:
    """This rank's shard of the GPTModel, weights uninitialised (see :func:`.weights.load_hf_weights`)."""
    cfg = transformer_config(arch, opts)
    if use_te(opts):
        # TE's own causal core attention, fused (flash / cuDNN): the worker hands it right-padded
        # causal micro-batches only. A shared-prompt block mask would need TE's `arbitrary` mask
        # type, which TE serves with its unfused kernel (L×L scores per layer), so prompt sharing
        # is off under TE (worker.Setup.shares_prompts).
        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=arch.qk_norm)
    else:
        spec = get_gpt_layer_local_spec(normalization=arch.normalization, qk_layernorm=arch.qk_norm)
        if opts.attention == "sdpa":
            spec.submodules.self_attention.submodules.core_attention = SDPAttention
    tp = ps.get_tensor_model_parallel_world_size()
    model = GPTModel(
        cfg, spec, vocab_size=arch.padded_vocab(tp, VOCAB_MULTIPLE),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
        parallel_output=True, share_embeddings_and_output_weights=arch.tied,
        position_embedding_type=arch.position_embedding, rotary_base=int(arch.rotary_base),
        rope_scaling=arch.rope_scaling_factor is not None, rope_scaling_factor=arch.rope_scaling_factor or 8.0,
    )
    return model, cfg


def unwrap(model: torch.nn.Module) -> GPTModel:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while not isinstance(model, GPTModel):
        model = model.module
    return model
