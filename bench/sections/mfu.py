"""Model FLOPs utilisation of our encoder at full (or a given) depth, by batch size (CUDA by default)."""
from __future__ import annotations

import argparse
import logging
import math

import torch

from bench.common import WINDOW, summary, time_calls
from bench.sections import Settings
from bench.sections.matmul import bench_matmul
from src.models import vision_transformer as vt
from bench.gpu import GPU_BF16_PEAK_TFLOPS, gpu_bf16_peak_tflops  # noqa: F401  (the one peak table)
from src.models.flops import count_forward_flops

log = logging.getLogger("bench")
DEFAULT_ON_CPU = False  # in the default set of sections only on CUDA

def bench_mfu(arch: str, img: int, depth: int | None, dtype: torch.dtype, device: torch.device,
              batch_sizes: list[int], reps: int, peak_tflops: float | None, matmul_reps: int = 5) -> dict:
    """Throughput of our encoder at its full (or a given) depth, as model FLOPs utilisation: FLOPs
    counted from the architecture (count_forward_flops) per second, over the device's peak and over
    the measured matmul rate at the encoder's Linear shapes for the same token count."""
    torch.manual_seed(0)
    overrides = {"depth": depth} if depth else {}
    model = vt.FACTORIES[arch](img_size=img, num_frames=WINDOW, **overrides).eval().to(device, dtype)
    tokens = math.prod(model.patch_grid(WINDOW, img, img))
    flops = count_forward_flops(model, WINDOW, img, img)
    res = {"arch": arch, "img_size": img, "frames": WINDOW, "depth": model.depth, "width": model.embed_dim,
           "heads": model.num_heads, "dtype": str(dtype).removeprefix("torch."), "tokens_per_clip": tokens,
           "tflops_per_clip": flops / 1e12, "peak_tflops": peak_tflops, "runs": []}
    for batch in batch_sizes:
        x = torch.randn(batch, 3, WINDOW, img, img, device=device, dtype=dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            times = time_calls({"forward": lambda: model(x)}, reps, device, warmup=2)["forward"]
        s = summary(times)
        tflop_s = batch * flops / s["median_s"] / 1e12
        run = {"batch": batch, **s, "clips_per_s": batch / s["median_s"], "tflop_per_s": tflop_s,
               "tflop_per_s_best_run": batch * flops / s["min_s"] / 1e12}
        if device.type == "cuda":  # before the matmul runs below allocate their own operands
            run["max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        if peak_tflops:
            run["mfu_pct"] = 100 * tflop_s / peak_tflops
        mm = bench_matmul(model.embed_dim, model.mlp_ratio, batch * tokens, dtype, device, matmul_reps)
        run["matmul_limit_tflop_per_s"] = mm["encoder_mix_gflop_per_s"] / 1e3
        run["pct_of_matmul_limit"] = 100 * tflop_s * 1e3 / mm["encoder_mix_gflop_per_s"]
        res["runs"].append(run)
        del x
    best = max(res["runs"], key=lambda r: r["tflop_per_s"])
    res["best_batch"], res["best_tflop_per_s"] = best["batch"], best["tflop_per_s"]
    res["best_mfu_pct"] = best.get("mfu_pct")
    del model
    return res


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model FLOPs utilisation (section 'mfu')")
    group.add_argument("--mfu_arch", default="vit_giant_xformers", help="architecture (default: ViT-g)")
    group.add_argument("--mfu_img", type=int, default=384, help="crop size (default: 384)")
    group.add_argument("--mfu_depth", type=int, default=None, help="blocks (default: the architecture's full depth)")
    group.add_argument("--mfu_batch", type=int, nargs="+", default=[1, 2, 4], help="clips per forward pass")
    group.add_argument("--peak_tflops", type=float, default=None,
                       help="the device's bf16 dense peak, TFLOP/s (default: from a table of NVIDIA GPUs)")


def run(settings: Settings, results: dict) -> list[dict]:
    args, device = settings.args, settings.device
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        gpu = torch.cuda.get_device_name(device)
        peak = gpu_bf16_peak_tflops(gpu)
        if peak is None:
            log.warning("%s is not in GPU_BF16_PEAK_TFLOPS: pass --peak_tflops for the MFU", gpu)
    out = []
    for dtype in settings.dtypes[:1]:  # bf16 on CUDA (the peak is bf16's), fp32 on CPU
        log.info("model FLOPs utilisation %s/%d %s ...", args.mfu_arch, args.mfu_img, dtype)
        out.append(bench_mfu(args.mfu_arch, args.mfu_img, args.mfu_depth, dtype, device, args.mfu_batch,
                             settings.reps, peak if dtype == torch.bfloat16 or args.peak_tflops else None))
    return out


def markdown(result: list[dict]) -> list[str]:
    lines = []
    for mf in result:
        peak = f"{mf['peak_tflops']:.0f} TFLOP/s (datasheet bf16 dense)" if mf["peak_tflops"] else "unknown"
        lines += ["", f"## Model FLOPs utilisation: {mf['arch']}/{mf['img_size']}, depth {mf['depth']}, "
                  f"{mf['frames']} frames ({mf['tokens_per_clip']} tokens, {mf['tflops_per_clip']:.1f} TFLOP per clip), "
                  f"{mf['dtype']}; device peak {peak}", "",
                  "| batch | clips/s | TFLOP/s | MFU (of peak) | % of measured matmul mix | peak memory (GB) |",
                  "|---|---|---|---|---|---|"]
        for row in mf["runs"]:
            mfu = f"**{row['mfu_pct']:.1f} %**" if "mfu_pct" in row else "–"
            mem = f"{row['max_memory_allocated_gb']:.1f}" if "max_memory_allocated_gb" in row else "–"
            lines.append(f"| {row['batch']} | {row['clips_per_s']:.3f} | {row['tflop_per_s']:.2f} | {mfu} | "
                         f"{row['pct_of_matmul_limit']:.0f} % ({row['matmul_limit_tflop_per_s']:.2f} TFLOP/s) | {mem} |")
    return lines


# A full ViT-g/384 in bf16 is a few large GEMMs per block: on an H100/H200-class GPU its best batch
# should reach 40 % of the datasheet peak (the public large-ViT training figures sit at 40-55 %).
MFU_TARGET_PCT = 40.0


def targets(result: list[dict], machine: dict) -> list[dict]:
    rows = []
    for mf in result:
        best = max((r for r in mf["runs"] if "mfu_pct" in r), key=lambda r: r["mfu_pct"], default=None)
        if best is None or not machine["device"].startswith("cuda"):
            continue
        rows.append({"target": f"{mf['arch']}/{mf['img_size']} {mf['dtype']}: MFU ≥ {MFU_TARGET_PCT:.0f} % of the "
                               "bf16 datasheet peak (best batch)",
                     "value": f"{best['mfu_pct']:.1f} % at batch {best['batch']}", "met": best["mfu_pct"] >= MFU_TARGET_PCT})
    return rows
