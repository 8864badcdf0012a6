#!/usr/bin/env python
"""The encoder optimisations one at a time: what each one is worth on this machine.

    python bench/ablation.py                    # ViT-L width, depth 2, 16×256×256
    python bench/ablation.py --width 1408 --compile

Variants are cumulative, starting from the straightforward implementation (the code before
the performance work, reproduced here by monkeypatching):
  0 baseline        transposed patch-embedding output, RoPE by stack/neg/cat, nn.Linear
  1 + contiguous    patch-embedding output made contiguous once (no LayerNorm input copies)
  2 + rope          RoPE written into one preallocated tensor (no stack/neg/cat temporaries)
  3 + fused linear  oneDNN linears with bias / GELU / residual add fused (CPU fp32, no autograd)
  4 + compile       src.models.compile.CompiledForward (what --compile runs; only with --compile;
                    compile time reported)

Two clocks: wall time with the default thread count (what a user sees; noisy on a shared
machine) and CPU time of one thread with `torch.set_num_threads(1)` (`time.thread_time`,
insensitive to other processes: the robust way to compare variants on a busy machine).
Writes bench/ablation.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import machine_info, time_calls, write_results  # noqa: E402
from src.models import fused_cpu, layers, rope  # noqa: E402
from src.models import vision_transformer as vt  # noqa: E402
from src.models.compile import CompiledForward  # noqa: E402
from src.models.flops import count_forward_flops  # noqa: E402


# ----------------------------------------------------------------------------- the "before" code
def reference_apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as first written: rotated copy by stack(-odd, even), products, cat with the rest."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r].to(torch.promote_types(x.dtype, cos.dtype)), x[..., r:]
    out = x_rot * cos + rope.rotate_adjacent_pairs(x_rot) * sin
    return torch.cat([out.to(x.dtype), x_pass], dim=-1)


def reference_patch_embed_forward(self, x: torch.Tensor) -> torch.Tensor:
    """Patch embedding as first written: a transposed (channel-major) view, no copy."""
    return self.proj(x).flatten(2).transpose(1, 2)


_PATCH_EMBED_FORWARD = layers.PatchEmbed3D.forward
_APPLY_ROPE = layers.apply_rope  # the name Attention calls
VARIANTS = ["0 baseline", "1 + contiguous", "2 + rope", "3 + fused linear"]


@contextmanager
def variant(level: int):
    """Code paths of cumulative variant `level` (0..3) for the duration of the block."""
    saved = (layers.PatchEmbed3D.forward, layers.apply_rope, fused_cpu.FUSED_CPU_LINEAR)
    layers.PatchEmbed3D.forward = _PATCH_EMBED_FORWARD if level >= 1 else reference_patch_embed_forward
    layers.apply_rope = _APPLY_ROPE if level >= 2 else reference_apply_rope
    fused_cpu.FUSED_CPU_LINEAR = level >= 3
    try:
        yield
    finally:
        layers.PatchEmbed3D.forward, layers.apply_rope, fused_cpu.FUSED_CPU_LINEAR = saved


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, choices=[1024, 1408], default=1024)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (variant 4)")
    p.add_argument("--output", default=str(REPO / "bench" / "ablation.json"))
    args = p.parse_args()

    torch.manual_seed(0)
    arch = "vit_large" if args.width == 1024 else "vit_giant_xformers"
    model = vt.FACTORIES[arch](img_size=args.size, num_frames=args.frames, depth=args.depth).eval()
    x = torch.randn(1, 3, args.frames, args.size, args.size)
    flops = count_forward_flops(model, args.frames, args.size, args.size)

    def run(level):
        def fn():
            with variant(level), torch.inference_mode():
                return model(x)
        return fn

    fns = {name: run(i) for i, name in enumerate(VARIANTS)}
    compile_s = None
    if args.compile:
        compiled = CompiledForward(model)  # what --compile runs: one graph, RoPE tables passed in
        start = time.perf_counter()
        with variant(3), torch.inference_mode():
            compiled(x)
        compile_s = time.perf_counter() - start

        def run_compiled():
            with variant(3), torch.inference_mode():
                return compiled(x)
        fns["4 + compile"] = run_compiled

    with torch.inference_mode():
        ref = run(0)()
        diffs = {k: (fn() - ref).abs().max().item() for k, fn in fns.items()}

    threads = torch.get_num_threads()
    wall = time_calls(fns, args.reps)  # after one warm-up call each (and compilation)
    torch.set_num_threads(1)
    cpu1 = time_calls(fns, args.reps, clock=time.thread_time)
    torch.set_num_threads(threads)

    result = {"arch": arch, "width": args.width, "depth": args.depth, "input": [args.frames, args.size, args.size],
              "gflops_per_clip": flops / 1e9, "threads": threads, "torch": torch.__version__, "machine": machine_info(),
              "compile_first_call_s": compile_s, "variants": {}}
    base_wall, base_cpu = statistics.median(wall[VARIANTS[0]]), statistics.median(cpu1[VARIANTS[0]])
    print(f"\n{arch} width {args.width}, depth {args.depth}, {args.frames}×{args.size}×{args.size}, fp32 CPU\n")
    base_cpu_min = min(cpu1[VARIANTS[0]])
    print(f"| variant | wall s ({threads} threads, median / min) | GFLOP/s | vs baseline | "
          "1-thread CPU s (median / min) | vs baseline (median / min) | max abs Δ vs baseline |\n|---|---|---|---|---|---|---|")
    for k in fns:
        w, c = statistics.median(wall[k]), statistics.median(cpu1[k])
        result["variants"][k] = {"wall_median_s": w, "wall_min_s": min(wall[k]), "gflop_per_s": flops / w / 1e9,
                                 "cpu1_median_s": c, "cpu1_min_s": min(cpu1[k]), "speedup_wall": base_wall / w,
                                 "speedup_cpu1": base_cpu / c, "speedup_cpu1_min": base_cpu_min / min(cpu1[k]),
                                 "max_abs_diff": diffs[k]}
        print(f"| {k} | {w:.3f} / {min(wall[k]):.3f} | {flops / w / 1e9:.0f} | {base_wall / w:.2f}× | "
              f"{c:.3f} / {min(cpu1[k]):.3f} | {base_cpu / c:.2f}× / {base_cpu_min / min(cpu1[k]):.2f}× | {diffs[k]:.1e} |")
    if compile_s is not None:
        print(f"\ntorch.compile first call (compilation + one forward): {compile_s:.1f} s")
    write_results(args.output, result)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
