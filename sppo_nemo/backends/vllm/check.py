"""The recipe's ``generation.vllm`` keys, checked at load time (pure Python: no vllm, no torch).

Every problem as 'dotted.key: what; fix', all reported at once by ``recipe.check``. Whether the
interpreter has vllm, and whether the GPUs are there, is known only where the run starts: the
controller checks those (exit 1, naming the fix).
"""

from __future__ import annotations

from pathlib import Path

from sppo_nemo.config import Recipe
from sppo_nemo.hub import UnreadableConfig, policy_config

KEY = "generation.vllm."


def longest_response(r: Recipe) -> int:
    """The most new tokens any sampling of the run asks for (training splits or evaluation)."""
    return max(r.sampling.max_new_tokens, r.evaluation.max_new_tokens or 0)


def model_len(r: Recipe) -> int:
    """The engines' max_model_len: the recipe's, or room for the longest prompt the trainer keeps
    plus the longest response (and at least the trainer's max_length)."""
    v = r.generation.vllm
    if v.max_model_len is not None:
        return v.max_model_len
    return max(r.trainer.max_length, r.trainer.max_prompt_length + longest_response(r))


def check(r: Recipe, base_dir: Path) -> list[str]:
    v = r.generation.vllm
    p = [f"{KEY}{k}: {getattr(v, k)}; must be at least 1" for k in ("tensor_parallel",) if getattr(v, k) < 1]
    p += [f"{KEY}{k}: {getattr(v, k)}; must be at least 1 (or null)" for k in ("engines", "max_model_len")
          if getattr(v, k) is not None and getattr(v, k) < 1]
    if not 0.0 < v.gpu_memory_utilization <= 1.0:
        p.append(f"{KEY}gpu_memory_utilization: {v.gpu_memory_utilization}; must be in (0, 1], e.g. 0.9")
    if v.kv_cache_gib is not None and v.kv_cache_gib <= 0:
        p.append(f"{KEY}kv_cache_gib: {v.kv_cache_gib}; must be positive (GiB), or null")
    if v.python is not None and not v.python.strip():
        p.append(f"{KEY}python: empty; give the interpreter that has vllm (bash scripts/vllm_venv.sh prints its "
                 f"folder: <folder>/bin/python), or null for this one")
    if v.srun_args and v.launcher != "srun":
        p.append(f"{KEY}srun_args: set, but generation.vllm.launcher is local; set launcher=srun or remove them")
    need = r.trainer.max_prompt_length + longest_response(r)
    if v.max_model_len is not None and 1 <= v.max_model_len < need:
        p.append(f"{KEY}max_model_len: {v.max_model_len} holds no prompt of trainer.max_prompt_length="
                 f"{r.trainer.max_prompt_length} with a response of {longest_response(r)} new tokens (needs {need}); "
                 f"raise it, lower the lengths, or set it null")
    return p + (_shape_problems(r, base_dir, v.tensor_parallel) if v.tensor_parallel >= 1 else [])


def _shape_problems(r: Recipe, base_dir: Path, tp: int) -> list[str]:
    """Tensor parallelism splits attention heads and key/value heads evenly across an engine's GPUs."""
    try:
        cfg = policy_config(r.policy.model, base_dir)
    except UnreadableConfig as e:
        return [str(e)]
    if cfg is None or tp == 1:
        return []
    heads = cfg.get("num_attention_heads")
    kv = cfg.get("num_key_value_heads", heads)
    out = []
    for name, n in (("attention heads", heads), ("key/value heads", kv)):
        if isinstance(n, int) and n % tp:
            out.append(f"{KEY}tensor_parallel: {tp} does not divide the policy's {n} {name}; choose a divisor of {n}")
    return out
