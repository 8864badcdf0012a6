#!/usr/bin/env python
r"""V-JEPA 2 / 2.1 features for a folder of still images, written as chunk files.

    python vjepa2_extractor.py --image_dir images/ --output_dir features/ \
        --model facebook/vjepa2-vitg-fpc64-384 --image_frames 16 --batch_size 8

A 2.1 model encodes each image as one frame through its image path (``--image_frames 1``,
the default for 2.1: one temporal token). A 2.0 model is a video encoder only: each image is
repeated along time to ``--image_frames`` frames (16 → 8 temporal tokens, 2 → 1, the fast
mode; 2.1 models take this too). Features are ``[tokens, D]`` fp16, of the centre crop or, with
``--spatial full``, of the whole image (its own non-square grid; images are batched by grid).
The sorted image list (of this shard) is cut into groups of
``--chunk_size``; group k is written atomically to
``features_shard{i:03d}of{N:03d}_chunk{k:05d}.pt`` as ``{relative_path: {"features",
"metadata"}}``. A rerun skips complete chunks (resume after a kill), and
``manifest.jsonl`` records every input as ok / skipped / failed.

Exit codes: 0 done, 1 internal error, 2 bad arguments, 3 finished but some images failed,
4 an output could not be written (disk full, permissions; finished chunks are intact, rerun to resume).
"""
from __future__ import annotations

import argparse
import logging
import sys

from src import cli, embeddings_table, frames, sharding
from src.extract import layout
from src.extract.image_run import ExtractionSummary, extract_directory, open_table, split_chunks  # noqa: F401
from src.extract.images import (  # noqa: F401  (re-exported: the seed's and the tests' names)
    ImageDataset, ImageExtractor, check_image_frames, encode_frames, list_images, resolve_image_frames,
)
from src.extract.layout import CHUNK_GLOB, chunk_name  # noqa: F401
from src.extract.pooling import AGGREGATION_METHODS, aggregate_features  # noqa: F401
from src.extract.seed import VJEPA2Extractor  # noqa: F401
from src.options import EncoderOptions
from src.windows import default_num_workers

logger = logging.getLogger("vjepa2_extractor")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=cli.HelpFormatter,
                                parents=[cli.common_parser(), cli.spatial_parser()])
    g = p.add_argument_group("inputs and outputs")
    g.add_argument("--image_dir", required=True, help="folder of images")
    g.add_argument("--output_dir", required=True, help="folder for chunk files, manifest.jsonl")
    g.add_argument("--pattern", action="append", default=None, metavar="GLOB",
                   help="file-name glob, case-insensitive, repeatable (default: "
                        + " ".join(frames.DEFAULT_IMAGE_PATTERNS) + "); with '/' matched on the relative path")
    g.add_argument("--recursive", action="store_true", help="also search subfolders")
    g.add_argument("--chunk_size", type=int, default=1000, help="images per chunk file, at most")
    g.add_argument("--max_chunk_mb", type=int, default=1024,
                   help="features per chunk file (and in memory per process), at most, in MiB: a chunk ends "
                        "at whichever of this and --chunk_size comes first")
    g.add_argument("--overwrite", action="store_true", help="recompute chunks that are already complete")
    g = p.add_argument_group("processing")
    g.add_argument("--image_frames", type=int, choices=[1, 2, 16], default=None,
                   help="1: the image as one frame through a 2.1 model's image path (default for 2.1); "
                        "16 (default for 2.0) or 2: the image repeated along time through the video path "
                        "(16 → 8 temporal tokens, 2 → 1, fast)")
    g.add_argument("--batch_size", type=int, default=8, help="images per forward pass")
    g.add_argument("--num_workers", type=int, default=None,
                   help="image-decoding worker processes (0: in the main process; default: 0 on CPU, one per core given less one on GPU)")
    g = p.add_argument_group("sharding (several processes or nodes)")
    g.add_argument("--shard", default=None, metavar="i/N",
                   help="process shard i of N (default: from RANK/WORLD_SIZE, SLURM_*, PBS_ARRAY_INDEX)")
    g.add_argument("--num_shards", type=int, default=None,
                   help="shard count; required with PBS_ARRAY_INDEX, a cross-check otherwise")
    embeddings_table.add_table_arguments(p, "OUTPUT_DIR/embeddings")
    return p


