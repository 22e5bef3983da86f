"""Keep freed memory in the process: glibc malloc settings for the CPU engines' allocation churn.

A training step on CPU allocates and frees its activations, autocast's bf16 weight copies and the
gradients (hundreds of MB) every micro-batch. With glibc's defaults, freed memory at the top of the
heap is given back to the kernel (``M_TRIM_THRESHOLD``, 128 KiB, raised dynamically) and blocks
above the dynamic mmap threshold are unmapped on free, so the next micro-batch faults the same
pages in again, each zeroed by the kernel. Keeping freed memory trades page faults and system time
for resident memory (benchmarks/README.md, "Freed memory kept for reuse", has the measurement and
its command).

:func:`keep_freed_memory` sets, through ``mallopt`` (glibc on Linux; elsewhere it does nothing):

- ``M_MMAP_THRESHOLD`` = 32 MiB, glibc's largest on 64-bit: blocks up to it come from the heap,
  and a fixed value stops the dynamic adjustment that would otherwise move it;
- ``M_TRIM_THRESHOLD`` = 2 GiB − 1: free memory at the top of the heap is kept for reuse;
- ``M_TOP_PAD`` = 256 MiB: the heap grows in large steps.

The cost is resident memory: the process keeps its peak. It is the CPU engines' setting: sppo-run
applies it to itself, and a megatron worker only when it computes on the CPU (a GPU worker's
tensors are not on the heap). ``SPPO_MALLOC=system`` in the environment keeps glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: (1 << 31) - 1, M_TOP_PAD: 256 << 20}
_applied = False


def _glibc(name: str):
    """glibc's function ``name`` through ctypes, or None off Linux or in a C library without it
    (musl, for one, has no ``mallopt``)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Apply :data:`SETTINGS` once per process; True when they are in effect (glibc on Linux and
    ``SPPO_MALLOC`` not ``system``), False where nothing was changed."""
    global _applied
    if _applied:
        return True
    if os.environ.get("SPPO_MALLOC", "").lower() == "system":
        return False
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    return _applied


def glibc_tunables() -> str:
    """:data:`SETTINGS` as a ``GLIBC_TUNABLES`` value, for a process that does not import this
    package (benchmarks/bench_trainer_step.py gives it to TRL's run to compare like with like)."""
    names = {M_MMAP_THRESHOLD: "mmap_threshold", M_TRIM_THRESHOLD: "trim_threshold", M_TOP_PAD: "top_pad"}
    return ":".join(f"glibc.malloc.{names[k]}={v}" for k, v in SETTINGS.items())


def return_free_memory() -> bool:
    """Hand the heap's free pages back to the kernel once (glibc's ``malloc_trim(0)``), after a
    large one-off release that the settings above would otherwise keep resident: the torch trainer
    calls it after moving the loaded parameters into their flat buffer. True where it ran."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True
