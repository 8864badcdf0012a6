"""The machine's matmul limit: GFLOP/s of [tokens, in] × [in, out] at the encoder's Linear shapes."""
from __future__ import annotations

import statistics

import torch

from bench.common import time_calls, time_one_thread
from bench.sections import TOKENS, Settings
from src.models.fused_cpu import ONEDNN_LINEAR


def linear_shapes(width: int, mlp_ratio: float) -> dict[str, tuple[int, int]]:
    """(in, out) of the encoder's Linear layers at this width."""
    hidden = int(width * mlp_ratio)
    return {"qkv": (width, 3 * width), "proj": (width, width), "fc1": (width, hidden), "fc2": (hidden, width)}


def bench_matmul(width: int, mlp_ratio: float, n: int, dtype: torch.dtype, device: torch.device, reps: int) -> dict:
    """GFLOP/s of [n, in] x [in, out] at the encoder's Linear shapes, per backend, and the
    encoder-mix limit: FLOP-weighted (harmonic) rate of the four shapes, each at its best backend."""
    torch.manual_seed(0)
    rows = {}
    mix_time = mix_flops = mix1_time = 0.0
    for name, (k, m) in linear_shapes(width, mlp_ratio).items():
        x = torch.randn(n, k, device=device, dtype=dtype)
        w = torch.randn(m, k, device=device, dtype=dtype) / k**0.5
        flops = 2.0 * n * k * m
        fns = {"matmul": lambda: torch.matmul(x, w.t())}  # MKL on CPU, cuBLAS on CUDA
        if device.type == "cpu" and ONEDNN_LINEAR is not None and dtype in (torch.float32, torch.bfloat16):
            fns["onednn"] = lambda: ONEDNN_LINEAR[0](x, w, None, "none", [], "")
        with torch.inference_mode():
            times = time_calls(fns, reps, device)
            cpu1 = time_one_thread(fns, reps) if device.type == "cpu" else None
        rates = {b: flops / statistics.median(t) / 1e9 for b, t in times.items()}
        best_rates = {b: flops / min(t) / 1e9 for b, t in times.items()}
        best = max(rates, key=rates.get)
        rows[name] = {"shape": f"[{n}, {k}] x [{k}, {m}]", "gflops": flops / 1e9,
                      "gflop_per_s": {b: round(r, 1) for b, r in rates.items()},
                      "gflop_per_s_best_run": {b: round(r, 1) for b, r in best_rates.items()},
                      "best_backend": best}
        mix_time += flops / (rates[best] * 1e9)
        mix_flops += flops
        if cpu1:
            rates1 = {b: flops / min(t) / 1e9 for b, t in cpu1.items()}
            rows[name]["gflop_per_s_1thread_cpu"] = {b: round(r, 1) for b, r in rates1.items()}
            mix1_time += flops / (max(rates1.values()) * 1e9)
    return {"width": width, "tokens": n, "dtype": str(dtype).removeprefix("torch."), "shapes": rows,
            "encoder_mix_gflop_per_s": round(mix_flops / mix_time / 1e9, 1),
            "encoder_mix_gflop_per_s_1thread_cpu": round(mix_flops / mix1_time / 1e9, 1) if mix1_time else None}


def run(settings: Settings, results: dict) -> list[dict]:
    return [bench_matmul(width, ratio, TOKENS, dtype, settings.device, max(settings.reps, 5))
            for width, ratio in ((1024, 4.0), (1408, 48 / 11)) for dtype in settings.dtypes]


def markdown(result: list[dict]) -> list[str]:
    lines = []
    lines += ["## Matmul limit: GFLOP/s of [2048, in] × [in, out] at the encoder's Linear shapes", "",
              "'mix' = the encoder's four Linear shapes weighted by their FLOPs, each on its faster backend "
              "(MKL `torch.matmul` or oneDNN): the rate the encoder would reach if everything ran as fast as its GEMMs.", "",
              "| width | dtype | qkv | proj | fc1 | fc2 | mix | mix, 1 thread (CPU time) |", "|---|---|---|---|---|---|---|---|"]
    for mm in result:
        cells = [" / ".join(f"{b} {v:.0f}" for b, v in mm["shapes"][s]["gflop_per_s"].items())
                 for s in ("qkv", "proj", "fc1", "fc2")]
        one = mm.get("encoder_mix_gflop_per_s_1thread_cpu")
        lines.append(f"| {mm['width']} | {mm['dtype']} | " + " | ".join(cells) + f" | **{mm['encoder_mix_gflop_per_s']:.0f}** | "
                     + (f"{one:.0f} |" if one else "– |"))
    return lines
