"""Refuse before working: engines this machine cannot run are named before the first stage starts.

A run's stages use engines with needs of their own: the megatron trainer's ranks need CUDA GPUs,
TP·PP·DP of them on this node when torchrun starts them; vLLM's engines need an interpreter that
has vllm and, on a GPU machine, engines × tensor_parallel visible GPUs. Left to the stages, a
megatron recipe on a CPU machine runs generate, annotate and build and then fails at train. Here
those needs are checked for the stages this command will run, and only those (the plan less the
finished stages, or ``--stage``'s one, or everything from ``--restart-from`` on), all problems in
one message (exit 1), before any stage, lock or file is touched.

What is not on this machine is not counted: a launcher ``srun`` starts its ranks or engines on
the nodes of a Slurm allocation. ``--submit`` checks nothing here (its jobs run on other nodes);
each job's own ``sppo-run --stage`` checks the node it runs on.

The probes are four functions (the tests replace them):

- :func:`gpu_count`: ``torch.cuda.device_count()``. Before CUDA is initialised it asks NVML
  (honouring ``CUDA_VISIBLE_DEVICES``, UUIDs included) and caches nothing; only where NVML cannot
  answer (MIG UUIDs, no libnvidia-ml) does it fall back to ``cudaGetDeviceCount``, which
  initialises the driver (``cuInit``) but creates no context and allocates nothing on any GPU.
  ``torch.cuda.is_available()`` is not used: it always takes the ``cudaGetDeviceCount`` path.
  A CPU build of torch answers 0 without looking.
- :func:`vllm_problem`: the controller's own interpreter check (``backends/vllm/check.py``): a
  subprocess that finds vllm without importing it; asked anew on every run.
- :func:`installed`: whether a module is found: lm-eval (``evaluation.lm_eval``), scikit-learn
  (``evaluation.alpaca_eval``'s length-controlled fit).
- :func:`megatron_cpu_patched`: whether the test-only CPU patches of megatron-core
  (``cpu_patches/megatron_cpu.py``, installed in every worker by ``cpu_patches/megatron_cpu_site/sitecustomize.py``
  on ``PYTHONPATH``, which the workers inherit) are on; then megatron without CUDA is allowed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sppo_nemo.schema.config import Recipe
from sppo_nemo.schema.errors import UserError

CPU_PATCH_SITE = "megatron_cpu_site"  # cpu_patches/megatron_cpu_site: a sitecustomize that patches megatron-core for CPU


class EnginesUnavailable(UserError):
    """The recipe's engines cannot run on this machine: exit 1, before any stage ran."""


# ---------------------------------------------------------------------- probes


def gpu_count() -> int:
    """The GPUs this process sees, without a CUDA context here (see the module's docstring)."""
    import torch

    return max(0, torch.cuda.device_count())


def vllm_problem(python: str) -> str | None:
    """Why ``python`` cannot run vLLM's engines (the controller's message and fix), or None."""
    from sppo_nemo.backends.vllm.check import VllmUnavailable, check_interpreter

    try:
        check_interpreter(python)
    except VllmUnavailable as exc:
        return str(exc)
    return None


def installed(module: str) -> bool:
    """Whether ``module`` is installed here (found, not imported: its worker or fit imports it)."""
    import importlib.util

    return importlib.util.find_spec(module) is not None


def installed_in(python: str, module: str) -> bool:
    """Whether another interpreter finds ``module`` (found, not imported)."""
    import subprocess

    try:
        probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def megatron_cpu_patched() -> bool:
    """The test-only CPU patches are on the workers' PYTHONPATH (they inherit this environment)."""
    return any(Path(p).name == CPU_PATCH_SITE and (Path(p) / "sitecustomize.py").is_file()
               for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)


def no_gpu_reason() -> str:
    import torch

    if torch.version.cuda is None and torch.version.hip is None:
        return f"this torch ({torch.__version__}) is a CPU build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return f"no GPU is visible here (CUDA_VISIBLE_DEVICES={visible!r})"
    return f"torch {torch.__version__} sees no GPU here (no NVIDIA driver or device)"


# ---------------------------------------------------------------------- what runs, and what it needs


def stages_to_run(ctx, only: tuple[int, str] | None = None,
                  restart_from: tuple[int, str] | None = None) -> list[tuple[int, str]]:
    """(iteration, stage) this command will run, as runner.execute decides: ``only`` alone, the
    stages from ``restart_from`` on (it removes them first), and every unfinished stage."""
    from sppo_nemo.stages import plan

    labels = [(t, m.NAME) for t, m in plan(ctx.recipe)]
    cut = labels.index(restart_from) if restart_from in labels else len(labels)
    return [(t, name) for i, (t, name) in enumerate(labels)
            if (only is None or (t, name) == only) and (i >= cut or not ctx.stage(t, name).done())]


