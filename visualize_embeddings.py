#!/usr/bin/env python
r"""Pictures for feature files: per temporal token, a UMAP/PCA projection PNG and an overlay on its frame.

    python visualize_embeddings.py outputs/example/features/window_*.pt --output_dir pics --method umap
    python visualize_embeddings.py feats/features_shard000of001_chunk00000.pt --output_dir pics \
        --image_root images/ --method pca

Reads window files (.pt, .safetensors) written by vjepa2_sequential_extractor.py and image chunk
files written by vjepa2_extractor.py. A chunk's keys are image paths relative to that run's --image_dir: pass
the same folder as --image_root for the overlays (or --no_overlay for projections only). One
projection is fitted on a sample of all given files, so colours agree across them. Overlays sit
exactly on the region the features cover (the covered box in each file's metadata: the centre crop,
or the whole frame for `--spatial full` features, on any grid), with `--alpha` opacity. The fitted
projection is saved in OUTPUT_DIR/projection/ and reused by a rerun on the same files with the same
settings (`--overwrite` refits). Pictures are named after the window file or image, so inputs with the same
names (windows of two runs) write the same files: the later input's pictures replace the earlier.

Exit codes: 0 done, 1 internal error, 2 bad arguments (nothing drawn), 3 finished but some items
had no source frames for their overlay, 4 a picture could not be written.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from src import cli, pages
from src.features import outputs_written
from src.visualize import (  # noqa: F401  (FEATURE_SUFFIXES: a name this script offered)
    CHUNK_SOURCE_HINT, FEATURE_SUFFIXES, check_chunk_sources, draw_pictures, expand_inputs, fit_projections,
    scan_inputs, warn_clashes,
)

logger = logging.getLogger("visualize_embeddings")

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter)
    p.add_argument("features", nargs="+", help="feature files, or folders holding them")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--method", choices=["umap", "pca"], default="umap")
    p.add_argument("--n_neighbors", type=int, default=15)
    p.add_argument("--min_dist", type=float, default=0.1)
    p.add_argument("--metric", default="cosine")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    p.add_argument("--no_overlay", action="store_true", help="projection PNGs only")
    p.add_argument("--annotate", action="store_true", help="frame number / time on overlays")
    p.add_argument("--image_root", default=None,
                   help="for image chunks: the folder given to vjepa2_extractor.py --image_dir")
    p.add_argument("--umap_sample", type=int, default=20000, help="tokens sampled to fit the projection")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true",
                   help="refit the projection even if OUTPUT_DIR/projection holds one fitted on the same files "
                        "with the same settings (reused by default)")
    p.add_argument("--debug", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    if not 0.0 <= args.alpha <= 1.0:
        raise cli.UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    image_root = Path(args.image_root) if args.image_root else None
    if image_root is not None and not image_root.is_dir():
        raise cli.UsageError(f"--image_root {image_root}: no such folder (give the folder given to "
                             "vjepa2_extractor.py --image_dir)")
    files = expand_inputs(args.features)
    out = cli.check_output_dir(args.output_dir)  # before the fit, which takes minutes for UMAP
    try:  # every feature file is read here: a bad one is reported before any picture is drawn
        scan = scan_inputs(files, image_root, check_sources=not args.no_overlay)  # metadata only
        warn_clashes(scan, out)
        check_chunk_sources(scan, image_root)
        with outputs_written(out):
            projection = fit_projections(files, [args.method], args.umap_sample, args.seed, args.n_neighbors,
                                         args.min_dist, args.metric, save_dir=out / "projection",
                                         overwrite=args.overwrite)[args.method]
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None
    drawn = draw_pictures(files, projection, out, args.method, args.alpha, image_root,
                          overlays=not args.no_overlay, annotate_frames=args.annotate)
    written, failed, chunk_missing = drawn.written, drawn.failed, drawn.chunk_missing
    if chunk_missing and image_root is None:
        logger.warning("%d image-chunk source image(s) not found relative to the current folder: %s",
                       chunk_missing, CHUNK_SOURCE_HINT)
    with outputs_written(out):  # out/index.html shows the pictures and links every file
        pages.write_index(out, f"{args.method} pictures of {len(files)} feature file(s)", vars(args))
    print(f"wrote {len(written)} PNGs to {out}" + (f"; {failed} items without source frames" if failed else ""))
    return cli.EXIT_PARTIAL if failed else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main))
