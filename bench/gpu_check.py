#!/usr/bin/env python
"""The first-GPU check: one command that measures, in a few minutes on one GPU, what no CPU can.

    bash bench/gpu_check.sh                  # on a CUDA machine: ≤ 8 min on one H100/H200-class GPU
    bash bench/gpu_check.sh --dry-run        # the same steps on the CPU with tiny models (CI runs it)

Steps (each recorded in one JSON, default bench/gpu_check.json, also when a step fails):
  encoder   ours in fp32 / bf16 / fp16 against transformers.VJEPA2Model on the same random weights:
            max |Δ| (each dtype against transformers fp32), clips/s, TFLOP/s and MFU of the bf16
            datasheet peak (bench/gpu.py); ViT-L/256 and ViT-g/384 (dry run: tiny, 32 px, 4 frames)
  pipeline  vjepa2_pipeline.py on the example frames (random model) with UMAP, PCA and the MP4
  parallel  run_parallel_extraction.sh over the example frames, one shard per GPU (dry run: 2 on CPU)
  probe     vjepa2_probe.py train in bf16 on features of small synthetic clips
  compile   the sequential extractor with --compile against eager: seconds and max |Δ| of features
            (relative to the largest feature)
Every step runs even if an earlier one failed; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine_info  # noqa: E402
from bench.gpu import cuda_seconds_per_call, gpu_bf16_peak_tflops  # noqa: E402
from src.models.flops import count_forward_flops  # noqa: E402
from src.models.vision_transformer import FACTORIES  # noqa: E402
from src.models.weights import encoder_to_hf, hf_config_dict  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# (name, architecture, crop, frames, depth or None for the released depth)
GPU_ENCODERS = [("vit_large_256", "vit_large", 256, 16, None), ("vit_giant_384", "vit_giant_xformers", 384, 16, None)]
DRY_ENCODERS = [("tiny_32", "tiny", 32, 4, None)]


def machine(device: torch.device) -> dict:
    info = machine_info(device)
    if device.type == "cuda":
        info.update(gpus=torch.cuda.device_count(), bf16_peak_tflops=gpu_bf16_peak_tflops(torch.cuda.get_device_name(0)))
    return info


def _seconds_per_call(fn, device: torch.device, iters: int) -> float:
    if device.type == "cuda":
        return cuda_seconds_per_call(fn, iters)
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


@torch.inference_mode()
def encoder_step(name: str, arch: str, crop: int, frames: int, depth: int | None, device: torch.device,
                 batch: int, iters: int) -> dict:
    from transformers import VJEPA2Config, VJEPA2Model

    torch.manual_seed(0)
    kwargs = {"img_size": crop, "num_frames": frames} | ({"depth": depth} if depth else {})
    ours = FACTORIES[arch](**kwargs).eval()
    config = VJEPA2Config(**{**hf_config_dict(ours), "pred_num_hidden_layers": 1})
    theirs = VJEPA2Model(config).eval()
    state = theirs.state_dict()
    state.update(encoder_to_hf(ours.state_dict()))
    theirs.load_state_dict(state, strict=True)
    ours.to(device), theirs.to(device)
    x = torch.randn(batch, 3, frames, crop, crop, device=device)

    def theirs_fn(clip):  # transformers takes [B, T, C, H, W]
        return theirs(pixel_values_videos=clip.transpose(1, 2), skip_predictor=True).last_hidden_state

    reference = theirs_fn(x).float()
    flops = count_forward_flops(ours, frames, crop, crop) * batch
    peak = gpu_bf16_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    result = {"arch": arch, "crop": crop, "frames": frames, "depth": ours.depth, "batch": batch,
              "tflops_per_batch": flops / 1e12, "dtypes": {}}
    for dtype_name, dtype in DTYPES.items():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            ours_out = ours(x).float()
            theirs_out = theirs_fn(x).float()
            ours_s = _seconds_per_call(lambda: ours(x), device, iters)
            theirs_s = _seconds_per_call(lambda: theirs_fn(x), device, iters)
        entry = {"max_abs_diff_vs_transformers_fp32": float((ours_out - reference).abs().max()),
                 "max_abs_diff_vs_transformers_same_dtype": float((ours_out - theirs_out).abs().max()),
                 "finite": bool(torch.isfinite(ours_out).all()),
                 "ours_clips_per_s": batch / ours_s, "transformers_clips_per_s": batch / theirs_s,
                 "ours_vs_transformers": theirs_s / ours_s, "ours_tflop_s": flops / ours_s / 1e12}
        if peak:
            entry["mfu_pct_of_bf16_peak"] = 100 * entry["ours_tflop_s"] / peak
        result["dtypes"][dtype_name] = entry
    tolerance = 1e-4 if device.type == "cpu" else 1e-3  # TF32 may be on in transformers' GEMMs on GPU
    result["ok"] = (result["dtypes"]["fp32"]["max_abs_diff_vs_transformers_fp32"] <= tolerance
                    and all(d["finite"] for d in result["dtypes"].values()))
    del ours, theirs
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def run_command(args: list, log: Path, env: dict | None = None, timeout: int = 600) -> dict:
    start = time.perf_counter()
    with log.open("w") as handle:
        try:
            proc = subprocess.run([str(a) for a in args], cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, timeout=timeout)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = 124
    tail = log.read_text(errors="replace").splitlines()[-5:]
    return {"ok": code == 0, "exit_code": code, "seconds": time.perf_counter() - start,
            "command": " ".join(map(str, args)), "log_tail": tail}


def write_synthetic_clips(root: Path, per_class: int, size: int = 40, frames: int = 16) -> Path:
    """Small H.264 clips of two classes (bright noise drifting left or right): a labels CSV."""
    import av

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for label, shift in (("left", -2), ("right", 2)):
        for i in range(per_class):
            path = root / f"{label}_{i}.mp4"
            base = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            with av.open(str(path), "w") as out:
                stream = out.add_stream("libx264", rate=25)
                stream.width = stream.height = size
                stream.pix_fmt = "yuv420p"
                for t in range(frames):
                    frame = av.VideoFrame.from_ndarray(np.roll(base, shift * t, axis=1), format="rgb24")
                    for packet in stream.encode(frame):
                        out.mux(packet)
                for packet in stream.encode():
                    out.mux(packet)
            rows.append(f"{path.resolve()},{label}")
    (root / "videos.txt").write_text("".join(r.split(",")[0] + "\n" for r in rows))
    labels = root / "labels.csv"
    labels.write_text("path,label\n" + "\n".join(rows) + "\n")
    return labels


def relative_feature_diff(a: Path, b: Path) -> float:
    """max |Δ| between the window files of two runs, over the largest |feature| (features are
    stored in fp16, so an absolute tolerance would depend on the model's scale)."""
    diffs = []
    for file in sorted(a.rglob("*.pt")):
        x = torch.load(file, map_location="cpu", weights_only=True)["features"].float()
        y = torch.load(b / file.relative_to(a), map_location="cpu", weights_only=True)["features"].float()
        diffs.append(float((x - y).abs().max() / x.abs().max().clamp_min(1e-12)))
    return max(diffs) if diffs else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny models")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "gpu_check.json")
    parser.add_argument("--work_dir", type=Path, default=None, help="scratch folder (default: next to --output)")
    parser.add_argument("--steps", nargs="+", default=["encoder", "pipeline", "parallel", "probe", "compile"])
    args = parser.parse_args(argv)

    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        parser.error("no CUDA device here: use --dry-run for the CPU rehearsal")
    device = torch.device("cpu" if dry else "cuda")
    work = args.work_dir or args.output.with_suffix("")
    work.mkdir(parents=True, exist_ok=True)
    model = "random:tiny" if dry else "random:vit_large"
    dev = ["--device", "cpu" if dry else "cuda"]
    py = sys.executable
    report = {"dry_run": dry, "machine": machine(device), "steps": {}}
    env = {"HF_HUB_OFFLINE": "1"}

    def record(name: str, fn) -> None:
        start = time.perf_counter()
        try:
            report["steps"][name] = fn()
        except Exception as exc:  # a failed step is a result: keep measuring the others
            report["steps"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        report["steps"][name].setdefault("seconds", time.perf_counter() - start)
        status = "ok" if report["steps"][name]["ok"] else "FAILED"
        print(f"{name:10s} {status:6s} {report['steps'][name]['seconds']:7.1f} s", flush=True)
        args.output.write_text(json.dumps(report, indent=2))  # what was measured survives a later crash

    if "encoder" in args.steps:
        def encoders():
            runs = [encoder_step(*spec, device=device, batch=1 if dry else 4, iters=2 if dry else 10)
                    for spec in (DRY_ENCODERS if dry else GPU_ENCODERS)]
            return {"ok": all(r["ok"] for r in runs), "runs": runs}
        record("encoder", encoders)
    if "pipeline" in args.steps:
        record("pipeline", lambda: run_command(
            [py, "vjepa2_pipeline.py", "--frame_dir", "examples/frames", "--output_dir", work / "pipeline",
             "--model", model, *dev, "--overwrite", "--umap_visualization", "--pca_visualization",
             "--video_stacked_visualization", "--mp4"], work / "pipeline.log", env))
    if "parallel" in args.steps:
        shards = 2 if dry else max(1, torch.cuda.device_count())
        record("parallel", lambda: run_command(
            ["bash", "run_parallel_extraction.sh", "examples/frames", work / "parallel", shards, "--sequential",
             "--model", model, "--window", 8, "--overwrite"], work / "parallel.log", {**env, "PYTHON": py}))
    if "probe" in args.steps:
        def probe():
            labels = write_synthetic_clips(work / "clips", per_class=4 if dry else 16)
            extract = run_command([py, "vjepa2_sequential_extractor.py", "--video", work / "clips" / "videos.txt",
                                   "--output_dir", work / "probe_feats", "--model", "random:tiny", "--img_size", 32,
                                   "--window", 8, "--frame_step", 2, *dev, "--overwrite"],
                                  work / "probe_extract.log", env)
            if not extract["ok"]:
                return {**extract, "stage": "extract"}
            train = run_command([py, "vjepa2_probe.py", "train", "--labels", labels, "--features",
                                 work / "probe_feats", "--output_dir", work / "probe", *dev, "--dtype", "bf16",
                                 "--depth", 1, "--num_heads", 4, "--epochs", 2 if dry else 10, "--lr", "1e-3",
                                 "--weight_decay", "0.01", "--batch_size", 4, "--val_fraction", "0.5",
                                 "--overwrite"], work / "probe_train.log", env)
            return {**train, "extract_seconds": extract["seconds"]}
        record("probe", probe)
    if "compile" in args.steps:
        def compiled():
            common = [py, "vjepa2_sequential_extractor.py", "--frame_dir", "examples/frames", "--model", model,
                      "--window", 8, *dev, "--overwrite"]
            eager = run_command([*common, "--output_dir", work / "eager"], work / "eager.log", env)
            comp = run_command([*common, "--output_dir", work / "compiled", "--compile"], work / "compile.log", env)
            diff = relative_feature_diff(work / "eager", work / "compiled") if eager["ok"] and comp["ok"] else math.nan
            tolerance = 2e-3 if dry else 2e-2  # fp16 storage; bf16 on GPU: inductor's kernels differ from eager's
            return {"ok": eager["ok"] and comp["ok"] and diff <= tolerance, "eager_seconds": eager["seconds"],
                    "compiled_seconds": comp["seconds"], "max_relative_diff": diff, "eager": eager, "compiled": comp,
                    "seconds": eager["seconds"] + comp["seconds"]}
        record("compile", compiled)

    report["ok"] = all(step["ok"] for step in report["steps"].values())
    args.output.write_text(json.dumps(report, indent=2))
    print(f"{'all ok' if report['ok'] else 'some steps FAILED'}: {args.output}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
