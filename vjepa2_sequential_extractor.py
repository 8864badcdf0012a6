#!/usr/bin/env python
"""Sliding-window V-JEPA 2 features over frame folders and videos: one feature file per window.

    python vjepa2_sequential_extractor.py --frame_dir frames/ --output_dir feats/ --model random:vit_large
    python vjepa2_sequential_extractor.py --video a.mp4 --video b.mp4 --output_dir feats/ --frame_step 2

Each window of `--window` frames (every `--stride` frames) becomes `window_NNNNN.pt` (or
.safetensors) with `features [N, D]` fp16, `shape`, `dtype`, `model_info` and `metadata`
(frames, temporal mapping, timestamps, token grid, covered box). `--spatial full` encodes the whole
frame (non-square grid) instead of the centre crop. Outputs are written atomically; existing
complete outputs are skipped, so a killed run, rerun, finishes the job. `--shard i/N` (or
torchrun/Slurm/PBS variables) splits the windows across processes.
"""
from __future__ import annotations

import argparse
import sys

from src import cli, embeddings_table, sharding
from src.extract.layout import input_folders as output_folders  # noqa: F401  (re-exported: the seed's names)
from src.extract.seed import SequentialVJEPA2Extractor  # noqa: F401
from src.extract.window_sources import VIDEO_LIST_SUFFIXES, expand_videos  # noqa: F401
from src.extract.inputs import check_inputs, run_inputs
from src.extract.windows_run import WindowRun, WindowRunOptions
from src.frames import DEFAULT_FRAME_PATTERN
from src.options import EncoderOptions
from src.windows import TAIL_MODES


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, parents=[cli.common_parser(), cli.spatial_parser(),
                                                              cli.video_parser(sampling=True)],
                                formatter_class=cli.HelpFormatter)
    src = p.add_argument_group("inputs")
    src.add_argument("--frame_dir", action="append", default=[], help="folder of numbered frames (repeatable)")
    src.add_argument("--video", action="append", default=[],
                     help="video file, or a .txt file listing one video per line (repeatable)")
    src.add_argument("--frame_pattern", default=DEFAULT_FRAME_PATTERN, help="regex, one group = frame number")
    src.add_argument("--first_frame", type=int, default=None,
                     help="first frame: its number in a folder, its index (from 0) in a video")
    src.add_argument("--last_frame", type=int, default=None, help="last frame, inclusive (as --first_frame)")
    src.add_argument("--frame_step", type=int, default=1, help="use every n-th video frame")
    src.add_argument("--allow_gaps", action="store_true", help="proceed over missing frame numbers")
    win = p.add_argument_group("windows and output")
    win.add_argument("--output_dir", required=True)
    win.add_argument("--window", type=int, default=16, help="frames per window (even)")
    win.add_argument("--stride", type=int, default=None, help="frames between window starts (default: window)")
    win.add_argument("--tail", choices=TAIL_MODES, default="pad", help="last partial window: pad (repeat last frame) or drop")
    win.add_argument("--batch_size", type=int, default=1, help="windows per forward pass")
    win.add_argument("--num_workers", type=int, default=None, help="decoding workers (default: 0 on CPU, min(4, cores-1) on GPU)")
    win.add_argument("--format", choices=["pt", "safetensors"], default="pt")
    win.add_argument("--overwrite", action="store_true", help="recompute existing outputs")
    win.add_argument("--shard", default=None, help="i/N: this process's share of the windows")
    win.add_argument("--num_shards", type=int, default=None, help="shard count for PBS_ARRAY_INDEX")
    embeddings_table.add_table_arguments(p, "OUTPUT_DIR/embeddings")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    inputs = check_inputs(args.frame_dir, args.video)
    try:
        shard = sharding.resolve_shard(args.shard, args.num_shards)
    except ValueError as exc:  # a bad --shard or launcher variable: the command line's fault
        raise cli.UsageError(str(exc)) from None
    output_root = cli.check_output_dir(args.output_dir)
    extractor = WindowRun(EncoderOptions.from_args(args), WindowRunOptions.from_args(args, shard))
    with embeddings_table.closing(extractor):  # buffered table rows are written however the loop ends
        totals, failed_inputs = run_inputs(extractor, inputs, output_root, first_frame=args.first_frame,
                                           last_frame=args.last_frame, frame_step=args.frame_step,
                                           video_backend=args.video_backend, sample_fps=args.sample_fps)
    if extractor.store != "tokens":
        print(f"embeddings table: {extractor.table_dir} ({extractor.store}, {extractor.pooling.name})")
    print(f"done: {totals['ok']} windows written, {totals['skipped']} already complete, "
          f"{totals['failed']} windows failed, {failed_inputs} inputs failed → {output_root}")
    return cli.EXIT_PARTIAL if totals["failed"] or failed_inputs else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main))
