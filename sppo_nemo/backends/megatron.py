"""Megatron-core SPPO trainer: the worker side, run in every process of a torchrun (or srun) job.

This is the only module that imports ``megatron.core``. The sppo-run process never imports it:
:mod:`sppo_nemo.backends.megatron_launch` writes a job folder and starts
``python -m sppo_nemo.backends.megatron JOB_DIR`` in ``tensor × pipeline × data`` processes.

Each process builds its shard of a Megatron ``GPTModel`` (Transformer Engine layer spec when
Transformer Engine is importable and allowed, else the local spec), loads π_t from its HF
checkpoint through :mod:`megatron_convert`, computes the reference log-probabilities of every
training row once (forward only), trains with the recipe's loss on summed response-token
log-probabilities taken from the vocabulary-parallel logits, and writes π_{t+1} as an HF
checkpoint. Data parallelism goes through megatron's DDP (optionally the distributed optimizer),
pipelining through megatron's schedules.

Step semantics match the torch trainer exactly: micro-batches of ``batch_size`` rows are cut from
the same seeded shuffle, an optimizer step takes ``grad_accum × data_parallel`` consecutive ones
(data-parallel rank d takes the d-th run of ``grad_accum``), each micro-batch contributes its mean
row loss / grad_accum, and DDP averages over data-parallel ranks. A step short of micro-batches at
the end is padded with empty ones that contribute nothing.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.models.gpt.gpt_layer_specs import (get_gpt_layer_local_spec,
                                                      get_gpt_layer_with_transformer_engine_spec)
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import Float16Module
from megatron.core.transformer.transformer_config import TransformerConfig

from sppo_nemo.backends import megatron_convert as conv
from sppo_nemo.backends.hf import ChatFormat, Encoded, load_tokenizer
from sppo_nemo.backends.torch_trainer import StepStats, batch_loss, encode_rows, lr_factor, train_summary
from sppo_nemo.protocols import PairRow, PointRow

try:  # Transformer Engine: fused kernels, flash attention; optional
    importlib.import_module("transformer_engine.pytorch")
    HAVE_TE = True
except ImportError:
    HAVE_TE = False

VOCAB_MULTIPLE = 128  # pad the vocabulary to a multiple of 128·TP for aligned GEMMs; padded logits are masked


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


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
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    ps.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    torch.manual_seed(seed)
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


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


def transformer_config(arch: conv.Arch, opts: ModelOptions) -> TransformerConfig:
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
    the local layer spec's attention when Transformer Engine is absent. Causal only, which is all a
    right-padded decoder batch needs (padding comes after every real token)."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        if packed_seq_params is not None or attention_bias is not None or mask_type != AttnMaskType.causal:
            raise NotImplementedError("SDPAttention handles causal, unpacked, bias-free attention only")
        # [s, b, heads, d] → [b, heads, s, d]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.softmax_scale,
                                             enable_gqa=k.shape[1] != q.shape[1])
        return out.permute(2, 0, 1, 3).reshape(out.shape[2], out.shape[0], -1)


def build_model(arch: conv.Arch, opts: ModelOptions) -> tuple[GPTModel, TransformerConfig]:
    """This rank's shard of the GPTModel (weights uninitialised; see :func:`load_hf_weights`)."""
    cfg = transformer_config(arch, opts)
    if use_te(opts):
        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec(normalization=arch.normalization)
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
    _mark_tensor_parallel(model, arch)
    return model, cfg


def _mark_tensor_parallel(model: GPTModel, arch: conv.Arch) -> None:
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
            stride = 2 if arch.gated and conv.local_name(name).endswith("linear_fc1.weight") else 1
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


def load_hf_weights(model: GPTModel, arch: conv.Arch, policy_dir: Path) -> None:
    """Copy π_t's HF weights into this rank's shard, converting and slicing per parameter."""
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


