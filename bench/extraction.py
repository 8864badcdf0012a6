#!/usr/bin/env python
"""Extraction throughput: naive serial loop vs our extractor vs the forward pass alone.

    python bench/extraction.py                 # ViT-L width, depth 2, 256 px, 8 windows of 16 frames
    python bench/extraction.py --depth 24      # the full ViT-L (slow on a CPU)

Prints a Markdown table and writes bench/extraction.json. The frames are the shipped example
frames (640×360 JPEG) cycled into a temporary folder of `--windows`·16 frames, so decoding
costs what real frames cost. Random weights: the speed of a model does not depend on them.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import make_frames  # noqa: E402
from src.frames import load_image  # noqa: E402
from src.inference import ClipEncoder  # noqa: E402
from src.extract.seed import SequentialVJEPA2Extractor  # noqa: E402

WINDOW = 16


def naive_loop(encoder: ClipEncoder, frames: list[Path], out: Path) -> float:
    """Load → preprocess → forward → save, one window at a time, nothing overlapped."""
    start = time.perf_counter()
    for w in range(len(frames) // WINDOW):
        clip = torch.stack([torch.from_numpy(load_image(p)) for p in frames[w * WINDOW:(w + 1) * WINDOW]]).numpy()
        x = encoder.preprocess(clip).unsqueeze(0)
        feats = encoder.encode(x)[0]
        torch.save({"features": feats}, out / f"naive_{w:05d}.pt")
    return time.perf_counter() - start


def forward_only(encoder: ClipEncoder, windows: int, batch_size: int) -> float:
    x = torch.randn(batch_size, 3, WINDOW, encoder.crop, encoder.crop)
    start = time.perf_counter()
    for _ in range(windows // batch_size):
        encoder.encode(x)
    return time.perf_counter() - start


def image_rates(model: str, img_size: int, images: list[Path], batch_size: int) -> dict:
    from src.extract.seed import VJEPA2Extractor

    rates = {}
    for frames in (2, 16):
        extractor = VJEPA2Extractor(model_name=model, device="cpu", image_frames=frames, img_size=img_size)
        extractor.extract_batch(images[:batch_size])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            extractor.extract_batch(images[i:i + batch_size])
        rates[frames] = len(images) / (time.perf_counter() - start)
    return rates


def main() -> int:
    from bench.common import machine_info, write_results

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", type=int, default=2, help="blocks of the ViT-L-wide random model")
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=2)
    p.add_argument("--num_workers", type=int, default=None)
    p.add_argument("--images", type=int, default=16, help="images for the image_frames 2 vs 16 comparison")
    p.add_argument("--output", default=str(REPO / "bench" / "extraction.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    model = f"random:vit_large,depth={args.depth}"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "frames").mkdir()
        frames = make_frames(tmp / "frames", args.windows * WINDOW)
        encoder = ClipEncoder(model, device="cpu", img_size=args.img_size)
        encoder.encode(torch.randn(1, 3, WINDOW, encoder.crop, encoder.crop))  # warm-up
        t_forward = forward_only(encoder, args.windows, args.batch_size)
        (tmp / "naive").mkdir()
        t_naive = naive_loop(encoder, frames, tmp / "naive")
        extractor = SequentialVJEPA2Extractor(model, device="cpu", img_size=args.img_size, batch_size=args.batch_size,
                                              num_workers=args.num_workers)
        start = time.perf_counter()
        summary = extractor.process_frame_directory(tmp / "frames", tmp / "ours")
        t_ours = time.perf_counter() - start
        assert summary["ok"] == args.windows, summary
        rates = image_rates(model, args.img_size, frames[: args.images], batch_size=4)

    n = args.windows
    rows = [
        ("naive serial loop (load → preprocess → forward → save)", n / t_naive),
        (f"our extractor (batch {args.batch_size}, {extractor.num_workers} workers)", n / t_ours),
        (f"forward pass alone (batch {args.batch_size})", n / t_forward),
    ]
    result = {
        "model": model, "img_size": args.img_size, "window": WINDOW, "windows": n,
        "windows_per_s": {"naive": n / t_naive, "extractor": n / t_ours, "forward_only": n / t_forward},
        "extractor_vs_forward": t_forward / t_ours, "extractor_vs_naive": t_naive / t_ours,
        "images_per_s": {"image_frames_2": rates[2], "image_frames_16": rates[16]},
        "image_frames_2_vs_16": rates[2] / rates[16],
        "machine": machine_info(),
    }
    print(f"\nmodel {model}, {args.img_size} px, {n} windows of {WINDOW} frames, CPU fp32\n")
    print("| variant | windows/s |\n|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:.3f} |")
    print(f"\nextractor / forward-only: {result['extractor_vs_forward']:.2f}×; "
          f"extractor / naive: {result['extractor_vs_naive']:.2f}×")
    print("\n| images | images/s |\n|---|---|")
    print(f"| image_frames=2 | {rates[2]:.2f} |\n| image_frames=16 | {rates[16]:.2f} |")
    print(f"\nimage_frames 2 vs 16: {result['image_frames_2_vs_16']:.1f}×")
    write_results(args.output, result)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
