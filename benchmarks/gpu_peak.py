"""The device's bf16 matmul rate measured here (an n³ bf16 matmul, timed after warm-up): the peak
the GPU benchmarks report MFU and TFLOP/s fractions against, rather than a datasheet figure
(an H200's datasheet 989 dense TFLOP/s is reached by no real matmul; what one reaches is the
ceiling a model's kernels can be judged by)."""

from __future__ import annotations

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
