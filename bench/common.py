"""What every benchmark shares: interleaved timing, the machine description (CPU flags included),
synthetic frame folders, and writing results as JSON + Markdown.

Import after putting the repository root on `sys.path` (each bench script does so first).
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from src.machine import CPU_FLAGS_OF_INTEREST, cpu_flags, cpu_name  # noqa: F401  (re-exported)

REPO = Path(__file__).resolve().parents[1]
WINDOW = 16  # frames per window, as the extractors' default


# ----------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: dict, reps: int, device: torch.device = torch.device("cpu"), warmup: int = 1,
               clock=time.perf_counter, cuda_inner: int = 20) -> dict[str, list[float]]:
    """Seconds per call of each function; calls interleaved (A B C A B C ...) so that load from
    other processes on a shared machine hits every variant alike.

    On CUDA each measurement is `cuda_inner` back-to-back calls between two CUDA events, divided
    by `cuda_inner`: a host sync around every single call would charge small kernels (a GEMM at
    2048 tokens) their launch latency and read the device's rate low."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            if device.type == "cuda":
                from bench.gpu import cuda_seconds_per_call

                times[name].append(cuda_seconds_per_call(fn, cuda_inner, warmup=0))
                continue
            start = clock()
            fn()
            times[name].append(clock() - start)
    return times


def time_one_thread(fns: dict, reps: int, warmup: int = 0) -> dict[str, list[float]]:
    """CPU seconds of the calling thread per call with `torch.set_num_threads(1)`.

    On a machine shared with other processes, wall time measures the machine's load as much as
    the code. The CPU time of one thread does not count preemption, so it is far less sensitive
    (shared caches and memory bandwidth still are): ratios taken this way (ours/HF, % of matmul),
    from the minimum over runs (interference only ever adds time), are the robust ones. CPU only.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return time_calls(fns, reps, torch.device("cpu"), warmup, clock=time.thread_time)
    finally:
        torch.set_num_threads(threads)


def summary(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------- machine
def machine_info(device: torch.device | str = "cpu", packages: tuple[str, ...] = ("transformers",)) -> dict:
    """Where a figure was measured: CPU (name, flags, cores), memory, torch and its CPU kernels,
    the versions of `packages` (those importable), the GPU if `device` is CUDA, the load."""
    device = torch.device(device)
    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "device": str(device),
        "load_average": load_average(),
    }
    for name in packages:
        try:
            info[name] = importlib.import_module(name).__version__
        except ImportError:
            info[name] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def machine_line(m: dict) -> str:
    """One Markdown line naming the machine of a results dict's `machine`."""
    flags = ", ".join(m.get("cpu_flags") or []) or "flags unknown"
    gpu = f" ({m['gpu']})" if "gpu" in m else ""
    return (f"{m['cpu']} ({flags}), {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
            + (f", transformers {m['transformers']}" if m.get("transformers") else "") + f", device {m['device']}{gpu}")


# ----------------------------------------------------------------------------- inputs
def make_frames(directory: Path, count: int, size: tuple[int, int] | None = None) -> list[Path]:
    """`count` JPEG frames `frame_00000.jpg` …: the shipped examples cycled (or resized to `size`, w×h)."""
    from src.frames import find_frames

    directory.mkdir(parents=True, exist_ok=True)
    sources = sorted((REPO / "examples" / "frames").glob("frame_*.jpg"))
    if size is None:
        for i in range(count):
            shutil.copy(sources[i % len(sources)], directory / f"frame_{i:05d}.jpg")
    else:
        from PIL import Image

        small = []
        for src in sources:
            with Image.open(src) as im:
                small.append(im.convert("RGB").resize(size))
        for i in range(count):
            small[i % len(small)].save(directory / f"frame_{i:05d}.jpg", quality=90)
    return [p for _, p in find_frames(directory)]


# ----------------------------------------------------------------------------- output
def write_results(json_path: Path | str, results: dict, markdown: str | None = None) -> list[Path]:
    """`results` as indented JSON at `json_path` and, if given, `markdown` beside it (`.md`)."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    written = [json_path]
    if markdown is not None:
        written.append(json_path.with_suffix(".md"))
        written[-1].write_text(markdown)
    return written
