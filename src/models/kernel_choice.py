"""Which CPU linear path runs a model fastest on this machine: timed once, kept on disk, logged.

The oneDNN fused linears of `src.models.fused_cpu` (bias, GELU and the residual add inside the
GEMM call) and the plain `nn.Linear` path compute the same features (≤ 1e-5 apart), but which is
faster depends on the CPU: fused read 1.05–1.15× with 2 threads on an AMD EPYC before (the
ablation in bench/PERFORMANCE.md), 0.89–1.13× on an AVX2-only EPYC (issue 22), and ties (±2 %) on
an AVX-512 Xeon. So on the first CPU fp32 batch, `choose_cpu_linear` times both on the model's own
block-0 linears at the batch's real token count (up to `MAX_TIMED_TOKENS`; interleaved, medians),
keeps the faster, and records the choice in ``<$XDG_CACHE_HOME or ~/.cache>/vjepa2/cpu_kernels.json``
under the machine (CPU model and flags, threads, torch version) and the model's widths; later runs
read it back.
One choice per machine and width, not per token count: the two paths round differently (~1e-6),
and a clip's features must not depend on the batch it happened to share. `mode` "fused" or
"plain" skips the timing (the scripts' `--cpu_linear`). Batches whose block linears are under
`MIN_TIMED_GFLOP` keep the fused path untimed: there both cost a few milliseconds and a timing
would only measure noise.

Processes that start together on a new machine (the shards of a Slurm array, the workers of
`run_parallel_extraction.sh`) take turns on a lock file beside the cache: one times, the others
wait a second or two and read its choice, so every shard runs the same path (and no timing runs
while another competes for the cores). Where the lock cannot be taken (a read-only home, no
`fcntl`) each process times by itself; the file is always replaced whole, never torn.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.errors import OutputWriteError
from src.features import atomic_write, exclusive_lock
from src.machine import cpu_flags, cpu_name, user_cache_dir
from src.models.fused_cpu import fused_linear, fused_linear_add, onednn_available
from src.models.layers import Attention, Mlp

logger = logging.getLogger(__name__)

CPU_LINEAR_MODES = ("auto", "fused", "plain")
CACHE_NAME = "cpu_kernels.json"
_REPEATS = 3  # timed runs per path, after one untimed warm-up each
MIN_TIMED_GFLOP = 4.0  # one block's linears on the first batch (ViT-L on one 16-frame clip: 52)
# Timed on at most this many tokens: GEMMs this tall already run at their steady rate, and a ViT-g
# batch of 4 clips at 384 px (18 432 tokens) would otherwise take ~30 s and ~1 GB to time on 2 cores.
MAX_TIMED_TOKENS = 8192


def cache_file() -> Path:
    return user_cache_dir() / CACHE_NAME


def set_cpu_linear(model: nn.Module, fused: bool) -> None:
    """Run every attention and MLP of `model` through the fused oneDNN linears (where they apply:
    CPU, fp32, no autograd) or through plain `nn.Linear`."""
    for module in model.modules():
        if isinstance(module, (Attention, Mlp)):
            module.cpu_fused = fused


def _machine() -> dict:
    return {"cpu": cpu_name(), "flags": cpu_flags(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def _widths(block: nn.Module) -> dict:
    return {"dim": block.attn.qkv.in_features, "hidden": block.mlp.fc1.out_features,
            "qkv_bias": block.attn.qkv.bias is not None}


def _entry_key(machine: dict, widths: dict) -> str:
    text = json.dumps({"machine": machine, "widths": widths}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@contextlib.contextmanager
def _turn(path: Path) -> Iterator[None]:
    """Hold the lock beside `path` while reading, timing and writing the choice (without it, where
    it cannot be taken: a read-only home times alone rather than failing)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(path.with_name(path.name + ".lock"), lambda: logger.info(
                "another process is timing the CPU linears on this machine; waiting for its choice")))
        except OSError as exc:
            logger.debug("no lock for %s (%s): timing without waiting for other processes", path, exc)
        yield


def _read_cache(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable (%s); timing the CPU linears again and rewriting it", path, exc)
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: Path, entries: dict) -> None:
    text = json.dumps(entries, indent=1, sort_keys=True).encode()
    try:
        atomic_write(path, lambda f: f.write(text), "CPU linear choices")
    except OutputWriteError as exc:  # a read-only home must not fail a run: the next one times again
        logger.warning("cannot save the CPU linear choice (%s); later runs will time it again", exc)


