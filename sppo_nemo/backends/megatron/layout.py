"""The megatron trainer's parallel layout: derived from the recipe, and checked against it and
against the policy's shape before anything runs. Pure Python (no torch, no megatron).

World size = nnodes · nproc_per_node = TP · PP · DP; an optimizer step takes
``batch_size · grad_accum · DP`` rows, so a recipe that sets ``global_batch_size`` derives
``grad_accum`` from it. The recipe's structural check (types, ``Literal`` choices) comes first, in
``recipe.py``; :func:`check` adds what needs values: every problem as 'dotted.key: what; fix'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sppo_nemo.backends.megatron.arch import UnsupportedModel, arch_from_hf_config
from sppo_nemo.schema.config import Recipe, TrainerConfig
from sppo_nemo.formats.hub import UnreadableConfig, policy_config


@dataclass(frozen=True)
class Layout:
    """The processes of one megatron job and the accumulation that keeps a step's rows."""

    tensor: int
    pipeline: int
    data: int
    world: int
    grad_accum: int


def megatron_layout(t: TrainerConfig) -> Layout:
    """The layout of a checked recipe's megatron trainer."""
    m = t.megatron
    tp, pp = m.tensor_parallel, m.pipeline_parallel
    if m.data_parallel is not None:
        dp = m.data_parallel
    elif m.nproc_per_node is not None:
        dp = max(1, m.nnodes * m.nproc_per_node // (tp * pp))
    else:
        dp = max(1, m.nnodes)
    accum = t.grad_accum
    if m.global_batch_size is not None:
        accum = max(1, m.global_batch_size // (t.batch_size * dp))
    return Layout(tensor=tp, pipeline=pp, data=dp, world=tp * pp * dp, grad_accum=accum)


def check(r: Recipe, base_dir: Path) -> list[str]:
    """Every problem of ``trainer.megatron`` (with ``trainer.backend=megatron``), each naming its key."""
    t, m = r.trainer, r.trainer.megatron
    key = "trainer.megatron."
    p = [f"{key}{k}: {getattr(m, k)}; must be at least 1" for k in ("tensor_parallel", "pipeline_parallel", "nnodes")
         if getattr(m, k) < 1]
    p += [f"{key}{k}: {getattr(m, k)}; must be at least 1 (or null)"
          for k in ("data_parallel", "nproc_per_node", "global_batch_size")
          if getattr(m, k) is not None and getattr(m, k) < 1]
    if p:
        return p
    lay = megatron_layout(t)
    tp, pp = lay.tensor, lay.pipeline
    if m.nproc_per_node is not None:
        procs = m.nnodes * m.nproc_per_node
        if procs % (tp * pp):
            p.append(f"{key}nproc_per_node: {m.nnodes} node(s) × {m.nproc_per_node} processes = {procs} is not a "
                     f"multiple of tensor_parallel·pipeline_parallel = {tp * pp}; world size must be TP·PP·DP")
        elif procs != lay.world:
            p.append(f"{key}data_parallel: {m.data_parallel} but {procs} processes / (TP·PP = {tp * pp}) "
                     f"gives {procs // (tp * pp)}; world size must be TP·PP·DP, so drop data_parallel or fix it")
    elif m.nnodes > 1:
        p.append(f"{key}nproc_per_node: needed when nnodes > 1; set it to the processes (usually GPUs) per node")
    if m.nnodes > 1 and m.launcher != "srun":
        p.append(f"{key}launcher: torchrun starts one node; with nnodes={m.nnodes} use launcher=srun "
                 f"inside a Slurm allocation")
    if m.global_batch_size is not None:
        per = t.batch_size * lay.data
        if m.global_batch_size % per:
            p.append(f"{key}global_batch_size: {m.global_batch_size} is not a multiple of "
                     f"batch_size·DP = {t.batch_size}·{lay.data}; make it one")
        elif t.grad_accum not in (1, m.global_batch_size // per):
            p.append(f"trainer.grad_accum: {t.grad_accum} contradicts global_batch_size {m.global_batch_size} "
                     f"(= batch_size·DP·{m.global_batch_size // per}); set only one of them")
    if m.sequence_parallel and tp == 1:
        p.append(f"{key}sequence_parallel: needs tensor_parallel > 1; set it false")
    return p + _shape_problems(r, base_dir, tp, pp)


def _shape_problems(r: Recipe, base_dir: Path, tp: int, pp: int) -> list[str]:
    """The policy's shape against TP/PP, and its sliding attention window (if any) against
    trainer.max_length, when its config.json can be read without the network."""
    try:
        cfg = policy_config(r.policy.model, base_dir)
    except UnreadableConfig as e:
        return [str(e)]
    if cfg is None:
        return []
    try:
        arch = arch_from_hf_config(cfg, accept_window=True)  # a sliding window: checked below
    except UnsupportedModel as e:
        return [f"policy.model: {e}"]
    p = [f"trainer.megatron.{k}: {reason}; choose a layout that splits the model evenly"
         for k, reason in arch.parallel_problems(tp, pp)]
    window = arch.window_problem(r.trainer.max_length)
    if window:
        p.append(f"trainer.max_length: {r.trainer.max_length}; {window}")
    return p
