"""The recipe's ``generation.vllm`` keys, checked at load time (pure Python: no vllm, no torch).

Every problem as 'dotted.key: what; fix', all reported at once by ``recipe.check``. Whether the
interpreter has vllm (:func:`check_interpreter`), and whether the engines fit the visible GPUs
(:func:`local_gpu_problem`), is known only where the run starts: ``sppo_nemo/run/preflight.py`` asks
both before the first stage, and the controller again when it starts engines (exit 1, naming the fix).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sppo_nemo.schema.config import Recipe, VllmConfig
from sppo_nemo.schema.errors import UserError
from sppo_nemo.formats.hub import UnreadableConfig, policy_config

KEY = "generation.vllm."
SETUP = "bash scripts/vllm_venv.sh"


class VllmUnavailable(UserError):
    pass


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


def check_interpreter(python: str) -> None:
    """The interpreter exists and can import vllm (found, not imported: no engine, no GPU touched),
    or the error names the setup script. Asked anew every time: nothing is remembered."""
    fix = (f"build the vLLM environment with `{SETUP}` and set generation.vllm.python=<the folder it prints>/bin/python"
           f" (or use generation.backend=hf)")
    try:
        proc = subprocess.run([python, "-c", "import importlib.util, sys; "
                               "sys.exit(0 if importlib.util.find_spec('vllm') else 3)"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VllmUnavailable(f"generation.vllm.python: cannot run {python} ({e}); {fix}") from None
    if proc.returncode != 0:
        raise VllmUnavailable(f"generation.backend=vllm: {python} has no vllm; {fix}")


def local_engines(v: VllmConfig, gpus: int) -> int:
    """The engines launcher=local starts on a machine with ``gpus`` visible GPUs: the recipe's, or
    with engines null, visible GPUs / tensor_parallel (one on CPU, where vLLM's CPU build runs them)."""
    if gpus and v.engines is None:
        return gpus // v.tensor_parallel
    return v.engines or 1


def local_gpu_problem(v: VllmConfig, gpus: int) -> str | None:
    """Why launcher=local's engines cannot run on ``gpus`` visible GPUs, or None (none visible: the
    CPU build of vLLM, where any number of engines shares the cores)."""
    n = local_engines(v, gpus)
    if gpus and (n < 1 or n * v.tensor_parallel > gpus):
        return (f"generation.vllm: {max(n, 1)} engine(s) × tensor_parallel {v.tensor_parallel} need "
                f"{max(n, 1) * v.tensor_parallel} GPUs, {gpus} are visible; lower engines or tensor_parallel, "
                f"or set engines: null")
    return None