def check_args(args) -> None:
    for flag in ("chunk_size", "max_chunk_mb", "batch_size"):
        if getattr(args, flag) < 1:
            raise cli.UsageError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.num_workers is not None and args.num_workers < 0:
        raise cli.UsageError(f"--num_workers must be >= 0, got {args.num_workers}")
    embeddings_table.check_part_rows(args.part_rows)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    check_args(args)
    try:
        shard_index, num_shards = sharding.resolve_shard(args.shard, args.num_shards)
    except ValueError as exc:
        raise cli.UsageError(str(exc)) from None

    patterns = args.pattern or list(frames.DEFAULT_IMAGE_PATTERNS)
    all_images = list_images(args.image_dir, patterns, args.recursive)
    if not all_images:
        raise cli.UsageError(f"no images in {args.image_dir} matching {' '.join(patterns)}"
                             + ("" if args.recursive else " (add --recursive to search subfolders)"))
    mine = sharding.select_shard(all_images, shard_index, num_shards)
    output_dir = cli.check_output_dir(args.output_dir)
    table = open_table(args.image_dir, output_dir, args.store, args.table_dir, (shard_index, num_shards),
                       args.part_rows, args.overwrite)  # before the model: a bad folder or part is exit 2
    others = layout.other_shard_counts(output_dir, num_shards)
    if others:
        logger.warning("%s already holds chunk files from a run with another shard count (%s); "
                       "readers will see those images twice", output_dir, ", ".join(others[:3]))
    logger.info("shard %d/%d: %d of %d images from %s", shard_index, num_shards, len(mine), len(all_images),
                args.image_dir)
    if not mine:
        logger.warning("shard %d/%d has no images (only %d in total); nothing to do", shard_index, num_shards,
                       len(all_images))
        return cli.EXIT_OK

    try:
        extractor = ImageExtractor(EncoderOptions.from_args(args), args.image_frames)
    except ValueError as exc:  # a bad spec, file, --layers, --image_frames or --short_side for this model
        raise cli.UsageError(str(exc)) from None
    num_workers = default_num_workers(extractor.encoder.device) if args.num_workers is None else args.num_workers
    from tqdm.contrib.logging import logging_redirect_tqdm

    pooling = embeddings_table.pooling_from_args(args)
    with logging_redirect_tqdm(loggers=[logging.getLogger()]), embeddings_table.closing(table):
        summary = extract_directory(
            extractor.encoder, args.image_dir, mine, output_dir, shard=(shard_index, num_shards),
            image_frames=extractor.image_frames, chunk_size=args.chunk_size,
            chunk_bytes=args.max_chunk_mb * 2**20, batch_size=args.batch_size,
            num_workers=num_workers, overwrite=args.overwrite, store=args.store, table=table, pooling=pooling)
    if table is not None:
        print(f"embeddings table: {table.dir} ({args.store}, {pooling.name}; {table.rows_written} rows written)")
    logger.info(
        "shard %d/%d: %d done, %d skipped (already complete), %d failed in %.1f s (%.1f images/s); "
        "%d chunk(s) written, %d skipped → %s",
        shard_index, num_shards, summary.done, summary.skipped, summary.failed, summary.seconds,
        summary.images_per_s, summary.chunks_written, summary.chunks_skipped, output_dir,
    )
    if summary.failed:
        logger.error("%d image(s) failed; see %s", summary.failed, layout.manifest_path(output_dir))
        return cli.EXIT_PARTIAL
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main))
