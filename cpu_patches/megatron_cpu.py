"""Test-only patches that let megatron-core run on CPU over gloo: 0.16.1 (the main suite), 0.18 and
0.19 (the container-parity tier, tests/parity.py). Never imported by the product.

megatron-core assumes CUDA in a few places:

- its RNG tracker keeps CUDA generator states: replaced by one over CPU generator states, and
  activation recomputation's save/restore of the CUDA RNG state becomes a no-op;
- ``torch.cuda.current_device()``, which its DDP buffers pass as ``device=``: answers the CPU;
- its schedules, optimizer, gradient clipping and grad scaler allocate small tensors with a
  literal ``device="cuda"`` (and pipeline p2p calls ``torch.cuda.synchronize``; 0.19's DDP
  gradient buffers wait on ``torch.cuda.current_stream()``): those modules see a ``torch`` whose
  factory functions map "cuda" to the CPU, whose synchronize is a no-op and whose current stream
  waits on nothing;
- ``tensor.cuda()`` (the last pipeline stage's copy of a tied embedding): the identity;
- its optimizers sort parameters by ``param.type()`` ('torch.cuda.FloatTensor'): CPU parameters
  answer the CUDA type name;
- gradient clipping asserts ``grad.type() == 'torch.cuda.FloatTensor'``: replaced by the same
  scaling without the assert.

:func:`apply` patches in-process; ``cpu_patches/megatron_cpu_site/sitecustomize.py`` patches torchrun
workers (the tests put that folder on PYTHONPATH, see :func:`worker_env`) through an import hook
that patches each module the moment it is imported. fp32 and bf16 (mixed precision, fp32 main
weights) both run this way.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "cpu_patches" / "megatron_cpu_site"


def worker_env() -> dict:
    """The environment of patched torchrun workers: the site folder and the checkout on
    PYTHONPATH, no hub, one thread per worker."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return env


@contextlib.contextmanager
def patched_workers():
    """``os.environ`` as :func:`worker_env` while a MegatronTrainer in this process starts its
    workers, restored after."""
    old = dict(os.environ)
    os.environ.update(worker_env())
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(old)

RANDOM = "megatron.core.tensor_parallel.random"


class CPURNGStatesTracker:
    """megatron's CudaRNGStatesTracker interface over CPU generator states."""

    def __init__(self, *args, **kwargs):
        self.reset()

    def is_initialized(self) -> bool:
        return self._initialized

    def reset(self) -> None:
        self._initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict:
        return dict(self.states_)

    def set_states(self, states: dict) -> None:
        self._initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_ or name in self.states_:
            raise RuntimeError(f"rng state {name} / seed {seed} already exists")
        self._initialized = True
        self.seeds_.add(seed)
        g = torch.Generator()
        g.manual_seed(seed)
        self.states_[name] = g.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


def _patch_random(module) -> None:
    def initialize_rng_tracker(*args, force_reset: bool = False, **kwargs):
        if module._CUDA_RNG_STATE_TRACKER is None or force_reset or not isinstance(
                module._CUDA_RNG_STATE_TRACKER, CPURNGStatesTracker):
            module._CUDA_RNG_STATE_TRACKER = CPURNGStatesTracker()
        module._CUDA_RNG_STATE_TRACKER_INITIALIZED = True

    module.initialize_rng_tracker = initialize_rng_tracker
    # activation recomputation saves and restores "the CUDA RNG state" around each checkpoint; on
    # CPU there is none (the CPU state is saved alongside by megatron itself)
    module._get_cuda_rng_state = lambda *args, **kwargs: torch.zeros(1, dtype=torch.uint8)
    module._set_cuda_rng_state = lambda *args, **kwargs: None


