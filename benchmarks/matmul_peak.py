"""Matmul rates measured here, the ceilings the benchmarks report their figures against.

- :func:`measured_bf16_peak`: the CUDA device's bf16 rate (an n³ bf16 matmul, timed after warm-up),
  the peak the GPU benchmarks report MFU and TFLOP/s fractions against, rather than a datasheet
  figure (an H200's datasheet 989 dense TFLOP/s is reached by no real matmul; what one reaches is
  the ceiling a model's kernels can be judged by).
- :func:`cpu_mm_gflops`: torch.mm's GFLOP/s on the CPU at the current thread count, the FLOP bound
  of bench_pairrm.py and the machine's rate that bench_default_run.py prints beside its wall time.

    python benchmarks/matmul_peak.py --cpu    # prints the CPU's fp32 and bf16 GFLOP/s
"""

from __future__ import annotations

import sys
import time


def measured_bf16_peak(n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of an n×n by n×n bf16 matmul on the current CUDA device."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t)


def cpu_mm_gflops(dtype=None, n: int = 2048, reps: int = 3) -> float:
    """GFLOP/s of ``reps`` n×n by n×n torch.mm on the CPU in ``dtype`` (fp32 by default), after one
    warm-up."""
    import torch

    dtype = dtype or torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


if __name__ == "__main__":
    if sys.argv[1:] != ["--cpu"]:
        sys.exit("usage: python benchmarks/matmul_peak.py --cpu   (the CPU's fp32 and bf16 torch.mm GFLOP/s)")
    import torch

    print(f"{cpu_mm_gflops(torch.float32, reps=8):.0f} {cpu_mm_gflops(torch.bfloat16, reps=8):.0f}")
