"""What this machine computes bf16 on: CUDA, or a CPU with native bf16 matrix products.

A CPU without a native bf16 path (no AVX512-BF16, no AMX; every AVX2-only CPU) emulates bf16
matrix products about a hundred times slower than fp32, so ``precision: auto`` must take fp32
there. The CPU is judged first by what it reports (the ``avx512_bf16`` / ``amx_bf16`` flags, and
torch's own capability string), then, where it claims a native path, confirmed by a short probe
(a bf16 and an fp32 matrix product, a few milliseconds each): bf16 is taken only if it is at
least as fast as fp32. Nothing here allocates on a GPU: CUDA is only asked how many devices it has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo's names of the native bf16 paths
PROBE_N = 256  # square matrix size of the probe: 34 MFLOP, ~0.3 ms on a native bf16 core
PROBE_SECONDS = 0.05  # per dtype; an emulating CPU (~1 GFLOP/s) still finishes one product in ~40 ms
PROBE_ROUNDS = 3  # fp32 and bf16 measured in turn, three times; each dtype's best counts
# Emulated bf16 runs about 100x slower than fp32, a native path 1-3x faster. A machine busy with
# other work slows both, unevenly within a 50 ms window (a native path can then measure below fp32):
# the line between the two classes is a tenth of fp32's rate, an order of magnitude from either.
EMULATED_BELOW = 0.1


@dataclass(frozen=True)
class Machine:
    """What the precision rule reads: is CUDA there, and does the CPU compute bf16 natively (why)."""

    cuda: bool
    cpu_bf16: bool
    cpu_reason: str


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _rate(dtype: torch.dtype) -> float:
    """FLOP/s of a PROBE_N³ product in ``dtype`` over about PROBE_SECONDS (at least two products)."""
    a = torch.randn(PROBE_N, PROBE_N).to(dtype)
    b = torch.randn(PROBE_N, PROBE_N).to(dtype)
    torch.mm(a, b)  # warm-up: kernels chosen, pages touched
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < PROBE_SECONDS:
        torch.mm(a, b)
        n += 1
    return 2 * PROBE_N ** 3 * n / (time.perf_counter() - start)


def cpu_bf16(flags: set[str] | None = None, capability: str | None = None, rate=_rate) -> tuple[bool, str]:
    """(native, why): the CPU's report first; a claimed native path confirmed by the probe."""
    flags = cpu_flags() if flags is None else flags
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    native = sorted(f for f in NATIVE_FLAGS if f in flags)
    if not native and "AMX" not in capability.upper():
        return False, f"no native bf16 on this CPU (torch: {capability}; no {'/'.join(NATIVE_FLAGS)} flag)"
    fp32 = bf16 = 0.0
    for _ in range(PROBE_ROUNDS):
        fp32, bf16 = max(fp32, rate(torch.float32)), max(bf16, rate(torch.bfloat16))
    claim = ", ".join(native) or f"torch: {capability}"
    if bf16 < EMULATED_BELOW * fp32:
        return False, (f"the CPU reports {claim}, but a bf16 matrix product ran at {bf16 / 1e9:.1f} GFLOP/s "
                       f"against fp32's {fp32 / 1e9:.1f}")
    return True, f"native bf16 on this CPU ({claim}; bf16 matmul {bf16 / fp32:.1f}x fp32's rate)"


@lru_cache(maxsize=1)
def cuda() -> bool:
    """Whether a CUDA GPU is visible: through NVML where it answers (honouring CUDA_VISIBLE_DEVICES),
    else the driver's device count; either way no context is created and nothing is allocated."""
    return torch.cuda.device_count() > 0


@lru_cache(maxsize=1)
def this_machine() -> Machine:
    """Probed once per process."""
    native, why = cpu_bf16()
    return Machine(cuda=cuda(), cpu_bf16=native, cpu_reason=why)
