#!/usr/bin/env python
"""Pictures for feature files: per temporal token, a UMAP/PCA projection PNG and an overlay on its frame.

    python visualize_embeddings.py outputs/example/features/window_*.pt --output_dir pics --method umap
    python visualize_embeddings.py feats/features_shard000of001_chunk00000.pt --image_root images/ --method pca

Reads window files (.pt, .safetensors) and image chunk files. One projection is fitted on a
sample of all given files, so colours agree across them. Overlays sit exactly on the centre-crop
region the features cover (the crop box in each file's metadata), with `--alpha` opacity.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from src import cli
from src.visualize import FrameSource, fit_projections, iter_feature_items, token_grids, write_token_pictures

logger = logging.getLogger("visualize_embeddings")

FEATURE_SUFFIXES = (".pt", ".safetensors")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("features", nargs="+", help="feature files, or folders holding them")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--method", choices=["umap", "pca"], default="umap")
    p.add_argument("--n_neighbors", type=int, default=15)
    p.add_argument("--min_dist", type=float, default=0.1)
    p.add_argument("--metric", default="cosine")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    p.add_argument("--no_overlay", action="store_true", help="projection PNGs only")
    p.add_argument("--annotate", action="store_true", help="frame number / time on overlays")
    p.add_argument("--image_root", default=None, help="folder that image-chunk source paths are relative to")
    p.add_argument("--umap_sample", type=int, default=20000, help="tokens sampled to fit the projection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--debug", action="store_true")
    return p


def expand_inputs(entries: list[str]) -> list[Path]:
    files = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in FEATURE_SUFFIXES and not p.name.startswith("."))
            if not found:
                raise cli.UsageError(f"{path}: no .pt or .safetensors feature files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such feature file or folder")
    return files


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    if not 0.0 <= args.alpha <= 1.0:
        raise cli.UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    files = expand_inputs(args.features)
    out = Path(args.output_dir)
    try:  # every feature file is read once here: a bad one is reported before any picture is drawn
        projection = fit_projections(files, [args.method], args.umap_sample, args.seed, args.n_neighbors,
                                     args.min_dist, args.metric)[args.method]
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None
    source = FrameSource(Path(args.image_root) if args.image_root else None)
    written, failed = 0, 0
    for item in iter_feature_items(files):
        grids = token_grids(item, projection)
        ids, frames = [], []
        if not args.no_overlay:
            try:
                ids, frames = source.frames(item)
            except (ValueError, OSError) as exc:  # a moved source: still draw the projection
                logger.error("%s: no overlay (%s)", item.name, exc)
                failed += 1
        written += len(write_token_pictures(item, grids, ids, frames, out, args.method, args.alpha,
                                            with_overlay=bool(frames), annotate_frames=args.annotate))
    source.close()
    print(f"wrote {written} PNGs to {out}" + (f"; {failed} items without source frames" if failed else ""))
    return cli.EXIT_PARTIAL if failed else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))