def _patch_torch() -> None:
    torch.cuda.current_device = lambda: torch.device("cpu")
    if not torch.cuda.is_available():  # e.g. the tied embedding's copy on the last pipeline stage
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    # megatron's optimizers sort parameters by their CUDA type names
    if not getattr(torch.nn.Parameter.type, "_sppo_cpu", False):
        tensor_type = torch.Tensor.type

        def param_type(self, *args, **kwargs):
            name = tensor_type(self, *args, **kwargs)
            if not args and not kwargs and self.device.type == "cpu":
                return name.replace("torch.", "torch.cuda.", 1)
            return name

        param_type._sppo_cpu = True
        torch.nn.Parameter.type = param_type


def _cpu_device(kwargs: dict) -> dict:
    d = kwargs.get("device")
    if d is not None and str(d).startswith("cuda"):
        kwargs["device"] = "cpu"
    return kwargs


class _CPUTorch:
    """``torch`` as a megatron module sees it after patching: factories map device "cuda" to CPU."""

    def __init__(self):
        for name in ("zeros", "ones", "empty", "empty_like", "full", "tensor", "arange"):
            fn = getattr(torch, name)
            setattr(self, name, lambda *a, _fn=fn, **k: _fn(*a, **_cpu_device(k)))

        self.cuda = _CPUCuda()

    def __getattr__(self, name):
        return getattr(torch, name)


class _CPUStream:
    """A stream on which everything has already happened: waiting on it or for it is a no-op."""

    def wait_event(self, *args, **kwargs) -> None:
        return None

    def wait_stream(self, *args, **kwargs) -> None:
        return None

    def synchronize(self) -> None:
        return None


class _CPUCuda:
    """``torch.cuda`` for those modules: synchronize is a no-op (nothing runs asynchronously), the
    current stream is one whose waits are no-ops and a stream context does nothing."""

    @staticmethod
    def synchronize(*args, **kwargs) -> None:
        return None

    @staticmethod
    def current_stream(*args, **kwargs) -> _CPUStream:
        return _CPUStream()

    @staticmethod
    def stream(*args, **kwargs):
        return contextlib.nullcontext()

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    attr = "decoupled_grad" if use_decoupled_grad else "grad"
    grads = [getattr(p, attr) for p in parameters if getattr(p, attr, None) is not None]
    coeff = max_norm / (total_norm + 1.0e-6)
    if coeff < 1.0:
        for g in grads:
            g.detach().mul_(coeff)


def _patch_factories(module) -> None:
    module.torch = _CPUTorch()


def _patch_clip(module) -> None:
    _patch_factories(module)
    module.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32


PATCHES = {
    RANDOM: _patch_random,
    "megatron.core.pipeline_parallel.schedules": _patch_factories,
    "megatron.core.optimizer.optimizer": _patch_clip,
    "megatron.core.optimizer.clip_grads": _patch_clip,
    "megatron.core.optimizer.grad_scaler": _patch_factories,
    "megatron.core.optimizer.distrib_optimizer": _patch_factories,
    "megatron.core.utils": _patch_factories,
    "megatron.core.pipeline_parallel.p2p_communication": _patch_factories,
    # 0.19: DDP's gradient reduction waits on the current CUDA stream (for CUDA-graph replays)
    "megatron.core.distributed.param_and_grad_buffer": _patch_factories,
    # distributed checkpointing (the megatron trainer's step checkpoints): torch.cuda.synchronize
    # before writing, "cuda" tensors for the all-reduced save plan and exchanged shards
    "megatron.core.dist_checkpointing.strategies.filesystem_async": _patch_factories,
    "megatron.core.dist_checkpointing.strategies.state_dict_saver": _patch_factories,
    "megatron.core.dist_checkpointing.strategies.fully_parallel": _patch_factories,
    "megatron.core.dist_checkpointing.exchange_utils": _patch_factories,
}


def apply() -> None:
    """Patch now (megatron may already be imported)."""
    _patch_torch()
    import importlib

    for name, patch in PATCHES.items():
        patch(importlib.import_module(name))


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            import importlib.util

            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        loader = spec.loader
        exec_module = loader.exec_module

        def patched_exec(module):
            exec_module(module)
            PATCHES[name](module)

        loader.exec_module = patched_exec
        return spec


def install_import_hook() -> None:
    _patch_torch()
    for name, patch in PATCHES.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _Hook())
