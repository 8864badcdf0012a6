#!/usr/bin/env python
"""One benchmark command: the machine's matmul limit, the encoder against it and against
transformers, the extraction pipeline against the forward pass, image modes, whole-frame vs
centre-crop features on a 16:9 clip, peak memory.

    python bench/run.py --quick            # a few minutes on a 2-core CPU
    python bench/run.py                    # fuller (~10 min): deeper models, more runs, more configurations
    python bench/run.py --only v21         # V-JEPA 2.1 vs 2.0, 2.1's image path vs 16-frame images
    python bench/run.py --device cuda      # bf16 and fp16 encoder runs on the GPU, and the
                                           # model FLOPs utilisation of a full ViT-g/384 (bf16)

Writes bench/results.json and bench/results.md (the Markdown table, also printed). Wall times
are medians of several interleaved runs (the minimum is recorded too). On CPU the encoder and
matmul figures are also taken as one thread's CPU time (minimum over runs), which a busy,
shared machine disturbs far less than wall time.
Random weights throughout: speed does not depend on them; our encoder and transformers'
VJEPA2Model get the same weights through `encoder_to_hf`, and their outputs are compared.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from src.frames import find_frames, load_image  # noqa: E402
from src.inference import ClipEncoder  # noqa: E402
from src.package import cpu_name  # noqa: E402
from src.models import vision_transformer as vt  # noqa: E402
from src.models.weights import encoder_to_hf, hf_config_dict  # noqa: E402

WINDOW = 16
SECTIONS = ["memory", "matmul", "encoder", "pipeline", "images", "spatial", "v21", "mfu"]
CLIP = (WINDOW, 256, 256)  # frames, height, width of the encoder benchmark input
TOKENS = (WINDOW // 2) * (256 // 16) ** 2  # 2048
log = logging.getLogger("bench")


# ----------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: dict, reps: int, device: torch.device, warmup: int = 1, clock=time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each function; calls interleaved (A B C A B C ...) so that load from
    other processes on a shared machine hits every variant alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            start = clock()
            fn()
            sync(device)
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
def machine_info(device: torch.device) -> dict:
    cpu = cpu_name()
    import transformers

    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# ----------------------------------------------------------------------------- 1. matmul limit
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
        if device.type == "cpu" and vt._ONEDNN_LINEAR is not None and dtype in (torch.float32, torch.bfloat16):
            fns["onednn"] = lambda: vt._ONEDNN_LINEAR[0](x, w, None, "none", [], "")
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


# ----------------------------------------------------------------------------- 2. encoder vs transformers
def hf_model_for(encoder: vt.VisionTransformer):
    """transformers VJEPA2Model carrying the same weights (as tests/helpers.py builds it)."""
    from transformers import VJEPA2Config, VJEPA2Model

    config = VJEPA2Config(**{**hf_config_dict(encoder), "pred_num_hidden_layers": 1})
    hf = VJEPA2Model(config).eval()
    state = hf.state_dict()
    state.update(encoder_to_hf(encoder.state_dict()))
    hf.load_state_dict(state, strict=True)
    return hf


def bench_encoder(label: str, arch: str, depth: int, dtype: torch.dtype, device: torch.device, reps: int,
                  limit: float | None, limit_1thread: float | None = None) -> dict:
    torch.manual_seed(0)
    ours = vt.FACTORIES[arch](img_size=CLIP[1], num_frames=CLIP[0], depth=depth).eval()
    hf = hf_model_for(ours)
    ours.to(device, dtype)
    hf.to(device, dtype)
    x = torch.randn(1, 3, *CLIP, device=device, dtype=dtype)
    x_hf = x.permute(0, 2, 1, 3, 4)  # HF takes [B, T, C, H, W]
    flops = vt.count_forward_flops(ours, *CLIP)
    with torch.inference_mode():
        out_ours, out_hf = ours(x), hf.get_vision_features(x_hf)
        delta = (out_ours.float() - out_hf.float()).abs().max().item()
        fns = {"ours": lambda: ours(x), "transformers": lambda: hf.get_vision_features(x_hf)}
        times = time_calls(fns, reps, device)
        cpu1 = time_one_thread(fns, max(3, reps - 1)) if device.type == "cpu" else None
    res = {"label": label, "arch": arch, "width": ours.embed_dim, "heads": ours.num_heads, "depth": depth,
           "dtype": str(dtype).removeprefix("torch."), "tokens": TOKENS, "gflops_per_clip": flops / 1e9,
           "hf_attn_implementation": getattr(hf.config, "_attn_implementation", None),
           "max_abs_diff": delta}
    for name, t in times.items():
        s = summary(t)
        res[name] = {**s, "tokens_per_s": TOKENS / s["median_s"], "gflop_per_s": flops / s["median_s"] / 1e9,
                     "gflop_per_s_best_run": flops / s["min_s"] / 1e9}
    res["ours_vs_transformers"] = res["transformers"]["median_s"] / res["ours"]["median_s"]
    if limit:
        res["matmul_limit_gflop_per_s"] = limit
        res["pct_of_matmul_limit"] = 100 * res["ours"]["gflop_per_s"] / limit
        res["pct_of_matmul_limit_best_run"] = 100 * res["ours"]["gflop_per_s_best_run"] / limit
    if cpu1:
        c_ours, c_hf = min(cpu1["ours"]), min(cpu1["transformers"])
        res["one_thread_cpu"] = {"ours_s": c_ours, "transformers_s": c_hf, "ours_gflop_per_s": flops / c_ours / 1e9,
                                 "ours_vs_transformers": c_hf / c_ours}
        if limit_1thread:
            res["one_thread_cpu"]["matmul_limit_gflop_per_s"] = limit_1thread
            res["one_thread_cpu"]["pct_of_matmul_limit"] = 100 * flops / c_ours / 1e9 / limit_1thread
    del ours, hf
    return res


# ----------------------------------------------------------------------------- 2b. model FLOPs utilisation
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets; matched against
# torch.cuda.get_device_name() in this order (first match wins). --peak_tflops overrides.
GPU_BF16_PEAK_TFLOPS = [
    (r"\bH200\b", 989.4),
    (r"\bH100\b.*\bNVL\b", 835.0),
    (r"\bH100\b.*\bPCIe\b", 756.0),
    (r"\bH100\b", 989.4),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    (r"\bA100\b", 312.0),
    (r"\bL40S\b", 362.1),
    (r"\bL4\b", 121.0),
    (r"\bA10\b", 125.0),
]


def gpu_bf16_peak_tflops(name: str) -> float | None:
    """The datasheet bf16 dense peak of a GPU by its CUDA device name; None if not in the table."""
    import re

    return next((peak for pattern, peak in GPU_BF16_PEAK_TFLOPS if re.search(pattern, name)), None)


def bench_mfu(arch: str, img: int, depth: int | None, dtype: torch.dtype, device: torch.device,
              batch_sizes: list[int], reps: int, peak_tflops: float | None, matmul_reps: int = 5) -> dict:
    """Throughput of our encoder at its full (or a given) depth, as model FLOPs utilisation: FLOPs
    counted from the architecture (count_forward_flops) per second, over the device's peak and over
    the measured matmul rate at the encoder's Linear shapes for the same token count."""
    torch.manual_seed(0)
    overrides = {"depth": depth} if depth else {}
    model = vt.FACTORIES[arch](img_size=img, num_frames=WINDOW, **overrides).eval().to(device, dtype)
    tokens = math.prod(model.patch_grid(WINDOW, img, img))
    flops = vt.count_forward_flops(model, WINDOW, img, img)
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


