"""V-JEPA 2.1 against 2.0 at the same width and depth, and 2.1's image path against repeated frames."""
from __future__ import annotations

import statistics
from pathlib import Path

import torch

from bench.common import make_frames, time_calls
from bench.sections import CLIP, TOKENS, Settings
from src.inference import ClipEncoder


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


def run(settings: Settings, results: dict) -> dict:
    return bench_v21(settings.depth, settings.device.type, settings.reps, image_count=8, tmp=settings.tmp)


def markdown(result: dict) -> list[str]:
    lines = []
    v = result
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
    return lines


def targets(result: dict, machine: dict) -> list[dict]:
    out = []
    v = result
    out.append({"target": "2.1 encoder ≥ 0.9× the tokens/s of 2.0 (same width and depth)",
                "value": f"{v['v21_vs_v20']:.2f}×", "met": v["v21_vs_v20"] >= 0.9})
    out.append({"target": "2.1 image path ≥ 6× the images/s of 16-frame images",
                "value": f"{v['image_path_vs_16_frames']:.1f}×", "met": v["image_path_vs_16_frames"] >= 6})
    return out
