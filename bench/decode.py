#!/usr/bin/env python
"""Video decoding per backend: seconds of decode per minute of video, first and last window.

    python bench/decode.py            # 60 s of 1080p and 30 s of 480x270 (world.mp4-sized)
    python bench/decode.py --quick    # 8 s and 10 s

Clips: ffmpeg's `testsrc2` pattern (moving), H.264 yuv420p, 30 fps, a keyframe every 2 s (what
cameras write), encoded here with imageio-ffmpeg's binary. Each backend (src.media.video) reads
every 16-frame window in order, as the sequential extractor does, through one VideoReader: "s per
min" is the decode time of all windows scaled to one minute of video, "first s" / "last s" the
first and the last window's time (flat = linear decoding), "decoded" the frames the decoder
produced for the last window (PyAV counts them; decord says only what it returned). Converting
to RGB is included; resizing and normalising are not (the encoder's transform does them).
Each backend runs in a fresh process: "peak MB" is its peak resident memory (ru_maxrss) minus
that after the imports. Wall time on this machine, the decoders' own threads.

Input pipeline for GPUs ("pipeline"): one DataLoader worker's work per window (one torch thread,
as `src.windows.worker_init` sets; PyAV, 1080p source): decode 16 frames + the eval transform
(resize, centre crop, normalise) at 256 and 384 px crops, in windows/s per worker. From it, the
cores that keep one GPU busy: the GPU's windows/s is ASSUMED, not measured (no GPU here): the
encoder's forward FLOPs (src.models.vision_transformer.count_forward_flops, 16 frames) over
40 % of an H100 SXM's 989 TFLOP/s dense bf16 datasheet peak.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.media.decord_backend import import_decord  # noqa: E402
from src.media.video import VideoReader  # noqa: E402

WINDOW = 16
GPU_PEAK_TFLOPS, ASSUMED_MFU = 989.0, 0.40  # H100 SXM bf16 dense (datasheet); utilisation assumed
ENCODERS = {"ViT-L/256": ("vit_large", 256), "ViT-g/384": ("vit_giant_xformers", 384)}
CLIPS = {  # name: (width, height, seconds full, seconds quick)
    "1080p": (1920, 1080, 60, 8),
    "480x270": (480, 270, 30, 10),
}


def make_clip(path: Path, width: int, height: int, seconds: int, fps: int = 30) -> Path:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}", "-c:v", "libx264",
                    "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", str(2 * fps), str(path)], check=True)
    return path


def backends() -> list[str]:
    return (["decord"] if import_decord() is not None else []) + ["pyav"]


def measure(path: Path, backend: str) -> dict:
    """`measure_here` in a fresh interpreter (its own peak memory)."""
    return _worker(["--worker", backend, str(path)])


def measure_here(path: Path, backend: str) -> dict:
    """Every window of WINDOW frames in order through one reader."""
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    opened = time.perf_counter()
    with VideoReader(path, backend=backend) as reader:
        open_s = time.perf_counter() - opened
        starts = list(range(0, reader.num_frames - WINDOW + 1, WINDOW))
        times, decoded = [], []
        for start in starts:
            before, t0 = reader.decoded_frames, time.perf_counter()
            reader.get_frames(range(start, start + WINDOW))
            times.append(time.perf_counter() - t0)
            decoded.append(reader.decoded_frames - before)
        seconds = reader.num_frames / reader.fps
    total = open_s + sum(times)
    return {"windows": len(starts), "open_s": round(open_s, 3), "total_s": round(total, 2),
            "s_per_min": round(total * 60 / seconds, 2), "first_s": round(times[0], 4),
            "last_s": round(times[-1], 4), "last_decoded": decoded[-1],
            "frames_per_s": round(len(starts) * WINDOW / sum(times), 1),
            "peak_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024)}


def pipeline_here(path: Path, crop: int, windows: int) -> dict:
    """Decode + eval transform of `windows` windows in order, one torch thread (a DataLoader worker)."""
    import torch

    from src.spatial import SpatialPlan

    torch.set_num_threads(1)
    transform = SpatialPlan("center", crop, 16, 2).transform()
    decode_s = transform_s = 0.0
    with VideoReader(path, backend="pyav") as reader:
        reader.get_frames(range(WINDOW))  # the decoder's start-up outside the timing
        for k in range(1, windows + 1):
            t0 = time.perf_counter()
            frames = reader.get_frames(range(k * WINDOW, (k + 1) * WINDOW))
            t1 = time.perf_counter()
            transform(frames)  # [C, T, crop, crop] float32
            t2 = time.perf_counter()
            decode_s, transform_s = decode_s + t1 - t0, transform_s + t2 - t1
    return {"decode_s_per_window": round(decode_s / windows, 4), "transform_s_per_window": round(transform_s / windows, 4),
            "windows_per_s_per_worker": round(windows / (decode_s + transform_s), 2)}


def gpu_plan(pipeline: dict) -> dict:
    """Cores (workers) that keep one GPU fed, at the assumed GPU rate."""
    import torch

    from src.models.vision_transformer import FACTORIES, count_forward_flops

    plan = {}
    for name, (arch, crop) in ENCODERS.items():
        with torch.device("meta"):  # shapes only: no memory, no weights
            model = FACTORIES[arch](img_size=crop, num_frames=WINDOW)
        tflop = count_forward_flops(model, WINDOW, crop, crop) / 1e12
        gpu_rate = GPU_PEAK_TFLOPS * ASSUMED_MFU / tflop
        per_worker = pipeline[str(crop)]["windows_per_s_per_worker"]
        plan[name] = {"tflop_per_window": round(tflop, 2), "assumed_gpu_windows_per_s": round(gpu_rate, 1),
                      "worker_windows_per_s": per_worker, "cores_per_gpu": round(gpu_rate / per_worker, 1)}
    return plan


def run(quick: bool) -> dict:
    results = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
               "window": WINDOW, "quick": quick, "clips": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (width, height, full_s, quick_s) in CLIPS.items():
            seconds = quick_s if quick else full_s
            clip = make_clip(Path(tmp) / f"{name}.mp4", width, height, seconds)
            results["clips"][name] = {"seconds": seconds, "size": f"{width}x{height}", "fps": 30,
                                      "backends": {b: measure(clip, b) for b in backends()}}
            if name == "1080p":
                windows = 4 if quick else 24
                results["pipeline"] = {str(crop): _worker(["--pipeline", str(crop), str(clip), str(windows)])
                                       for crop in (256, 384)}
    results["gpu_plan"] = gpu_plan(results["pipeline"])
    results["gpu_assumption"] = f"{ASSUMED_MFU:.0%} of {GPU_PEAK_TFLOPS:g} TFLOP/s (H100 SXM bf16 dense, datasheet)"
    return results


def _worker(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: dict) -> str:
    lines = ["| clip | backend | s per min of video | first window s | last window s | decoded (last) | frames/s | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    for name, clip in results["clips"].items():
        for backend, r in clip["backends"].items():
            lines.append(f"| {name} ({clip['seconds']} s) | {backend} | {r['s_per_min']} | {r['first_s']} | "
                         f"{r['last_s']} | {r['last_decoded']} | {r['frames_per_s']} | {r['peak_mb']} |")
    lines += ["", "| crop | decode s / window | transform s / window | windows/s per worker |", "|---|---|---|---|"]
    for crop, r in results["pipeline"].items():
        lines.append(f"| {crop} | {r['decode_s_per_window']} | {r['transform_s_per_window']} | "
                     f"{r['windows_per_s_per_worker']} |")
    lines += ["", f"GPU rate assumed: {results['gpu_assumption']}", "",
              "| encoder | TFLOP / window | GPU windows/s (assumed) | cores per GPU |", "|---|---|---|---|"]
    for name, r in results["gpu_plan"].items():
        lines.append(f"| {name} | {r['tflop_per_window']} | {r['assumed_gpu_windows_per_s']} | {r['cores_per_gpu']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short clips")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--worker", nargs=2, metavar=("BACKEND", "CLIP"), help=argparse.SUPPRESS)
    parser.add_argument("--pipeline", nargs=3, metavar=("CROP", "CLIP", "WINDOWS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure_here(Path(args.worker[1]), args.worker[0])))
        return 0
    if args.pipeline:
        print(json.dumps(pipeline_here(Path(args.pipeline[1]), int(args.pipeline[0]), int(args.pipeline[2]))))
        return 0
    results = run(args.quick)
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
