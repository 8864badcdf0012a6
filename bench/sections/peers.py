"""Our CPU encoder against what a CPU user would pick instead, in one process, interleaved.

    python bench/run.py --only peers [--quick] [--depth 4] [--peer_threads 2]

Contestants, on the same random weights, the same clip and the same thread count:
  ours          the encoder as the scripts run it (`ClipEncoder.encode`, fp32 compute)
  transformers  transformers.VJEPA2Model (weights through our `encoder_to_hf`)
  onnxruntime   our encoder exported with torch.onnx.export (opset 18), CPUExecutionProvider
  openvino      the same ONNX file compiled by OpenVINO for the CPU, f32 inference precision
                (its default on CPUs with AMX / AVX-512 BF16 is bf16, which would not be exact)
  matmul        the encoder's Linear GEMMs alone (torch.mm at its shapes, outputs preallocated): the
                machine's matmul rate, against which our GFLOP/s (all FLOPs) is given as a share
Every contestant's output is checked against ours in fp32 (max |Δ| ≤ 1e-4) before it is timed;
an inexact one is reported, not raced. Wall times are medians of interleaved runs (A B C D A B
C D …), so load from other processes hits every contestant alike; process CPU time is recorded
too. Missing optional packages (onnxruntime, openvino) are reported as such.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.sections import Settings
from src.inference import ClipEncoder
from src.machine import cpu_flags, cpu_name
from src.models.flops import count_forward_flops
from src.models.kernel_choice import set_cpu_linear
from src.models.weights import encoder_to_hf, hf_config_dict

TOLERANCE = 1e-4


def transformers_contestant(encoder) -> callable:
    from transformers import VJEPA2Config, VJEPA2Model

    model = VJEPA2Model(VJEPA2Config(**{**hf_config_dict(encoder), "pred_num_hidden_layers": 1})).eval()
    state = model.state_dict()
    state.update(encoder_to_hf(encoder.state_dict()))
    model.load_state_dict(state, strict=True)

    @torch.inference_mode()
    def run(x: torch.Tensor) -> np.ndarray:
        return model(pixel_values_videos=x.transpose(1, 2), skip_predictor=True).last_hidden_state.numpy()
    return run


def export_onnx(encoder, x: torch.Tensor, path: Path) -> Path:
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(encoder, (x,), str(path), opset_version=18, dynamo=True, input_names=["clip"],
                          output_names=["tokens"], verbose=False)
    return path


def onnxruntime_contestant(path: Path, threads: int) -> callable:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def openvino_contestant(path: Path, threads: int) -> callable:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": "f32",
                                                          "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x.numpy()})[compiled.output(0)].copy()


def matmul_contestant(model, frames: int, size: int) -> tuple[callable, float]:
    """The encoder's Linear GEMMs alone (patch embedding as a matmul; per block qkv, projection,
    MLP in and out) as plain torch.mm into preallocated outputs, and their FLOPs: the machine's
    matmul rate at this model's shapes, the ceiling our GFLOP/s (all FLOPs, attention included) is
    given as a share of. Attention is left out: as two bmm calls through a materialised
    [heads, N, N] score tensor it ran at half the rate of the fused kernel we use, which made the
    "ceiling" lower than our own rate and moved with the allocator (1.11 to 1.48 s in two races)."""
    tp, hp, wp = model.patch_grid(frames, size, size)
    n, d = tp * hp * wp, model.embed_dim
    hidden = int(d * model.mlp_ratio)
    patch_in = 3 * model.tubelet_size * model.patch_size ** 2
    g = torch.Generator().manual_seed(0)
    inputs = {"patch": torch.randn(n, patch_in, generator=g), "tokens": torch.randn(n, d, generator=g),
              "hidden": torch.randn(n, hidden, generator=g)}
    gemms = [("patch", patch_in, d)] + model.depth * [("tokens", d, 3 * d), ("tokens", d, d), ("tokens", d, hidden),
                                                      ("hidden", hidden, d)]
    weights = {(k, m): torch.randn(k, m, generator=g) for _, k, m in gemms}
    outputs = {m: torch.empty(n, m) for _, _, m in gemms}
    flops = sum(2.0 * n * k * m for _, k, m in gemms)

    @torch.inference_mode()
    def run(_x):
        for name, k, m in gemms:
            torch.mm(inputs[name], weights[k, m], out=outputs[m])
    return run, flops


def race(quick: bool = True, threads: int = 2, depth: int = 4, width_arch: str = "vit_large",
         reps: int | None = None) -> dict:
    torch.set_num_threads(threads)
    reps = reps or (3 if quick else 6)
    frames, size = 16, 256
    ours = ClipEncoder(f"random:{width_arch},depth={depth}", device="cpu", dtype="fp32")
    model = ours.model
    torch.manual_seed(1)
    x = torch.randn(1, 3, frames, size, size)
    with torch.inference_mode():
        reference = model(x).float().numpy()
    ours.encode(x)  # the first batch makes this machine's CPU linear choice (timed once, then cached)
    chosen = model.blocks[0].attn.cpu_fused
    other = "plain" if chosen else "fused"

    def ours_other_path(clip):  # what the choice saved: the same encoder on the path it did not pick
        set_cpu_linear(model, not chosen)
        try:
            return ours.encode(clip)
        finally:
            set_cpu_linear(model, chosen)

    matmul, matmul_flops = matmul_contestant(model, frames, size)
    contestants = {"ours": lambda clip: ours.encode(clip), f"ours, {other} linears": ours_other_path,
                   "matmul": matmul}
    result = {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "torch": torch.__version__, "threads": threads,
              "model": f"{width_arch} width, depth {depth}, {frames}x{size}x{size}, fp32",
              "gflop_per_clip": count_forward_flops(model, frames, size, size) / 1e9, "contestants": {}}
    result["ours_cpu_linear"] = {k: v for k, v in (ours.cpu_linear or {}).items() if k not in ("machine", "widths")}
    result["contestants"]["ours"] = {"max_abs_diff": 0.0}
    with torch.inference_mode():  # in fp32 (encode returns fp16)
        set_cpu_linear(model, not chosen)
        other_features = model(x)
        set_cpu_linear(model, chosen)
        other_diff = (other_features - model(x)).abs().max()
    result["contestants"][f"ours, {other} linears"] = {"max_abs_diff": float(other_diff)}
    result["contestants"]["matmul"] = {"max_abs_diff": float("nan")}
    builders = {"transformers": lambda: transformers_contestant(model)}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None
        try:
            onnx_path = export_onnx(model, x, Path(tmp) / "encoder.onnx")
        except Exception as exc:  # the runtimes are optional; an export failure is a result
            result["onnx_export_error"] = f"{type(exc).__name__}: {exc}"[:300]
        if onnx_path:
            builders["onnxruntime"] = lambda: onnxruntime_contestant(onnx_path, threads)
            builders["openvino"] = lambda: openvino_contestant(onnx_path, threads)
        for name, build in builders.items():
            try:
                fn = build()
                diff = float(np.abs(np.asarray(fn(x), dtype=np.float32) - reference).max())
            except ImportError as exc:
                result["contestants"][name] = {"skipped": f"not installed ({exc.name})"}
                continue
            result["contestants"][name] = {"max_abs_diff": diff}
            if diff <= TOLERANCE:
                contestants[name] = fn
            else:
                result["contestants"][name]["skipped"] = f"inexact: max |Δ| {diff:.2e} > {TOLERANCE}"
        walls = {name: [] for name in contestants}
        cpus = {name: [] for name in contestants}
        for fn in contestants.values():  # warm-up: first-call allocations, OpenVINO's kernel choice
            fn(x)
        names = list(contestants)
        for rep in range(reps):
            # each rep starts with the next contestant: whoever follows a runtime whose worker threads
            # still spin for a moment after returning is not always the same one
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                fn = contestants[name]
                wall, cpu = time.perf_counter(), time.process_time()
                fn(x)
                walls[name].append(time.perf_counter() - wall)
                cpus[name].append(time.process_time() - cpu)
    for name in contestants:
        entry = result["contestants"][name]
        entry.update(wall_median_s=statistics.median(walls[name]), wall_min_s=min(walls[name]),
                     cpu_median_s=statistics.median(cpus[name]), runs=reps)
        flops = matmul_flops if name == "matmul" else result["gflop_per_clip"] * 1e9
        entry["gflop_s"] = flops / 1e9 / entry["wall_median_s"]
    ours_s = result["contestants"]["ours"]["wall_median_s"]
    for name in contestants:
        if name != "matmul":  # the matmul contestant does other work: a rate, not a race
            result["contestants"][name]["ours_speedup"] = result["contestants"][name]["wall_median_s"] / ours_s
    result["ours_share_of_matmul_rate"] = (result["contestants"]["ours"]["gflop_s"]
                                           / result["contestants"]["matmul"]["gflop_s"])
    raced = {n: e for n, e in result["contestants"].items() if not n.startswith(("ours", "matmul"))
             and "wall_median_s" in e}
    if raced:
        fastest = min(raced, key=lambda n: raced[n]["wall_median_s"])
        result["fastest_peer"] = fastest
        result["ours_vs_fastest_peer"] = raced[fastest]["wall_median_s"] / ours_s
    return result


def markdown(result: dict) -> list[str]:
    lines = ["", f"## Our encoder against the peers a CPU user would pick ({result['threads']} threads)", "",
             f"CPU: {result['cpu']} ({', '.join(result['cpu_flags'])}), {result['threads']} threads, torch "
             f"{result['torch']}; {result['model']}; our CPU linears: "
             f"{'fused' if result['ours_cpu_linear'].get('fused') else 'plain'} "
             f"({result['ours_cpu_linear'].get('source', 'no choice')})", "",
             "| contestant | max abs Δ vs ours | wall median (s) | CPU time (s) | GFLOP/s | ours is … × faster |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, e in result["contestants"].items():
        if "wall_median_s" in e:
            speedup = f"{e['ours_speedup']:.2f}" if "ours_speedup" in e else "(a rate: its GEMMs alone)"
            lines.append(f"| {name} | {e['max_abs_diff']:.1e} | {e['wall_median_s']:.3f} | {e['cpu_median_s']:.3f} "
                         f"| {e['gflop_s']:.0f} | {speedup} |")
        else:
            lines.append(f"| {name} | {e.get('max_abs_diff', float('nan')):.1e} | {e['skipped']} | | | |")
    lines.append("")
    lines.append(f"Ours at {100 * result['ours_share_of_matmul_rate']:.0f} % of the matmul rate at its shapes"
                 + (f"; {result['ours_vs_fastest_peer']:.2f}× the fastest peer ({result['fastest_peer']})"
                    if "fastest_peer" in result else ""))
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("peers")
    group.add_argument("--peer_threads", type=int, default=None,
                       help="threads for every contestant (default: torch's current count)")


def run(settings: Settings, results: dict) -> dict:
    threads = settings.args.peer_threads or torch.get_num_threads()
    return race(settings.quick, threads, settings.depth, reps=settings.reps)


def targets(result: dict, machine: dict) -> list[dict]:
    rows = [{"target": "our encoder ≥ 85 % of the matmul rate at its shapes (wall, interleaved)",
             "value": f"{100 * result['ours_share_of_matmul_rate']:.0f} %",
             "met": result["ours_share_of_matmul_rate"] >= 0.85}]
    if "fastest_peer" in result:
        rows.append({"target": "our encoder ≥ 1.0× the fastest of transformers, ONNX Runtime, OpenVINO",
                     "value": f"{result['ours_vs_fastest_peer']:.2f}× ({result['fastest_peer']})",
                     "met": result["ours_vs_fastest_peer"] >= 1.0})
    return rows
