#!/usr/bin/env python
"""Probe training throughput: on stored features vs re-encoding every clip every epoch.

    python bench/probe.py                              # full-depth ViT-L (random), 64 px, 16 clips × 16 frames
    python bench/probe.py --model random:vit_giant_xformers --clips 8

The original evaluation runs the frozen encoder inside the training loop, so every epoch decodes
and encodes every clip again; `vjepa2_probe.py train` reads the features the extractors stored,
so the encoder runs once. Both variants here train the same probe (the released architecture:
depth 4, 16 heads, one query) with the same AdamW steps and batch size; only where the features
come from differs. The one-off extraction (sequential extractor, written to disk) is timed apart.
Prints a Markdown table and writes bench/probe.json. Random weights: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from src.probe import FeatureIndex, ProbeConfig, ViewDataset, build_probe, collate_views  # noqa: E402
from src.windows import VideoWindowDataset, collate_windows, plan_windows  # noqa: E402
from src.extract.seed import SequentialVJEPA2Extractor  # noqa: E402

WINDOW, NUM_CLASSES = 16, 4


def write_noise_video(path: Path, frames: int, height: int, width: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def train_epochs(probe, optimizer, batches, epochs: int) -> tuple[float, int]:
    """Seconds and clips for `epochs` passes; `batches()` yields (features [B, N, D], labels)."""
    clips, start = 0, time.perf_counter()
    for _ in range(epochs):
        for feats, labels in batches():
            loss = F.cross_entropy(probe(feats), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            clips += len(labels)
    return time.perf_counter() - start, clips


def main() -> int:
    from bench.common import machine_info, write_results

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="random:vit_large", help="encoder spec (random:<arch>[,depth=N])")
    p.add_argument("--img_size", type=int, default=64, help="crop size")
    p.add_argument("--clips", type=int, default=16, help="clips of 16 frames (one window each)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--output", default=str(REPO / "bench" / "probe.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    labels = [i % NUM_CLASSES for i in range(args.clips)]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        height = int(256 / 224 * args.img_size) + 1
        videos = [write_noise_video(tmp / f"clip_{i:03d}.mp4", WINDOW, height, height + 16, i) for i in range(args.clips)]
        extractor = SequentialVJEPA2Extractor(model_name=args.model, device="cpu", dtype="fp32", img_size=args.img_size,
                                              window=WINDOW, batch_size=args.batch_size, num_workers=0)
        encoder = extractor.encoder  # loaded before the clock starts
        start = time.perf_counter()
        for video in videos:
            extractor.process_video(video, tmp / "feats" / video.stem)
        extraction_s = time.perf_counter() - start

        config = ProbeConfig(embed_dim=encoder.embed_dim, num_classes=NUM_CLASSES)
        index = FeatureIndex([tmp / "feats"])
        views = [(index.sources[str(v)][0], label, i) for i, (v, label) in enumerate(zip(videos, labels))]

        def stored():
            loader = DataLoader(ViewDataset(views), batch_size=args.batch_size, shuffle=True, collate_fn=collate_views)
            for feats, y, _ in loader:
                yield feats, y

        windows = plan_windows(WINDOW, WINDOW)

        def reencoded():  # what the original evaluation does: decode + encode inside every epoch
            for s in range(0, args.clips, args.batch_size):
                clips = [VideoWindowDataset(v, list(range(WINDOW)), windows, encoder.transform)[0]
                         for v in videos[s:s + args.batch_size]]
                batch = collate_windows(clips)
                yield encoder.encode(batch["clips"]).float(), torch.tensor(labels[s:s + args.batch_size])

        results = {}
        for name, batches in (("stored features", stored), ("re-encoding every epoch", reencoded)):
            torch.manual_seed(0)
            probe = build_probe(config)
            optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-4, weight_decay=0.01)
            seconds, clips = train_epochs(probe, optimizer, batches, args.epochs)
            results[name] = {"seconds": round(seconds, 2), "clips": clips, "clips_per_s": round(clips / seconds, 3)}

    stored_rate = results["stored features"]["clips_per_s"]
    reencode_rate = results["re-encoding every epoch"]["clips_per_s"]
    tokens = encoder.grid(WINDOW)
    result = {
        "model": args.model, "depth": encoder.model.depth, "embed_dim": encoder.embed_dim, "img_size": args.img_size,
        "frames": WINDOW, "tokens": int(np.prod(tokens)), "clips": args.clips, "epochs": args.epochs,
        "batch_size": args.batch_size, "probe": {"depth": config.depth, "num_heads": config.num_heads},
        "extraction_s": round(extraction_s, 2), "variants": results,
        "speedup": round(stored_rate / reencode_rate, 2),
        "machine": machine_info(),
    }
    print(f"{args.model} (depth {encoder.model.depth}, width {encoder.embed_dim}), {args.img_size} px, "
          f"{WINDOW} frames = {result['tokens']} tokens; {args.clips} clips × {args.epochs} epochs, batch "
          f"{args.batch_size}; probe depth 4, 16 heads; CPU fp32, load average {result['machine']['load_average'][0]:.1f}\n")
    print("| variant | clips/s | s |\n|---|---:|---:|")
    for name, r in results.items():
        print(f"| probe training on {name} | {r['clips_per_s']:.3f} | {r['seconds']:.1f} |")
    print(f"| one-off extraction of the {args.clips} clips (sequential extractor, to disk) | "
          f"{args.clips / extraction_s:.3f} | {extraction_s:.1f} |")
    print(f"\nstored features: {result['speedup']}× the clips/s of re-encoding")
    write_results(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