# ----------------------------------------------------------------------------- 3. pipeline
def make_frames(directory: Path, count: int, size: tuple[int, int] | None = None) -> list[Path]:
    """`count` JPEG frames: the shipped examples cycled (or resized to `size`, w×h)."""
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


def naive_loop(encoder: ClipEncoder, frames: list[Path], out: Path) -> None:
    """Load → preprocess → forward → save, one window at a time, nothing overlapped."""
    for w in range(len(frames) // WINDOW):
        clip = np.stack([load_image(p) for p in frames[w * WINDOW:(w + 1) * WINDOW]])
        feats = encoder.encode(encoder.preprocess(clip).unsqueeze(0))[0]
        torch.save({"features": feats}, out / f"naive_{w:05d}.pt")


def bench_pipeline(model: str, device: str, windows: int, batch_size: int, reps: int,
                   configs: list[tuple[int, int]], tmp: Path) -> dict:
    """Windows/s of: encode() of ready clips, the naive loop, and the extractor with each
    (DataLoader workers, torch threads in the main process) configuration."""
    from src.windows import default_num_workers
    from src.extract.seed import SequentialVJEPA2Extractor

    frames = make_frames(tmp / "frames", windows * WINDOW)
    encoder = ClipEncoder(model, device=device)
    dev = encoder.device
    threads = torch.get_num_threads()
    clips = torch.randn(batch_size, 3, WINDOW, encoder.crop, encoder.crop)
    if dev.type == "cuda":
        clips = clips.pin_memory()
    extractors = {w: SequentialVJEPA2Extractor(model, device=device, batch_size=batch_size, num_workers=w,
                                               overwrite=True) for w in sorted({w for w, _ in configs})}

    def forward_only():
        for _ in range(windows // batch_size):
            encoder.encode(clips)

    def naive():
        out = tmp / "naive"
        out.mkdir(exist_ok=True)
        naive_loop(encoder, frames, out)

    def run_extractor(w, t):
        def fn():
            torch.set_num_threads(t)
            try:
                summary_ = extractors[w].process_frame_directory(tmp / "frames", tmp / f"ours_w{w}")
            finally:
                torch.set_num_threads(threads)
            assert summary_["ok"] == windows, summary_
        return fn

    fns = {"forward_only": forward_only, "naive": naive,
           **{f"extractor_w{w}_t{t}": run_extractor(w, t) for w, t in configs}}
    # CPU: no warm-up run (each is a full extraction; the encoder was already run by its constructor's
    # caller); CUDA: one, so that cuBLAS/cuDNN set-up and allocator growth are not timed
    times = time_calls(fns, reps, dev, warmup=0 if dev.type == "cpu" else 1)
    res = {"model": model, "windows": windows, "batch_size": batch_size, "window": WINDOW,
           "default_num_workers": default_num_workers(dev), "torch_threads": threads,
           "windows_per_s": {k: windows / statistics.median(t) for k, t in times.items()},
           "windows_per_s_best_run": {k: windows / min(t) for k, t in times.items()}}
    default = f"extractor_w{default_num_workers(dev)}_t{threads}"
    if default not in res["windows_per_s"]:
        default = f"extractor_w{configs[0][0]}_t{configs[0][1]}"
    best = max((k for k in res["windows_per_s"] if k.startswith("extractor")), key=res["windows_per_s"].get)
    rate = res["windows_per_s"]
    res.update(default_variant=default, best_variant=best,
               extractor_vs_forward=rate[default] / rate["forward_only"],
               extractor_vs_naive=rate[default] / rate["naive"],
               best_extractor_vs_forward=rate[best] / rate["forward_only"],
               best_extractor_vs_naive=rate[best] / rate["naive"])
    return res


def bench_images(model: str, device: str, count: int, batch_size: int, reps: int, tmp: Path) -> dict:
    from src.extract.seed import VJEPA2Extractor

    images = make_frames(tmp / "images", count)
    extractors = {f: VJEPA2Extractor(model_name=model, device=device, image_frames=f) for f in (2, 16)}

    def run(f):
        def fn():
            for i in range(0, len(images), batch_size):
                extractors[f].extract_batch(images[i:i + batch_size])
        return fn

    times = time_calls({f"image_frames_{f}": run(f) for f in (2, 16)}, reps, extractors[2].encoder.device)
    rates = {k: count / statistics.median(t) for k, t in times.items()}
    return {"model": model, "images": count, "batch_size": batch_size, "images_per_s": rates,
            "images_per_s_best_run": {k: count / min(t) for k, t in times.items()},
            "ratio_2_vs_16": rates["image_frames_2"] / rates["image_frames_16"]}


def bench_spatial(model: str, device: str, windows: int, reps: int, tmp: Path, img_size: int | None = None) -> dict:
    """The cost of seeing the whole frame: the sequential extractor over the shipped 16:9 frames
    (640×360) with `--spatial center` and `full`; tokens per window, frame area covered, tokens/s."""
    from src.features import load_features
    from src.spatial import SPATIAL_MODES
    from src.extract.seed import SequentialVJEPA2Extractor

    make_frames(tmp / "frames_16x9", windows * WINDOW)
    extractors = {m: SequentialVJEPA2Extractor(model, device=device, img_size=img_size, spatial=m, overwrite=True)
                  for m in SPATIAL_MODES}

    def run(mode):
        def fn():
            summary_ = extractors[mode].process_frame_directory(tmp / "frames_16x9", tmp / f"spatial_{mode}")
            assert summary_["ok"] == windows, summary_
        return fn

    times = time_calls({m: run(m) for m in SPATIAL_MODES}, reps, extractors["center"].encoder.device,
                       warmup=0 if device == "cpu" else 1)
    res = {"model": model, "windows": windows, "window": WINDOW, "modes": {}}
    for mode in SPATIAL_MODES:
        meta = load_features(tmp / f"spatial_{mode}" / "window_00000.pt")["metadata"]
        (h, w), box = meta["image_size"], meta["crop_box"]
        tokens = math.prod(meta["grid"])
        seconds = statistics.median(times[mode])
        res["frame_size"] = [h, w]
        res["modes"][mode] = {"grid": meta["grid"], "input_size": meta["input_size"], "tokens_per_window": tokens,
                              "covered_fraction": (box["x1"] - box["x0"]) * (box["y1"] - box["y0"]) / (h * w),
                              "windows_per_s": windows / seconds, "tokens_per_s": windows * tokens / seconds,
                              "s_per_window": seconds / windows}
    center, full = res["modes"]["center"], res["modes"]["full"]
    res["full_vs_center"] = {"tokens": full["tokens_per_window"] / center["tokens_per_window"],
                             "time_per_window": full["s_per_window"] / center["s_per_window"],
                             "tokens_per_s": full["tokens_per_s"] / center["tokens_per_s"]}
    return res


def bench_v21(depth: int, device: str, reps: int, image_count: int, tmp: Path) -> dict:
    """V-JEPA 2.1 vs 2.0 at ViT-L width and the same depth (one 16-frame 256 px clip: what 2.1's
    modality embedding, interleaved and interpolated RoPE and level norm cost), and 2.1's
    1-frame image path vs images repeated to 16 (and 2) frames, in images/s."""
    from src.extract.seed import VJEPA2Extractor

    encoders = {gen: ClipEncoder(f"random:{arch},depth={depth}", device=device, img_size=CLIP[1])
                for gen, arch in (("2.0", "vit_large"), ("2.1", "vjepa2_1_vit_large"))}
    clip = torch.randn(1, 3, *CLIP)
    times = time_calls({gen: (lambda e=e: e.encode(clip)) for gen, e in encoders.items()}, reps,
                       encoders["2.0"].device)
    tokens_per_s = {gen: TOKENS / statistics.median(t) for gen, t in times.items()}

    images = make_frames(tmp / "v21_images", image_count)
    spec = f"random:vjepa2_1_vit_large,depth={depth}"
    extractors = {f: VJEPA2Extractor(model_name=spec, device=device, image_frames=f, img_size=CLIP[1])
                  for f in (1, 2, 16)}

    def run(f):
        def fn():
            for i in range(0, len(images), 4):
                extractors[f].extract_batch(images[i:i + 4])
        return fn

    image_times = time_calls({f"image_frames_{f}": run(f) for f in extractors}, max(2, reps - 1),
                             extractors[1].encoder.device)
    images_per_s = {k: image_count / statistics.median(t) for k, t in image_times.items()}
    return {"depth": depth, "clip": CLIP, "tokens_per_s": tokens_per_s,
            "v21_vs_v20": tokens_per_s["2.1"] / tokens_per_s["2.0"],
            "images": image_count, "image_size": CLIP[1], "images_per_s": images_per_s,
            "image_path_vs_16_frames": images_per_s["image_frames_1"] / images_per_s["image_frames_16"],
            "image_path_vs_2_frames": images_per_s["image_frames_1"] / images_per_s["image_frames_2"]}


# ----------------------------------------------------------------------------- 4. peak memory
_MEMORY_CHILD = textwrap.dedent("""
    import json, logging, resource, sys
    sys.path.insert(0, {repo!r})
    logging.disable(logging.WARNING)
    from src.extract.seed import SequentialVJEPA2Extractor
    ex = SequentialVJEPA2Extractor({model!r}, device="cpu", img_size={img}, batch_size=1, overwrite=True)
    summary = ex.process_frame_directory({frames!r}, {out!r}, last_frame={last})
    assert summary["ok"] == {windows}, summary
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
    print(json.dumps({{"vmhwm_kb": int(hwm[0].split()[1]) if hwm else None,
                       "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                       "children_ru_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                       "num_workers": ex.num_workers}}))
""")


def bench_memory(model: str, img: int, counts: tuple[int, ...], tmp: Path) -> dict:
    """RSS high-water mark of a whole sequential extraction of n windows, in a fresh process each.

    The child reports `ru_maxrss` and `VmHWM`. On Linux `ru_maxrss` survives fork+exec: a child
    of this (large) benchmark process starts at the parent's RSS, so it cannot show the child's
    own peak. `VmHWM` is the high-water mark of the child's own address space (fresh at exec):
    that is the figure compared. (Run at the very start, before the parent grows, the two agree.)
    """
    frames_dir = tmp / "memframes"
    make_frames(frames_dir, max(counts) * WINDOW, size=(img + img // 4, img))
    res = {"model": model, "img_size": img, "runs": {}}
    for n in counts:
        code = _MEMORY_CHILD.format(repo=str(REPO), model=model, img=img, frames=str(frames_dir),
                                    out=str(tmp / f"mem_out_{n}"), last=n * WINDOW - 1, windows=n)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        res["runs"][str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
    key = "vmhwm_kb" if res["runs"][str(min(counts))]["vmhwm_kb"] else "ru_maxrss_kb"
    res["measure"] = key
    lo, hi = (res["runs"][str(n)][key] for n in (min(counts), max(counts)))
    res["ratio_max_vs_min"] = hi / lo
    return res


# ----------------------------------------------------------------------------- report
def pass_fail(ok: bool) -> str:
    return "met" if ok else "MISSED"


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# Benchmark ({'quick' if r['quick'] else 'full'} run, {m['date']})", "",
             f"{m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
             f"transformers {m['transformers']}, device {m['device']}"
             + (f" ({m['gpu']})" if "gpu" in m else "")
             + f"; load average (1/5/15 min) before: {r['load_before']}, after: {r['load_after']}. "
             f"Times: median of {r['settings']['reps']} runs (encoder depth {r['settings']['depth']}).", ""]
    if "matmul" in r:
        lines += ["## Matmul limit: GFLOP/s of [2048, in] × [in, out] at the encoder's Linear shapes", "",
                  "'mix' = the encoder's four Linear shapes weighted by their FLOPs, each on its faster backend "
                  "(MKL `torch.matmul` or oneDNN): the rate the encoder would reach if everything ran as fast as its GEMMs.", "",
                  "| width | dtype | qkv | proj | fc1 | fc2 | mix | mix, 1 thread (CPU time) |", "|---|---|---|---|---|---|---|---|"]
        for mm in r["matmul"]:
            cells = [" / ".join(f"{b} {v:.0f}" for b, v in mm["shapes"][s]["gflop_per_s"].items())
                     for s in ("qkv", "proj", "fc1", "fc2")]
            one = mm.get("encoder_mix_gflop_per_s_1thread_cpu")
            lines.append(f"| {mm['width']} | {mm['dtype']} | " + " | ".join(cells) + f" | **{mm['encoder_mix_gflop_per_s']:.0f}** | "
                         + (f"{one:.0f} |" if one else "– |"))
    if "encoder" in r:
        lines += ["", f"## Encoder, 1 clip of {CLIP[0]}×{CLIP[1]}×{CLIP[2]} ({TOKENS} tokens), ours vs transformers.VJEPA2Model (same weights)", "",
                  "| model | dtype | ours tok/s | ours GFLOP/s | % of matmul mix | HF tok/s | HF GFLOP/s | ours/HF | max abs Δ |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for e in r["encoder"]:
            pct = (f"{e['pct_of_matmul_limit']:.0f} % (best run {e['pct_of_matmul_limit_best_run']:.0f} %)"
                   if "pct_of_matmul_limit" in e else "–")
            lines.append(f"| {e['label']} | {e['dtype']} | {e['ours']['tokens_per_s']:.0f} | {e['ours']['gflop_per_s']:.0f} | {pct} | "
                         f"{e['transformers']['tokens_per_s']:.0f} | {e['transformers']['gflop_per_s']:.0f} | "
                         f"{e['ours_vs_transformers']:.2f}× | {e['max_abs_diff']:.1e} |")
        ones = [e for e in r["encoder"] if "one_thread_cpu" in e]
        if ones:
            lines += ["", "Same, measured as CPU time of one thread (`torch.set_num_threads(1)`, `time.thread_time`, "
                      "minimum over runs, matmul mix measured the same way): much less sensitive to other processes "
                      "on the machine than wall time.", "",
                      "| model | ours GFLOP/s | % of 1-thread matmul mix | ours/HF |", "|---|---|---|---|"]
            for e in ones:
                o = e["one_thread_cpu"]
                pct = f"{o['pct_of_matmul_limit']:.0f} %" if "pct_of_matmul_limit" in o else "–"
                lines.append(f"| {e['label']} | {o['ours_gflop_per_s']:.0f} | {pct} | {o['ours_vs_transformers']:.2f}× |")
    for mf in r.get("mfu", []):
        peak = f"{mf['peak_tflops']:.0f} TFLOP/s (datasheet bf16 dense)" if mf["peak_tflops"] else "unknown"
        lines += ["", f"## Model FLOPs utilisation: {mf['arch']}/{mf['img_size']}, depth {mf['depth']}, "
                  f"{mf['frames']} frames ({mf['tokens_per_clip']} tokens, {mf['tflops_per_clip']:.1f} TFLOP per clip), "
                  f"{mf['dtype']}; device peak {peak}", "",
                  "| batch | clips/s | TFLOP/s | MFU (of peak) | % of measured matmul mix | peak memory (GB) |",
                  "|---|---|---|---|---|---|"]
        for run in mf["runs"]:
            mfu = f"**{run['mfu_pct']:.1f} %**" if "mfu_pct" in run else "–"
            mem = f"{run['max_memory_allocated_gb']:.1f}" if "max_memory_allocated_gb" in run else "–"
            lines.append(f"| {run['batch']} | {run['clips_per_s']:.3f} | {run['tflop_per_s']:.2f} | {mfu} | "
                         f"{run['pct_of_matmul_limit']:.0f} % ({run['matmul_limit_tflop_per_s']:.2f} TFLOP/s) | {mem} |")
    if "pipeline" in r:
        p = r["pipeline"]
        lines += ["", f"## Frame-folder extraction ({p['model']}, {p['windows']} windows of {WINDOW} frames, batch {p['batch_size']})",
                  "", "| variant | windows/s |", "|---|---|"]
        names = {"forward_only": "forward pass alone (encode of ready clips)",
                 "naive": "naive serial loop (load → preprocess → forward → save)"}
        for k, v in p["windows_per_s"].items():
            if k in names:
                label = names[k]
            else:
                w, t = k.removeprefix("extractor_w").split("_t")
                label = (f"SequentialVJEPA2Extractor, {w} workers, {t} torch threads"
                         + (" (default workers)" if k == p["default_variant"] else ""))
            lines.append(f"| {label} | {v:.3f} |")
        lines += ["", f"extractor (default workers) / forward-only: **{p['extractor_vs_forward']:.2f}×**, "
                  f"/ naive: **{p['extractor_vs_naive']:.2f}×**. Best configuration: {p['best_variant']} "
                  f"({p['best_extractor_vs_forward']:.2f}× forward-only, {p['best_extractor_vs_naive']:.2f}× naive)."]
    if "images" in r:
        im = r["images"]
        lines += ["", f"## Images ({im['model']}, {im['images']} images, batch {im['batch_size']}, VJEPA2Extractor.extract_batch)", "",
                  "| image_frames | images/s |", "|---|---|",
                  f"| 2 | {im['images_per_s']['image_frames_2']:.2f} |", f"| 16 | {im['images_per_s']['image_frames_16']:.2f} |",
                  "", f"image_frames 2 vs 16: **{im['ratio_2_vs_16']:.1f}×**"]
    if "spatial" in r:
        sp = r["spatial"]
        h, w = sp["frame_size"]
        lines += ["", f"## Whole frame vs centre crop ({sp['model']}, {sp['windows']} windows of {sp['window']} "
                  f"frames of {w}×{h}, SequentialVJEPA2Extractor)", "",
                  "| --spatial | input (H×W) | grid | tokens/window | frame area covered | windows/s | tokens/s |",
                  "|---|---|---|---|---|---|---|"]
        for mode, m in sp["modes"].items():
            lines.append(f"| {mode} | {m['input_size'][0]}×{m['input_size'][1]} | {'×'.join(map(str, m['grid']))} | "
                         f"{m['tokens_per_window']} | {100 * m['covered_fraction']:.0f} % | {m['windows_per_s']:.3f} | "
                         f"{m['tokens_per_s']:.0f} |")
        ratio = sp["full_vs_center"]
        lines += ["", f"full vs center: **{ratio['tokens']:.2f}× the tokens, {ratio['time_per_window']:.2f}× the time "
                  f"per window** ({ratio['tokens_per_s']:.2f}× the tokens/s)."]
    if "v21" in r:
        v = r["v21"]
        lines += ["", f"## V-JEPA 2.1 vs 2.0 (ViT-L width, depth {v['depth']}, random weights)", "",
                  f"| encoder | tok/s ({v['clip'][0]}×{v['clip'][1]}×{v['clip'][2]} clip) |", "|---|---|",
                  f"| 2.0 (`vit_large`) | {v['tokens_per_s']['2.0']:.0f} |",
                  f"| 2.1 (`vjepa2_1_vit_large`) | {v['tokens_per_s']['2.1']:.0f} |",
                  "", f"2.1 / 2.0: **{v['v21_vs_v20']:.2f}×**", "",
                  f"2.1 images ({v['images']} images, {v['image_size']} px, batch 4):", "",
                  "| image_frames | images/s |", "|---|---|"]
        for k, rate in v["images_per_s"].items():
            label = {"image_frames_1": "1 (image path)"}.get(k, k.removeprefix("image_frames_") + " (repeated, video path)")
            lines.append(f"| {label} | {rate:.2f} |")
        lines += ["", f"image path vs 16 frames: **{v['image_path_vs_16_frames']:.1f}×**, "
                  f"vs 2 frames: **{v['image_path_vs_2_frames']:.2f}×**"]
    if "memory" in r:
        mem = r["memory"]
        lines += ["", f"## Peak memory of a sequential extraction ({mem['model']}, {mem['img_size']} px crop; fresh process each)", "",
                  "| windows | VmHWM (MB) | ru_maxrss (MB) | workers' ru_maxrss (MB) |", "|---|---|---|---|"]
        for n, v in mem["runs"].items():
            hwm = f"{v['vmhwm_kb'] / 1024:.0f}" if v["vmhwm_kb"] else "–"
            lines.append(f"| {n} | {hwm} | {v['ru_maxrss_kb'] / 1024:.0f} | {v['children_ru_maxrss_kb'] / 1024:.0f} |")
        lines += ["", f"100 vs 10 windows ({mem['measure']}): **{mem['ratio_max_vs_min']:.3f}×**"]
    lines += ["", "## Targets", "", "| target | value | |", "|---|---|---|"]
    for t in r["targets"]:
        lines.append(f"| {t['target']} | {t['value']} | {pass_fail(t['met'])} |")
    return "\n".join(lines) + "\n"


def targets(r: dict) -> list[dict]:
    out = []
    for e in r.get("encoder", []):
        if e["dtype"] != "float32":
            continue
        one = e.get("one_thread_cpu", {})
        ratio = f"{e['ours_vs_transformers']:.2f}× wall" + (
            f", {one['ours_vs_transformers']:.2f}× 1-thread CPU time" if one else "")
        out.append({"target": f"{e['label']}: ours ≥ 1.0× transformers", "value": ratio,
                    "met": e["ours_vs_transformers"] >= 1.0 and one.get("ours_vs_transformers", 1.0) >= 1.0})
        out.append({"target": f"{e['label']}: max abs Δ vs transformers ≤ 1e-4", "value": f"{e['max_abs_diff']:.1e}",
                    "met": e["max_abs_diff"] <= 1e-4})
        if r["machine"]["device"] == "cpu" and "pct_of_matmul_limit" in one:
            # judged on one thread's CPU time: wall-clock % compares a 50 ms matmul with a seconds-long
            # forward pass, and on a shared machine the two see different load (shown in the table)
            out.append({"target": f"{e['label']}: ≥ 85 % of matmul GFLOP/s (CPU, 1-thread CPU time)",
                        "value": f"{one['pct_of_matmul_limit']:.0f} % (wall: {e['pct_of_matmul_limit']:.0f} %)",
                        "met": one["pct_of_matmul_limit"] >= 85})
        elif "pct_of_matmul_limit" in e and r["machine"]["device"] == "cpu":
            out.append({"target": f"{e['label']}: ≥ 85 % of matmul GFLOP/s (CPU)",
                        "value": f"{e['pct_of_matmul_limit']:.0f} %", "met": e["pct_of_matmul_limit"] >= 85})
    if "pipeline" in r:
        p = r["pipeline"]
        out.append({"target": "extraction (default workers) ≥ 0.9× forward-only", "value": f"{p['extractor_vs_forward']:.2f}×",
                    "met": p["extractor_vs_forward"] >= 0.9})
        if r["machine"]["device"] == "cpu":
            out.append({"target": "extraction (default workers) never slower than the naive loop",
                        "value": f"{p['extractor_vs_naive']:.2f}×", "met": p["extractor_vs_naive"] >= 1.0})
        else:  # with a fast forward pass, hiding decoding and writing must show
            out.append({"target": "extraction (default workers) ≥ 1.5× the naive loop (GPU)",
                        "value": f"{p['extractor_vs_naive']:.2f}×", "met": p["extractor_vs_naive"] >= 1.5})
    if "images" in r:
        im = r["images"]
        out.append({"target": "image_frames=2 ≥ 6× the images/s of 16", "value": f"{im['ratio_2_vs_16']:.1f}×",
                    "met": im["ratio_2_vs_16"] >= 6})
    if "v21" in r:
        v = r["v21"]
        out.append({"target": "2.1 encoder ≥ 0.9× the tokens/s of 2.0 (same width and depth)",
                    "value": f"{v['v21_vs_v20']:.2f}×", "met": v["v21_vs_v20"] >= 0.9})
        out.append({"target": "2.1 image path ≥ 6× the images/s of 16-frame images",
                    "value": f"{v['image_path_vs_16_frames']:.1f}×", "met": v["image_path_vs_16_frames"] >= 6})
    if "memory" in r:
        out.append({"target": "peak RSS 100 windows ≤ 1.10× 10 windows", "value": f"{r['memory']['ratio_max_vs_min']:.3f}×",
                    "met": r["memory"]["ratio_max_vs_min"] <= 1.10})
    return out


def report(path: Path) -> str:
    """Targets and Markdown again from a results.json (e.g. after changing how they are judged)."""
    r = json.loads(path.read_text())
    r["targets"] = targets(r)
    path.write_text(json.dumps(r, indent=2, default=str) + "\n")
    md = markdown(r)
    path.with_suffix(".md").write_text(md)
    return md


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few minutes: shallower models, fewer repetitions")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--depth", type=int, default=None, help="encoder blocks (default: 2 quick, 4 full)")
    p.add_argument("--reps", type=int, default=None, help="timed runs per measurement (default: 3 quick, 4 full)")
    p.add_argument("--output_dir", default=str(REPO / "bench"))
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                   help="run only these sections (default: all; 'mfu' only on CUDA unless named here)")
    mfu = p.add_argument_group("model FLOPs utilisation (section 'mfu')")
    mfu.add_argument("--mfu_arch", default="vit_giant_xformers", help="architecture (default: ViT-g)")
    mfu.add_argument("--mfu_img", type=int, default=384, help="crop size (default: 384)")
    mfu.add_argument("--mfu_depth", type=int, default=None, help="blocks (default: the architecture's full depth)")
    mfu.add_argument("--mfu_batch", type=int, nargs="+", default=[1, 2, 4], help="clips per forward pass")
    mfu.add_argument("--peak_tflops", type=float, default=None,
                     help="the device's bf16 dense peak, TFLOP/s (default: from a table of NVIDIA GPUs)")
    p.add_argument("--report", metavar="RESULTS_JSON", default=None,
                   help="measure nothing: rewrite the targets and the .md next to an existing results.json")
    args = p.parse_args(argv)
    if args.report:
        print(report(Path(args.report)))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for name in ("src", "vjepa2_sequential_extractor", "vjepa2_extractor", "src.models.weights"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device here")
    depth = args.depth or (2 if args.quick else 4)
    reps = args.reps or (3 if args.quick else 4)
    dtypes = [torch.float32] if device.type == "cpu" else [torch.bfloat16, torch.float16]

    sections = args.only or [x for x in SECTIONS if x != "mfu" or device.type == "cuda"]
    r = {"quick": args.quick, "machine": machine_info(device), "load_before": load_average(),
         "settings": {"depth": depth, "reps": reps, "clip": CLIP, "sections": sections}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "memory" in sections:  # first, while this process is small (see bench_memory)
            log.info("peak memory ...")
            r["memory"] = bench_memory("random:tiny", 64, (10, 100), tmp)
        if "matmul" in sections or "encoder" in sections:
            log.info("matmul limit ...")
            r["matmul"] = [bench_matmul(w, ratio, TOKENS, dt, device, max(reps, 5))
                           for w, ratio in ((1024, 4.0), (1408, 48 / 11)) for dt in dtypes]
        if "encoder" in sections:
            limits = {(mm["width"], mm["dtype"]): mm["encoder_mix_gflop_per_s"] for mm in r["matmul"]}
            limits1 = {(mm["width"], mm["dtype"]): mm["encoder_mix_gflop_per_s_1thread_cpu"] for mm in r["matmul"]}
            r["encoder"] = []
            for label, arch in ((f"ViT-L width (1024/16 heads), depth {depth}", "vit_large"),
                                (f"ViT-g width (1408/22 heads), depth {depth}", "vit_giant_xformers")):
                for dt in dtypes:
                    log.info("encoder %s %s ...", arch, dt)
                    width = 1024 if arch == "vit_large" else 1408
                    key = (width, str(dt).removeprefix("torch."))
                    r["encoder"].append(bench_encoder(label, arch, depth, dt, device, reps, limits.get(key),
                                                      limits1.get(key)))
        if "mfu" in sections:
            peak = args.peak_tflops
            if peak is None and device.type == "cuda":
                peak = gpu_bf16_peak_tflops(r["machine"]["gpu"])
                if peak is None:
                    log.warning("%s is not in GPU_BF16_PEAK_TFLOPS: pass --peak_tflops for the MFU", r["machine"]["gpu"])
            r["mfu"] = []
            for dt in dtypes[:1]:  # bf16 on CUDA (the peak is bf16's), fp32 on CPU
                log.info("model FLOPs utilisation %s/%d %s ...", args.mfu_arch, args.mfu_img, dt)
                r["mfu"].append(bench_mfu(args.mfu_arch, args.mfu_img, args.mfu_depth, dt, device, args.mfu_batch,
                                          reps, peak if dt == torch.bfloat16 or args.peak_tflops else None))
        # On a GPU a 4-block model is a few ms per window and the benchmark would time the disk;
        # the full ViT-L there gives the forward pass its real weight.
        pipe_model = f"random:vit_large,depth={depth}" if device.type == "cpu" else "random:vit_large"
        if "pipeline" in sections:
            log.info("pipeline ...")
            from src.windows import default_num_workers

            threads = torch.get_num_threads()
            configs = [(0, threads), (default_num_workers(device), threads), (1, threads)]
            if args.device == "cpu" and not args.quick:
                configs += [(1, max(1, threads - 1))]  # a worker, and threads = cores − workers
            configs = list(dict.fromkeys(configs))
            # the extractor's default batch size (1) on CPU: bigger batches are slower per window
            # there (activations outgrow the caches); batches of 4 feed a GPU better
            r["pipeline"] = bench_pipeline(pipe_model, args.device, windows=8 if args.device == "cpu" else 32,
                                           batch_size=1 if args.device == "cpu" else 4,
                                           reps=max(2, reps - 1), configs=configs, tmp=tmp)
        if "images" in sections:
            log.info("images ...")
            r["images"] = bench_images(pipe_model, args.device, count=8, batch_size=4, reps=2, tmp=tmp)
        if "spatial" in sections:
            log.info("whole frame vs centre crop ...")
            r["spatial"] = bench_spatial(pipe_model, args.device, windows=4 if args.device == "cpu" else 16,
                                         reps=max(2, reps - 1), tmp=tmp)
        if "v21" in sections:
            log.info("V-JEPA 2.1 ...")
            r["v21"] = bench_v21(depth, args.device, reps, image_count=8, tmp=tmp)
    r["load_after"] = load_average()
    r["targets"] = targets(r)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(r, indent=2, default=str) + "\n")
    md = markdown(r)
    (out / "results.md").write_text(md)
    print(md)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
