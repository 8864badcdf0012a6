"""What the benchmarks know about GPUs: datasheet peaks and a timer that does not sync per call.

Peaks are dense (no sparsity) bf16 tensor-core TFLOP/s from NVIDIA's datasheets, matched against
`torch.cuda.get_device_name()` in this order (first match wins; the form factors differ in clocks
and power, so an H200 NVL is not an H200 SXM).
"""
from __future__ import annotations

import re
from typing import Callable

import torch

GPU_BF16_PEAK_TFLOPS: list[tuple[str, float]] = [
    (r"\bGH200\b", 989.4),                 # Grace Hopper superchip (H100/H200-class GPU, SXM clocks)
    (r"\bH200\b.*\bNVL\b", 835.5),         # H200 NVL (PCIe card, 600 W)
    (r"\bH200\b", 989.4),                  # H200 SXM ("NVIDIA H200")
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b", 989.4),                  # SXM5 ("NVIDIA H100 80GB HBM3")
    (r"\bB200\b", 2250.0),                 # HGX B200, per GPU
    (r"\bA100\b", 312.0),                  # SXM4 and PCIe alike
    (r"\bL40S\b", 362.05),
    (r"\bL40\b", 181.05),
    (r"\bA10G?\b", 125.0),
    (r"\bL4\b", 121.0),
]


def gpu_bf16_peak_tflops(name: str) -> float | None:
    """The datasheet bf16 dense peak of a GPU by its CUDA device name; None if not in the table."""
    return next((peak for pattern, peak in GPU_BF16_PEAK_TFLOPS if re.search(pattern, name)), None)


def cuda_seconds_per_call(fn: Callable[[], object], iters: int, warmup: int = 2) -> float:
    """Seconds per call of `fn` on the current CUDA stream, timed with CUDA events around `iters`
    back-to-back calls: launches overlap the previous call's kernels as in a real loop, so small
    GEMMs are not charged a host sync each."""
    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000.0 / iters