def _linears(block: nn.Module, x: torch.Tensor, fused: bool) -> torch.Tensor:
    """The four linears of a block with their epilogues, the way each path runs them."""
    attn, mlp = block.attn, block.mlp
    if fused:
        fused_linear(x, attn.qkv)
        y = fused_linear_add(x, attn.proj, x)
        return fused_linear_add(fused_linear(y, mlp.fc1, "gelu"), mlp.fc2, y)
    attn.qkv(x)
    y = x + attn.proj(x)
    return y + mlp.fc2(F.gelu(mlp.fc1(y)))


@torch.inference_mode()
def time_cpu_linears(block: nn.Module, tokens: int, repeats: int = _REPEATS) -> dict:
    """Median seconds of one block's linears on `tokens` rows, fused and plain, interleaved."""
    dim = block.attn.qkv.in_features
    x = torch.randn(1, tokens, dim, generator=torch.Generator().manual_seed(0))
    times = {"fused": [], "plain": []}
    for run in range(repeats + 1):
        for name in ("fused", "plain") if run % 2 == 0 else ("plain", "fused"):
            start = time.perf_counter()
            _linears(block, x, name == "fused")
            if run:  # the first of each is a warm-up (oneDNN primitive creation, first-touch memory)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def choose_cpu_linear(model: nn.Module, tokens: int, mode: str = "auto") -> dict | None:
    """Set `model`'s CPU linear path for batches of `tokens` tokens (B·N) and say why.

    Returns None where there is nothing to choose (no oneDNN in this torch build), else
    {"fused": bool, "source": "option" | "small" | "cached" | "timed", ...timings}. The caller calls it on
    CPU fp32 models only: elsewhere the fused path never applies.
    """
    if mode not in CPU_LINEAR_MODES:
        raise ValueError(f"cpu linear mode must be one of {CPU_LINEAR_MODES}, got {mode!r}")
    if not onednn_available() or not len(model.blocks):
        return None
    if mode != "auto":
        set_cpu_linear(model, mode == "fused")
        logger.info("CPU linears: %s (as asked)", mode)
        return {"fused": mode == "fused", "source": "option"}
    machine, widths = _machine(), _widths(model.blocks[0])
    gflop = 2 * tokens * widths["dim"] * (4 * widths["dim"] + 2 * widths["hidden"]) / 1e9
    if gflop < MIN_TIMED_GFLOP:
        set_cpu_linear(model, True)
        logger.debug("CPU linears: fused, untimed (%.2f GFLOP per block: too little to time)", gflop)
        return {"fused": True, "source": "small"}
    key, path = _entry_key(machine, widths), cache_file()
    with _turn(path):
        return _cached_or_timed(model, tokens, machine, widths, key, path)


def _cached_or_timed(model: nn.Module, tokens: int, machine: dict, widths: dict, key: str, path: Path) -> dict:
    entry = _read_cache(path).get(key)
    if isinstance(entry, dict) and isinstance(entry.get("fused"), bool):
        set_cpu_linear(model, entry["fused"])
        logger.info("CPU linears: %s (this machine's choice for %d-wide models, timed %s on %s tokens: fused "
                    "%.3f s, plain %.3f s; %s)", "fused" if entry["fused"] else "plain", widths["dim"],
                    entry.get("timed_at", "?"), entry.get("timed_tokens", "?"), entry.get("fused_s", float("nan")),
                    entry.get("plain_s", float("nan")), path)
        return {**entry, "source": "cached"}
    started = time.perf_counter()
    tokens = min(tokens, MAX_TIMED_TOKENS)
    seconds = time_cpu_linears(model.blocks[0], tokens)
    fused = seconds["fused"] <= seconds["plain"]
    entry = {"fused": fused, "fused_s": round(seconds["fused"], 5), "plain_s": round(seconds["plain"], 5),
             "timed_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "timed_tokens": tokens,
             "machine": machine, "widths": widths}
    entries = _read_cache(path)
    entries[key] = entry
    _write_cache(path, entries)
    set_cpu_linear(model, fused)
    logger.info("CPU linears: %s, timed on this machine in %.1f s (one block's linears on %d tokens × %d wide: "
                "fused %.3f s, plain %.3f s); kept in %s (--cpu_linear fused|plain skips the timing)",
                "fused" if fused else "plain", time.perf_counter() - started, tokens, widths["dim"],
                seconds["fused"], seconds["plain"], path)
    return {**entry, "source": "timed"}
