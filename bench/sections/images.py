"""Images through VJEPA2Extractor.extract_batch: 2-frame against 16-frame clips."""
from __future__ import annotations

import statistics
from pathlib import Path

from bench.common import make_frames, time_calls
from bench.sections import Settings


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


def run(settings: Settings, results: dict) -> dict:
    return bench_images(settings.pipeline_model, settings.device.type, count=8, batch_size=4, reps=2, tmp=settings.tmp)


def markdown(result: dict) -> list[str]:
    lines = []
    im = result
    lines += ["", f"## Images ({im['model']}, {im['images']} images, batch {im['batch_size']}, VJEPA2Extractor.extract_batch)", "",
              "| image_frames | images/s |", "|---|---|",
              f"| 2 | {im['images_per_s']['image_frames_2']:.2f} |", f"| 16 | {im['images_per_s']['image_frames_16']:.2f} |",
              "", f"image_frames 2 vs 16: **{im['ratio_2_vs_16']:.1f}×**"]
    return lines


def targets(result: dict, machine: dict) -> list[dict]:
    out = []
    im = result
    out.append({"target": "image_frames=2 ≥ 6× the images/s of 16", "value": f"{im['ratio_2_vs_16']:.1f}×",
                "met": im["ratio_2_vs_16"] >= 6})
    return out