def _named(stages: list[tuple[int, str]]) -> str:
    labels = [f"iter_{t:02d}/{name}" for t, name in stages]
    return ", ".join(labels) if len(labels) <= 4 else f"{', '.join(labels[:3])}, … ({len(labels)} stages)"


def problems(r: Recipe, stages: list[tuple[int, str]]) -> list[str]:
    """Every engine need of ``stages`` this machine does not meet, each naming the stages, the
    recipe key and the fix."""
    out: list[str] = []
    gpus: list[int] = []  # counted once, and only when a check needs it

    def visible() -> int:
        if not gpus:
            gpus.append(gpu_count())
        return gpus[0]

    train = [s for s in stages if s[1] == "train"]
    if train and r.trainer.backend == "megatron" and r.trainer.megatron.launcher == "torchrun":
        out += _megatron(r, _named(train), visible, megatron_cpu_patched)
    sampling = [s for s in stages if s[1] in ("generate", "evaluate")]
    if sampling and r.generation.backend == "vllm":
        out += _vllm(r, _named(sampling), visible)
    evaluate = [s for s in stages if s[1] == "evaluate"]
    if evaluate:
        out += _evaluations(r, _named(evaluate))
    return out


def _evaluations(r: Recipe, where: str) -> list[str]:
    """lm-eval (here, or with vLLM in generation.vllm's interpreter), AlpacaEval's fit (scikit-learn) and
    a local AlpacaEval judge (vLLM), when asked for."""
    out = []
    lm = r.evaluation.lm_eval
    on_vllm = lm.enabled and lm.backend == "vllm"
    if on_vllm:
        python = r.generation.vllm.python or sys.executable
        missing = vllm_problem(python)
        if missing is None and not installed_in(python, "lm_eval"):
            missing = (f"{python} cannot import lm_eval; install it there ({python} -m pip install 'lm-eval==0.4.13'; "
                       f"scripts/vllm_venv.sh builds an environment with both)")
        if missing:
            out.append(f"{where}: evaluation.lm_eval.backend=vllm runs lm-eval beside vLLM: {missing}")
    for key, module, package in (("lm_eval", "lm_eval", "lm-eval"), ("alpaca_eval", "sklearn", "scikit-learn")):
        if key == "lm_eval" and on_vllm:
            continue
        if getattr(r.evaluation, key).enabled and not installed(module):
            out.append(f"{where}: evaluation.{key}.enabled=true needs {package}, which {sys.executable} cannot "
                       f"import; install it with pip install -e '.[evals]' (or set evaluation.{key}.enabled=false)")
    judge = r.evaluation.alpaca_eval
    if judge.enabled and judge.local_model:
        missing = vllm_problem(r.generation.vllm.python or sys.executable)
        if missing:
            out.append(f"{where}: evaluation.alpaca_eval.local_model is served by vLLM: {missing}")
    return out


def _megatron(r: Recipe, where: str, visible, patched) -> list[str]:
    from sppo_nemo.backends.megatron.layout import megatron_layout

    lay = megatron_layout(r.trainer)
    n = visible()
    if n == 0 and not patched():
        return [f"{where}: trainer.backend=megatron needs CUDA GPUs (TP·PP·DP = {lay.tensor}·{lay.pipeline}·"
                f"{lay.data} = {lay.world} on this machine, where torchrun starts the ranks), but {no_gpu_reason()}. "
                f"Run on a machine with {lay.world} GPU(s) (the NGC image: see the Dockerfile), or set "
                f"trainer.backend=torch to train here"]
    if n and lay.world > n:
        return [f"{where}: trainer.megatron: TP·PP·DP = {lay.tensor}·{lay.pipeline}·{lay.data} = {lay.world} "
                f"ranks, one GPU each, but {n} GPU(s) are visible here. Lower trainer.megatron.data_parallel "
                f"(or nproc_per_node, tensor_parallel, pipeline_parallel) so that TP·PP·DP ≤ {n}, or run where "
                f"{lay.world} GPUs are visible (launcher=srun spreads the ranks over a Slurm allocation)"]
    return []


def _vllm(r: Recipe, where: str, visible) -> list[str]:
    from sppo_nemo.backends.vllm.check import local_gpu_problem

    v = r.generation.vllm
    out = []
    missing = vllm_problem(v.python or sys.executable)
    if missing:
        out.append(f"{where}: {missing}")
    if v.launcher == "local":
        fit = local_gpu_problem(v, visible())
        if fit:
            out.append(f"{where}: {fit}")
    return out


def refuse_unrunnable(ctx, only: tuple[int, str] | None = None,
                      restart_from: tuple[int, str] | None = None) -> None:
    """Raise :class:`EnginesUnavailable` naming every engine of the stages to run that this
    machine cannot run; nothing has been run or written when it does."""
    found = problems(ctx.recipe, stages_to_run(ctx, only, restart_from))
    if found:
        raise EnginesUnavailable("this machine cannot run the recipe's engines; nothing was run:\n"
                                 + "\n".join(f"  - {p}" for p in found))
