#!/usr/bin/env python
r"""Pictures for feature files: per temporal token, a UMAP/PCA projection PNG and an overlay on its frame.

    python visualize_embeddings.py outputs/example/features/window_*.pt --output_dir pics --method umap
    python visualize_embeddings.py feats/features_shard000of001_chunk00000.pt --output_dir pics \
        --image_root images/ --method pca

Reads window files (.pt, .safetensors) from vjepa2_sequential_extractor.py and image chunk files
from vjepa2_extractor.py. A chunk's keys are image paths relative to that run's --image_dir: pass
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
import time
from pathlib import Path

from tqdm import tqdm

from src import cli, pages
from src.features import outputs_written
from src.visualize import (
    FrameSource, InputScan, chunk_source_path, fit_projections, iter_feature_items, scan_inputs, token_grids,
    write_token_pictures,
)

logger = logging.getLogger("visualize_embeddings")

FEATURE_SUFFIXES = (".pt", ".safetensors")


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
    unique, seen = [], set()
    for path in files:  # a file given twice (itself and its folder) would be drawn twice, onto the same files
        key = path.resolve()
        if key in seen:
            logger.warning("%s: given more than once, read once", path)
            continue
        seen.add(key)
        unique.append(path)
    return unique


HINT = "pass --image_root <the folder given to vjepa2_extractor.py --image_dir>, or --no_overlay"


def check_chunk_sources(scan: InputScan, image_root: Path | None) -> None:
    """Image chunks none of whose source images can be found: the option is missing or wrong, not
    the images (one line before the fit, instead of one error per image after it)."""
    if scan.chunk_items == 0 or scan.chunk_found:
        return
    chunk, missing = scan.first_missing
    if image_root is None:
        raise cli.UsageError(f"{chunk}: source images of this image chunk not found relative to the current "
                             f"folder (e.g. {missing}); {HINT}")
    raise cli.UsageError(f"{chunk}: source images of this image chunk not found under --image_root {image_root} "
                         f"(e.g. {missing}); {HINT}")


def warn_clashes(scan: InputScan, out: Path, shown: int = 3) -> None:
    """Once per pair of inputs whose items have the same names, so write the same picture files (the
    first few pairs: windows of two runs clash file by file)."""
    pairs = list(scan.clashes.items())
    for (earlier, later), names in pairs[:shown]:
        both = f"{earlier} and {later}" if earlier != later else f"{earlier}"
        logger.warning("%s: %d item(s) with the same picture names (e.g. %s) write the same files in %s; "
                       "the pictures of the later input replace the earlier", both, len(names), names[0], out)
    if len(pairs) > shown:
        logger.warning("... and %d more pairs of inputs that write the same picture files",
                       len(pairs) - shown)


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
    started, transform_s = time.perf_counter(), 0.0
    source = FrameSource(image_root)
    written: set[Path] = set()  # distinct files: inputs with the same item names write the same ones
    failed, chunk_missing = 0, 0
    for item in tqdm(iter_feature_items(files), unit="item", desc="pictures", disable=None):
        start = time.perf_counter()
        grids = token_grids(item, projection)
        transform_s += time.perf_counter() - start
        ids, frames = [], []
        if not args.no_overlay:
            try:
                ids, frames = source.frames(item)
            except (ValueError, OSError) as exc:  # a moved source: still draw the projection
                logger.error("%s: no overlay (%s)", item.name, exc)
                failed += 1
                if isinstance(exc, FileNotFoundError) and chunk_source_path(item.metadata, None) is not None:
                    chunk_missing += 1
        with outputs_written(out):
            written.update(write_token_pictures(item, grids, ids, frames, out, args.method, args.alpha,
                                                with_overlay=bool(frames), annotate_frames=args.annotate))
    source.close()
    logger.info("pictures drawn in %.1f s (%.1f s of it projecting tokens to colours)",
                time.perf_counter() - started, transform_s)
    if chunk_missing and image_root is None:
        logger.warning("%d image-chunk source image(s) not found relative to the current folder: %s",
                       chunk_missing, HINT)
    with outputs_written(out):  # issue 21: out/index.html shows the pictures and links every file
        pages.write_index(out, f"{args.method} pictures of {len(files)} feature file(s)", vars(args))
    print(f"wrote {len(written)} PNGs to {out}" + (f"; {failed} items without source frames" if failed else ""))
    return cli.EXIT_PARTIAL if failed else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))
