"""What CPU this is (its model name and the SIMD flags that decide which kernels run fast), and the
folder where what was worked out for this machine is kept.

A leaf (standard library only): the bench tables and the per-machine kernel choice
(`src.models.kernel_choice`) name the machine the same way; the numba cache (`src.jit_cache`) and
the kernel choice keep their files in the same folder.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

# The flags that change which GEMM / attention kernels PyTorch, oneDNN and the other runtimes pick.
CPU_FLAGS_OF_INTEREST = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                         "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "neon", "asimd", "sve")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux, else what the platform module knows)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The SIMD flags of interest this CPU reports (Linux `/proc/cpuinfo`; elsewhere empty), sorted."""
    present = set()
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            present.update(line.split(":", 1)[1].split())
    return sorted(present & set(CPU_FLAGS_OF_INTEREST))


def user_cache_dir() -> Path:
    """``<$XDG_CACHE_HOME or ~/.cache>/vjepa2``: compiled kernels and timed choices, per user and machine."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vjepa2"
