"""`--compile` against eager: the first call's cost (compilation) and the per-window gain after it."""
from __future__ import annotations

import time

import torch

from bench.common import summary, sync, time_calls
from bench.sections import CLIP, Settings
from src.models import vision_transformer as vt
from src.models.compile import CompiledForward


def bench_compile(arch: str, depth: int, dtype: torch.dtype, device: torch.device, reps: int,
                  clip: tuple[int, int, int] = CLIP) -> dict:
    """Eager `forward_features` vs `CompiledForward` (inductor) on one clip, same model and input."""
    torch.manual_seed(0)
    model = vt.FACTORIES[arch](img_size=clip[1], num_frames=clip[0], depth=depth).eval().to(device, dtype)
    compiled = CompiledForward(model)
    x = torch.randn(1, 3, *clip, device=device, dtype=dtype)
    with torch.inference_mode():
        eager_out = model.forward_features(x)
        sync(device)
        start = time.perf_counter()
        compiled_out = compiled(x)
        sync(device)
        first_s = time.perf_counter() - start
        delta = (compiled_out.float() - eager_out.float()).abs().max().item()
        times = time_calls({"eager": lambda: model.forward_features(x), "compiled": lambda: compiled(x)}, reps, device)
    res = {"arch": arch, "depth": depth, "dtype": str(dtype).removeprefix("torch."), "clip": list(clip),
           "first_call_s": first_s, "fell_back_to_eager": compiled.failed, "max_abs_diff": delta,
           "eager": summary(times["eager"]), "compiled": summary(times["compiled"])}
    eager_s, compiled_s = res["eager"]["median_s"], res["compiled"]["median_s"]
    res["compiled_vs_eager"] = eager_s / compiled_s
    res["compile_cost_s"] = first_s - compiled_s
    gain = eager_s - compiled_s
    res["break_even_windows"] = res["compile_cost_s"] / gain if gain > 0 else None
    return res


def run(settings: Settings, results: dict) -> list[dict]:
    return [bench_compile("vit_large", settings.depth, dtype, settings.device, settings.reps)
            for dtype in settings.dtypes]


def markdown(result: list[dict]) -> list[str]:
    lines = ["", "## torch.compile (`--compile`) vs eager, 1 clip of "
             f"{'×'.join(map(str, result[0]['clip']))}, ViT-L width, depth {result[0]['depth']}", "",
             "| dtype | eager s | compiled s | compiled/eager speed | first call s | compile cost s | "
             "break-even windows | max abs Δ |", "|---|---|---|---|---|---|---|---|"]
    for c in result:
        even = f"{c['break_even_windows']:.0f}" if c["break_even_windows"] is not None else "never"
        fell = " (fell back to eager)" if c["fell_back_to_eager"] else ""
        lines.append(f"| {c['dtype']}{fell} | {c['eager']['median_s']:.3f} | {c['compiled']['median_s']:.3f} | "
                     f"{c['compiled_vs_eager']:.2f}× | {c['first_call_s']:.1f} | {c['compile_cost_s']:.1f} | {even} | "
                     f"{c['max_abs_diff']:.1e} |")
    return lines


def targets(result: list[dict], machine: dict) -> list[dict]:
    out = []
    for c in result:
        if c["dtype"] == "float32":
            out.append({"target": "compiled features equal eager fp32 to ≤ 1e-4", "value": f"{c['max_abs_diff']:.1e}",
                        "met": c["max_abs_diff"] <= 1e-4 and not c["fell_back_to_eager"]})
    return out