def gather_full_state(model: torch.nn.Module, arch: conv.Arch, of=lambda p: p.detach()
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


def unwrap(model: torch.nn.Module) -> GPTModel:
    while not isinstance(model, GPTModel):
        model = model.module
    return model


# -- batches and log-probabilities -----------------------------------------------------------

@dataclass
class MicroBatch:
    """One micro-batch: ``rows`` training rows (or none, for padding), each with 1 or 2 sequences."""

    row_ids: list[int]  # indices into the training rows; empty for a padding micro-batch
    ids: torch.Tensor  # (n_seq, L) right-padded token ids
    targets: torch.Tensor  # (n_seq, L): ids shifted left (the token each position predicts)
    resp_mask: torch.Tensor  # (n_seq, L) float: 1 where the target is a response token
    per_row: int  # sequences per row
    epoch: int = 0


def make_micro_batch(row_ids: list[int], seqs: Sequence[Sequence[Encoded]], pad_id: int, per_row: int,
                     multiple: int = 1, epoch: int = 0) -> MicroBatch:
    """Right-padded ids, next-token targets and the response mask; an empty ``row_ids`` gives one
    dummy sequence whose mask is all zero (a padding micro-batch)."""
    flat = [e for i in row_ids for e in seqs[i]]
    if not flat:
        flat = [Encoded(prompt_ids=[pad_id], response_ids=[pad_id])]
    width = max(len(e.prompt_ids) + len(e.response_ids) for e in flat)
    width = int(math.ceil(width / multiple) * multiple)
    ids = torch.full((len(flat), width), pad_id, dtype=torch.long)
    resp = torch.zeros((len(flat), width), dtype=torch.float32)
    for i, e in enumerate(flat):
        seq = e.prompt_ids + e.response_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        if row_ids:  # target at position t is token t+1: response tokens sit at len(prompt)..len(seq)-1
            resp[i, len(e.prompt_ids) - 1: len(seq) - 1] = 1.0
    targets = torch.cat([ids[:, 1:], torch.full((len(flat), 1), pad_id, dtype=torch.long)], dim=1)
    return MicroBatch(row_ids=list(row_ids), ids=ids, targets=targets, resp_mask=resp, per_row=per_row, epoch=epoch)


def vocab_parallel_token_logps(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """log π(target | prefix) per position from this rank's vocabulary slice of the logits
    (..., V_padded/TP). Padded vocabulary entries are masked out of the softmax. The logits are
    copied to fp32 first: megatron's vocab-parallel cross entropy works in place on its input."""
    part = logits.shape[-1]
    start = ps.get_tensor_model_parallel_rank() * part
    x = logits.float().clone() if logits.dtype == torch.float32 else logits.float()
    if start + part > vocab_size:
        x[..., max(0, vocab_size - start):] = -1e30
    return -tensor_parallel.vocab_parallel_cross_entropy(x, targets)


def forward_logits(model: torch.nn.Module, mb: MicroBatch, device: torch.device, causal_mask: bool) -> torch.Tensor:
    """Logits (n_seq, L, V/TP) on the last stage. ``causal_mask``: pass an explicit causal mask (the
    local attention needs one; TE and SDPA attention are causal by themselves)."""
    ids = mb.ids.to(device)
    pos = torch.arange(ids.shape[1], device=device).unsqueeze(0).expand_as(ids)
    mask = None if not causal_mask else torch.triu(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool, device=device),
                                      diagonal=1)[None, None]
    return model(ids, pos, mask)


def sequence_logps(token_logps: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
    """(rows, per_row) summed response log-probs from (n_seq, L) token log-probs."""
    s = (token_logps * mb.resp_mask.to(token_logps.device)).sum(dim=1)
    return s.view(-1, mb.per_row)


class ResponseRows:
    """Forward pre-hook on the output layer: keep only the hidden states that predict response
    tokens, so the vocabulary projection, its logits and the cross entropy cover the responses
    alone (as the torch trainer does) instead of every position. The logits then come out
    (1, n_response_tokens, V/TP), in (sequence, position) order."""

    def __init__(self, mb: MicroBatch, device: torch.device):
        flat = mb.resp_mask.flatten()
        index = flat.nonzero().squeeze(1)
        self.weight = torch.ones(len(index))
        if len(index) == 0:  # a padding micro-batch: one position, weighted 0
            index, self.weight = torch.zeros(1, dtype=torch.long), torch.zeros(1)
        self.index = index.to(device)
        self.seq_of = (index // mb.ids.shape[1]).to(device)
        self.targets = mb.targets.flatten()[index].unsqueeze(0).to(device)
        self.weight = self.weight.to(device)

    def __call__(self, module, args, kwargs):
        h = args[0]  # [s, b, hidden]
        rows = h.transpose(0, 1).reshape(-1, h.shape[-1]).index_select(0, self.index)
        return (rows.unsqueeze(1), *args[1:]), kwargs

    def sequence_logps(self, token_logps: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
        seq = torch.zeros(mb.ids.shape[0], dtype=token_logps.dtype, device=token_logps.device)
        return seq.index_add(0, self.seq_of, token_logps * self.weight).view(-1, mb.per_row)


def schedule_pass(model: torch.nn.Module, micro: list[MicroBatch], forward_only: bool, on_logps,
                  device: torch.device, causal_mask: bool, vocab_size: int) -> None:
    """One pass of megatron's schedule (1F1B when pipelined) over this rank's micro-batches.
    On the last pipeline stage ``on_logps(mb, seq_logps, response_token_logps)`` runs for every
    micro-batch and returns the loss to back-propagate (its mean over rows: the schedule divides
    by the number of micro-batches); ``response_token_logps`` is flat, in (sequence, position)
    order. With sequence parallelism (hidden states split along the sequence at the output
    layer) the logits of every position are computed and masked instead."""

    def step_fn(it, mdl):
        mb = next(it)
        inner = unwrap(mdl)
        select = ResponseRows(mb, device) if inner.post_process and not inner.config.sequence_parallel else None
        hook = inner.output_layer.register_forward_pre_hook(select, with_kwargs=True) if select else None
        try:
            out = forward_logits(mdl, mb, device, causal_mask)
        finally:
            if hook:
                hook.remove()

        def loss_fn(logits):
            if select:
                tok_lp = vocab_parallel_token_logps(logits, select.targets, vocab_size)[0]
                return on_logps(mb, select.sequence_logps(tok_lp, mb), tok_lp[select.weight > 0]), {}
            tok_lp = vocab_parallel_token_logps(logits, mb.targets.to(device), vocab_size)
            return on_logps(mb, sequence_logps(tok_lp, mb), tok_lp[mb.resp_mask.to(device) > 0]), {}

        return out, loss_fn

    width = max(x.ids.shape[1] for x in micro)
    rows_per = max(x.ids.shape[0] for x in micro)
    get_forward_backward_func()(forward_step_func=step_fn, data_iterator=iter(micro), model=[model],
                                num_microbatches=len(micro), seq_length=width, micro_batch_size=rows_per,
                                forward_only=forward_only)


# -- the training job ------------------------------------------------------------------------

def read_rows(path: Path) -> list[PointRow] | list[PairRow]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        rows.append(PairRow(**d) if "chosen" in d else PointRow(**d))
    return rows


def plan_steps(n_rows: int, batch_size: int, grad_accum: int, dp: int, epochs: int, seed: int):
    """The torch trainer's micro-batch order (seeded shuffle per epoch, consecutive micro-batches
    per step, steps spanning epochs), grouped into optimizer steps of ``grad_accum × dp``
    micro-batches. Returns a list of steps, each a list of (row_ids, epoch) padded with ([], -1)."""
    order_rng = random.Random(seed)
    mbs = []
    for epoch in range(epochs):
        order = list(range(n_rows))
        order_rng.shuffle(order)
        mbs += [(order[b:b + batch_size], epoch) for b in range(0, n_rows, batch_size)]
    per_step = grad_accum * dp
    steps = []
    for s in range(0, len(mbs), per_step):
        step = mbs[s:s + per_step]
        steps.append(step + [([], -1)] * (per_step - len(step)))
    return steps


class Reporter:
    """Progress lines on stdout for the launcher, from one rank only."""

    def __init__(self, active: bool):
        self.active = active

    def emit(self, kind: str, **payload) -> None:
        if self.active:
            print("@@sppo " + json.dumps({"kind": kind, **payload}), flush=True)


def run_job(job_dir: Path) -> None:
    job = json.loads((job_dir / "job.json").read_text())
    m = job["megatron"]
    tp, pp = m["tensor_parallel"], m["pipeline_parallel"]
    device = init_parallel(tp, pp, job["seed"])
    try:
        _train(job, job_dir, device)
    finally:
        destroy_parallel()


def _train(job: dict, job_dir: Path, device: torch.device) -> None:
    c, m = job["trainer"], job["megatron"]
    policy_dir, output_dir = Path(job["policy_dir"]), Path(job["output_dir"])
    loss_type, eta, seed = job["loss_type"], job["eta"], job["seed"]
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    last = ps.is_pipeline_last_stage()
    reporter = Reporter(last and dp_rank == 0 and ps.get_tensor_model_parallel_rank() == 0)

    arch = conv.arch_from_hf_config(json.loads((policy_dir / "config.json").read_text()))
    opts = ModelOptions(precision=c["precision"], transformer_engine=m["transformer_engine"],
                        recompute=m["recompute"], sequence_parallel=m["sequence_parallel"],
                        attention=m.get("attention", "sdpa"))
    te = use_te(opts)
    causal_mask = not te and opts.attention == "local"
    model, cfg = build_model(arch, opts)
    if device.type == "cuda":
        model.cuda(device)
    load_hf_weights(model, arch, policy_dir)
    if opts.precision == "bf16":
        model = Float16Module(cfg, model)
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=m["overlap_grad_reduce"],
        use_distributed_optimizer=m["distributed_optimizer"], bucket_size=m.get("bucket_size"))
    model = DistributedDataParallel(cfg, ddp_cfg, model)
    model.broadcast_params()  # identical replicas across data parallel ranks

    tok = load_tokenizer(str(policy_dir))
    fmt = ChatFormat(tok, job["system_prompt"])
    rows = read_rows(job_dir / "rows.jsonl")
    seqs = encode_rows(fmt, rows, c["max_prompt_length"], c["max_length"])
    per_row = len(seqs[0]) if seqs else 1
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    multiple = ps.get_tensor_model_parallel_world_size() if cfg.sequence_parallel else 1

    def run(micro: list[MicroBatch], forward_only: bool, on_logps) -> None:
        schedule_pass(model, micro, forward_only, on_logps, device, causal_mask, arch.vocab_size)

    # 1. Reference log-probs of π_t, rows split over data-parallel ranks, then all-gathered.
    t0 = time.time()
    model.eval()
    mine = list(range(dp_rank, len(rows), dp))
    ref_local = torch.zeros(max(1, math.ceil(len(rows) / dp)), per_row, dtype=torch.float32, device=device)
    chunks = [mine[b:b + c["batch_size"]] for b in range(0, len(mine), c["batch_size"])]
    n_chunks = torch.tensor([len(chunks)], device=device)
    dist.all_reduce(n_chunks, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
    chunks += [[]] * (int(n_chunks.item()) - len(chunks))  # equal pass counts keep DDP/pipeline in step

    def keep_ref(mb: MicroBatch, lp: torch.Tensor, _tok) -> torch.Tensor:
        for j, i in enumerate(mb.row_ids):
            ref_local[(i - dp_rank) // dp] = lp[j].detach().float()
            reporter.emit("ref", n=dp)
        return lp.sum() * 0.0

    with torch.no_grad():
        if chunks:
            run([make_micro_batch(ch, seqs, pad, per_row, multiple) for ch in chunks], True, keep_ref)
    reference = torch.zeros(len(rows), per_row, dtype=torch.float32, device=device)
    if last:
        gathered = [torch.empty_like(ref_local) for _ in range(dp)]
        dist.all_gather(gathered, ref_local, group=ps.get_data_parallel_group())
        for r in range(dp):
            n_r = len(range(r, len(rows), dp))
            reference[r::dp] = gathered[r][:n_r]
    ref_seconds = time.time() - t0

    # 2. Training.
    opt_cfg = OptimizerConfig(
        optimizer="adam", lr=c["lr"], weight_decay=c["weight_decay"], adam_beta1=0.9, adam_beta2=0.999,
        adam_eps=1e-8, clip_grad=c["max_grad_norm"], bf16=opts.precision == "bf16",
        params_dtype=cfg.params_dtype, use_distributed_optimizer=m["distributed_optimizer"])
    optimizer = get_megatron_optimizer(opt_cfg, [model])
    cfg.finalize_model_grads_func = finalize_model_grads
    cfg.no_sync_func = model.no_sync
    if m["overlap_grad_reduce"]:
        cfg.grad_sync_func = model.start_grad_sync
    model.train()

    g = c["grad_accum"]
    steps = plan_steps(len(rows), c["batch_size"], g, dp, c["epochs"], seed)
    total, warmup = len(steps), int(round(c["warmup_ratio"] * len(steps)))
    epoch_sums = torch.zeros(c["epochs"], dtype=torch.float64)
    metrics = []
    for step, slots in enumerate(steps):
        t_step = time.time()
        mine_slots = slots[dp_rank * g:(dp_rank + 1) * g]
        micro = [make_micro_batch(ids, seqs, pad, per_row, multiple, epoch=max(ep, 0)) for ids, ep in mine_slots]
        stats = StepStats()

        def train_loss(mb: MicroBatch, lp: torch.Tensor, _tok) -> torch.Tensor:
            if not mb.row_ids:
                return lp.sum() * 0.0
            ref_mb = reference[mb.row_ids]
            per_example = batch_loss(loss_type, eta, lp, ref_mb, [rows[i] for i in mb.row_ids])
            epoch_sums[mb.epoch] += per_example.detach().double().sum().cpu()
            stats.add(per_example.detach(), lp.detach().float() - ref_mb,
                      sum(len(e.prompt_ids) + len(e.response_ids) for i in mb.row_ids for e in seqs[i]))
            reporter.emit("train", n=len(mb.row_ids) * dp)
            return per_example.mean()

        lr = c["lr"] * lr_factor(step, total, warmup, c["schedule"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.zero_grad_buffer()
        optimizer.zero_grad()
        run(micro, False, train_loss)
        ok, grad_norm, _ = optimizer.step()
        if not ok:
            raise RuntimeError(f"optimizer step {step} was skipped (non-finite gradients)")
        summary = stats.reduce(ps.get_data_parallel_group(), device) if last else None
        if reporter.active:
            metrics.append(StepStats.summary_of(summary, step, lr, float(grad_norm), loss_type, eta,
                                                time.time() - t_step))
            reporter.emit("step", metrics=metrics[-1])

    if last:
        sums = epoch_sums.to(device)
        dist.all_reduce(sums, group=ps.get_data_parallel_group())
        epoch_sums = sums.cpu()

    # 3. Export π_{t+1} as an HF checkpoint (global rank 0 writes it).
    del optimizer
    full = gather_full_state(model, arch)
    if dist.get_rank() == 0:
        save_hf(full, arch, policy_dir, output_dir, opts.precision)
    if reporter.active:
        summary = train_summary(metrics, len(rows), ref_seconds, epoch_sums)
        summary.update({
            "parallel": {"tensor": ps.get_tensor_model_parallel_world_size(),
                         "pipeline": ps.get_pipeline_model_parallel_world_size(), "data": dp},
            "transformer_engine": te,
            "attention": "te" if te else opts.attention,
        })
        result = {"metrics": metrics, "summary": summary}
        tmp = job_dir / "result.json.tmp"
        tmp.write_text(json.dumps(result))
        tmp.replace(job_dir / "result.json")
    dist.barrier()


def save_hf(full: dict[str, torch.Tensor], arch: conv.Arch, policy_dir: Path, output_dir: Path,
            precision: str) -> None:
    """π_{t+1} as an HF checkpoint: safetensors weights in the training precision, π_t's config
    (dtype updated) and tokenizer files."""
    import shutil

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sppo_nemo.backends.megatron JOB_DIR", file=sys.stderr)
        return 2
    run_job(Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
