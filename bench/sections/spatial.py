"""The cost of seeing the whole frame: `--spatial full` against `center` on 16:9 frames."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from bench.common import WINDOW, make_frames, time_calls
from bench.sections import Settings


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


def run(settings: Settings, results: dict) -> dict:
    cpu = settings.device.type == "cpu"
    return bench_spatial(settings.pipeline_model, settings.device.type, windows=4 if cpu else 16,
                         reps=max(2, settings.reps - 1), tmp=settings.tmp)


def markdown(result: dict) -> list[str]:
    lines = []
    sp = result
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
    return lines
