#!/usr/bin/env python
r"""V-JEPA 2 demo: one video through transformers and through our encoder, compared, then classified.

A V-JEPA 2.1 `--pt_model` runs through our encoder alone (transformers has no 2.1 model).

    python vjepa2_demo.py --video clip.mp4 --hf_model facebook/vjepa2-vitg-fpc64-384 \
        --pt_model vitg-384.pt --probe ssv2-vitg-384-64x2x3.pt

Both models get the same preprocessed clip (our transforms: short side int(256/224*crop),
centre crop, ImageNet normalisation). The probe classifies our encoder's features; the top 5
are a softmax over all classes.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from src import cli
from src.datasets.utils.video.transforms import make_eval_transform
from src.demo import (  # noqa: F401  (SAMPLE_VIDEO, read_clip: names this script offered)
    SAMPLE_VIDEO, find_video, hf_processor_difference, load_demo_probe, load_hf_model, probe_classes, read_clip,
)
from src.models.weights import load_encoder
from src.probe import load_class_names  # noqa: F401  (a name this script offered)

logger = logging.getLogger("vjepa2_demo")

HERE = Path(__file__).resolve().parent
DEFAULT_CLASSES = HERE / "data" / "ssv2_classes.json"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter, parents=[cli.video_parser()])
    p.add_argument("--hf_model", default="facebook/vjepa2-vitg-fpc64-384",
                   help="hub id or local directory, loaded with transformers.AutoModel ('none' to skip)")
    p.add_argument("--pt_model", default=None,
                   help="original .pt checkpoint or any model spec (random:<arch>, directory, hub id)")
    p.add_argument("--checkpoint_key", default=None,
                   help="entry of the .pt to load (default: 'encoder' for 2.0, 'ema_encoder'/'target_encoder' for 2.1)")
    p.add_argument("--num_heads", type=int, default=None,
                   help="heads of a --pt_model .pt whose shapes cannot tell (default: the released encoder's; 16 for vit_giant)")
    p.add_argument("--probe", default=None,
                   help="attentive probe file (e.g. ssv2-vitg-384-64x2x3.pt), or random:probe for random weights "
                        "(offline smoke runs: the encoder's width, one class per --classes entry)")
    p.add_argument("--video", default=None, help="video file (default: the kinetics-mini sample, fetched if reachable)")
    p.add_argument("--num_frames", type=int, default=64, help="frames fed to the models, every 2nd frame")
    p.add_argument("--img_size", type=int, default=None,
                   help="crop size (default: the HF config's, else the model's: 384 for 2.1 files, 256 for 2.0)")
    p.add_argument("--classes", default=None,
                   help="class names: JSON {index: name} or [names], or CSV id,name (default: those a probe of "
                        "vjepa2_probe.py records, else data/ssv2_classes.json; given with such a probe, they must "
                        "match its own)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--debug", action="store_true", help="full tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    device = cli.resolve_device(args.device)
    if args.hf_model.lower() == "none" and not args.pt_model:
        raise cli.UsageError("nothing to run: --hf_model none and no --pt_model (give at least one model)")
    classes, classes_from = probe_classes(args.probe, args.classes, DEFAULT_CLASSES) if args.probe else (None, None)
    video = find_video(args.video)

    if args.probe and not args.pt_model:
        raise cli.UsageError("--probe needs --pt_model (the probe classifies our encoder's features)")
    ours = probe = hf_model = None
    if args.pt_model:  # ours first: its generation decides whether transformers can be compared
        ours = load_encoder(args.pt_model, img_size=args.img_size, num_frames=args.num_frames,
                            checkpoint_key=args.checkpoint_key, device=device, num_heads=args.num_heads)
    if args.hf_model.lower() != "none":
        if ours is not None and ours.generation != "2.0":
            print(f"transformers has no V-JEPA {ours.generation} model: comparison with {args.hf_model} skipped "
                  "(pass --hf_model none to silence this)")
        else:
            hf_model = load_hf_model(args.hf_model, device)
    crop = args.img_size or (hf_model.config.crop_size if hf_model is not None
                             else ours.img_size if ours is not None else 256)
    if ours is not None:
        ours.img_size = crop  # nominal only (RoPE follows the input), but model_info reports it
    if args.probe:  # every check before any video is decoded or any model is run
        probe = load_demo_probe(args.probe, ours, classes, classes_from, device)

    frames = read_clip(video, args.num_frames, args.video_backend)
    clip = make_eval_transform(crop)(frames).unsqueeze(0).to(device)  # [1, C, T, H, W]
    print(f"Video: {video} ({frames.shape[0]} frames of {frames.shape[2]}x{frames.shape[1]}), crop {crop}")

    features = None
    if ours is not None:
        with torch.inference_mode():
            features = ours(clip)
        print(f"Ours features: {tuple(features.shape)}")
    if hf_model is not None:
        with torch.inference_mode():
            hf_features = hf_model.get_vision_features(clip.permute(0, 2, 1, 3, 4))
        print(f"HF features:   {tuple(hf_features.shape)}")
        if features is not None and features.shape == hf_features.shape:
            diff = (features.float() - hf_features.float()).abs()
            print(f"Sum |diff|: {diff.sum().item():.6g}   Max |diff|: {diff.max().item():.6g}")
            print(f"Close: {torch.allclose(features.float(), hf_features.float(), atol=1e-3, rtol=1e-3)}")
        elif features is not None:
            print(f"Close: False (shapes differ: {tuple(features.shape)} vs {tuple(hf_features.shape)})")
        difference = hf_processor_difference(frames, clip.cpu(), crop)
        if isinstance(difference, str):
            print(f"HF video processor: {difference}; preprocessing comparison skipped")
        else:
            print(f"HF video processor vs ours: mean |diff| {difference[0]:.4f}, max |diff| {difference[1]:.4f}")

    if probe is not None:
        with torch.inference_mode():
            probs = probe(features).softmax(dim=-1)[0]  # over all classes, then the top 5
        top = probs.topk(min(5, len(classes)))  # a probe of your own may have fewer than 5 classes
        print(f"Top {len(top.values)} classes (softmax over all {len(classes)}):")
        for rank, (p, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()), start=1):
            print(f"  {rank}. {classes[i]}  ({100 * p:.2f}%)")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main))
