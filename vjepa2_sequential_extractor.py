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
from pathlib import Path

from src import cli, embeddings_table, sharding
from src.extract.layout import input_folders as output_folders  # noqa: F401  (re-exported: the seed's names)
from src.extract.window_sources import VIDEO_LIST_SUFFIXES, WindowPlan, expand_videos  # noqa: F401
from src.extract.windows_run import WindowRun, WindowRunOptions, check_inputs, run_inputs
from src.frames import DEFAULT_FRAME_PATTERN
from src.models.weights import DEFAULT_HUB_MODEL
from src.options import EncoderOptions, dtype_name
from src.spatial import DEFAULT_MAX_TOKENS
from src.windows import TAIL_MODES


class SequentialVJEPA2Extractor(WindowRun):
    """Sliding-window extraction over frame directories and video files.

    Args:
        model_name: model spec (hub id, local directory, original .pt, random:<arch>).
        device: "auto", "cpu", "cuda", "cuda:N".
        use_fp16: compute in fp16 (the seed's flag; the same as ``dtype="fp16"``).
        dtype: "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16"; None → "fp16" if
            use_fp16 else "auto" (a dtype other than "fp16" with ``use_fp16=True`` is an error).
        window: frames per window (even).
        stride: frames between window starts (default: window, i.e. no overlap).
        tail: "pad" (repeat the last frame, recorded) or "drop" (warned) for the last partial window.
        batch_size: windows per forward pass.
        num_workers: DataLoader worker processes decoding and preprocessing ahead of the model.
        fmt: "pt" or "safetensors".
        overwrite: recompute outputs that already exist.
        frame_pattern: regex with one group capturing the frame number in a file name.
        allow_gaps: proceed over missing frame numbers (reported either way).
        shard: (index, count) of the windows this process handles.
        store: "tokens" (feature files), "pooled" (rows of the embeddings table) or "both".
        pooling: how the table's vectors are made (default: mean over tokens, L2-normalised).
        table_dir: the embeddings table folder (default: `embeddings/` in the first output folder).
        part_rows: table rows per Parquet part file.
        img_size, checkpoint_key, compile, layers, num_heads, spatial, short_side, max_tokens:
            see `src.options.EncoderOptions`.
    """

    def __init__(self, model_name: str = DEFAULT_HUB_MODEL, device: str = "auto", use_fp16: bool = False,
                 dtype: str | None = None, img_size: int | None = None, window: int = 16,
                 stride: int | None = None, batch_size: int = 1, num_workers: int | None = None,
                 tail: str = "pad", fmt: str = "pt", overwrite: bool = False,
                 frame_pattern: str = DEFAULT_FRAME_PATTERN, allow_gaps: bool = False,
                 shard: tuple[int, int] = (0, 1), checkpoint_key: str | None = None, compile: bool = False,
                 layers: str | list[int] = "last", num_heads: int | None = None, spatial: str = "center",
                 short_side: int | None = None, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                 store: str = "tokens", pooling: embeddings_table.Pooling | None = None, table_dir=None,
                 part_rows: int = embeddings_table.DEFAULT_PART_ROWS):
        settings = WindowRunOptions(
            plan=WindowPlan(window, stride, tail), batch_size=batch_size, num_workers=num_workers, fmt=fmt,
            overwrite=overwrite, frame_pattern=frame_pattern, allow_gaps=allow_gaps, shard=tuple(shard),
            store=store, pooling=pooling or embeddings_table.Pooling(),
            table_dir=None if table_dir is None else Path(table_dir), part_rows=part_rows)
        options = EncoderOptions(model=model_name, device=device, dtype=dtype_name(dtype, use_fp16),
                                 img_size=img_size, checkpoint_key=checkpoint_key, compile=compile, layers=layers,
                                 num_heads=num_heads, spatial=spatial, short_side=short_side, max_tokens=max_tokens)
        super().__init__(options, settings)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, parents=[cli.common_parser(), cli.spatial_parser()],
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
                                           last_frame=args.last_frame, frame_step=args.frame_step)
    if extractor.store != "tokens":
        print(f"embeddings table: {extractor.table_dir} ({extractor.store}, {extractor.pooling.name})")
    print(f"done: {totals['ok']} windows written, {totals['skipped']} already complete, "
          f"{totals['failed']} windows failed, {failed_inputs} inputs failed → {output_root}")
    return cli.EXIT_PARTIAL if totals["failed"] or failed_inputs else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))
