#!/usr/bin/env python
"""Sliding-window V-JEPA 2 features over frame folders and videos: one feature file per window.

    python vjepa2_sequential_extractor.py --frame_dir frames/ --output_dir feats/ --model random:vit_large
    python vjepa2_sequential_extractor.py --video a.mp4 --video b.mp4 --output_dir feats/ --frame_step 2

Each window of `--window` frames (every `--stride` frames) becomes `window_NNNNN.pt` (or
.safetensors) with `features [N, D]` fp16, `shape`, `dtype`, `model_info` and `metadata`
(frames, temporal mapping, timestamps, crop box). Outputs are written atomically; existing
complete outputs are skipped, so a killed run, rerun, finishes the job. `--shard i/N` (or
torchrun/Slurm/PBS variables) splits the windows across processes.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from src import cli, sharding
from src.features import Manifest, OutputWriteError, claim_output, is_complete, load_complete, save_features
from src.frames import DEFAULT_FRAME_PATTERN, VideoReader, find_frames, find_gaps
from src.inference import ClipEncoder, stored_layers
from src.models.weights import DEFAULT_HUB_MODEL, resolve_spec_kind
from src.windows import (
    TAIL_MODES, FrameWindowDataset, VideoWindowDataset, collate_windows, default_num_workers, plan_windows,
    temporal_mapping, worker_init,
)

logger = logging.getLogger("vjepa2_sequential_extractor")

VIDEO_LIST_SUFFIXES = (".txt", ".lst", ".list")


class ModelLoadError(cli.UsageError):
    """The model could not be loaded: the run stops (exit 2), whatever the number of inputs."""


class SequentialVJEPA2Extractor:
    """Sliding-window extraction over frame directories and video files.

    Args:
        model_name: model spec (hub id, local directory, original .pt, random:<arch>).
        device: "auto", "cpu", "cuda", "cuda:N".
        dtype: "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16".
        img_size: crop size (default from the model).
        window: frames per window (even).
        stride: frames between window starts (default: window, i.e. no overlap).
        batch_size: windows per forward pass.
        num_workers: DataLoader worker processes decoding and preprocessing ahead of the model.
        tail: "pad" (repeat the last frame, recorded) or "drop" (warned) for the last partial window.
        fmt: "pt" or "safetensors".
        overwrite: recompute outputs that already exist.
        frame_pattern: regex with one group capturing the frame number in a file name.
        allow_gaps: proceed over missing frame numbers (reported either way).
        shard: (index, count) of the windows this process handles.
        compile: run the encoder through torch.compile (see bench/PERFORMANCE.md).
        layers: what is stored: "last", "hierarchical" or block indices (see ClipEncoder).
    """

    def __init__(self, model_name: str = DEFAULT_HUB_MODEL, device: str = "auto", dtype: str = "auto",
                 img_size: int | None = None, window: int = 16, stride: int | None = None, batch_size: int = 1,
                 num_workers: int | None = None, tail: str = "pad", fmt: str = "pt", overwrite: bool = False,
                 frame_pattern: str = DEFAULT_FRAME_PATTERN, allow_gaps: bool = False,
                 shard: tuple[int, int] = (0, 1), checkpoint_key: str | None = None, compile: bool = False,
                 layers: str | list[int] = "last"):
        try:  # validate window/stride/tail before loading a model
            plan_windows(window, window, stride, tail)
        except ValueError as exc:
            raise cli.UsageError(str(exc)) from None
        if batch_size <= 0:
            raise cli.UsageError(f"--batch_size must be positive, got {batch_size}")
        # The model loads on first use, after the inputs are checked: a hub ViT-g takes minutes to
        # load, and a wrong frame range should not wait for it. The spec itself is checked now.
        try:
            resolve_spec_kind(model_name)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        self._encoder: ClipEncoder | None = None
        self._encoder_args = dict(spec=model_name, device=device, dtype=dtype, img_size=img_size,
                                  checkpoint_key=checkpoint_key, compile=compile, layers=layers)
        self.model_name = model_name
        self.window, self.stride, self.batch_size, self.tail = window, stride or window, batch_size, tail
        self.num_workers = default_num_workers(cli.resolve_device(device)) if num_workers is None else num_workers
        self.fmt, self.overwrite, self.frame_pattern, self.allow_gaps = fmt, overwrite, frame_pattern, allow_gaps
        self.shard = shard

    @property
    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            try:
                self._encoder = ClipEncoder(**self._encoder_args)
            except (ValueError, OSError) as exc:  # a bad spec or file: fatal for every input, not per input
                raise ModelLoadError(str(exc)) from exc
        return self._encoder

    # ------------------------------------------------------------------ inputs
    def process_frame_directory(self, frame_dir, output_dir, first_frame: int | None = None,
                                last_frame: int | None = None, stride: int | None = None,
                                batch_size: int | None = None) -> dict:
        """Windows over the numbered frames of `frame_dir` → `output_dir/window_NNNNN.<fmt>`."""
        frame_dir = Path(frame_dir)
        if first_frame is not None and last_frame is not None and first_frame > last_frame:
            raise cli.UsageError(f"--first_frame {first_frame} is after --last_frame {last_frame}")
        frames = find_frames(frame_dir, self.frame_pattern, first_frame, last_frame)
        if not frames:
            bounds = {(False, False): "", (True, False): f" from frame {first_frame} on",
                      (False, True): f" up to frame {last_frame}",
                      (True, True): f" between frames {first_frame} and {last_frame}"}
            raise cli.UsageError(f"{frame_dir}: no frame files match the pattern '{self.frame_pattern}'"
                                 + bounds[first_frame is not None, last_frame is not None])
        numbers = [n for n, _ in frames]
        gaps = find_gaps(numbers)
        if gaps:
            listed = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in gaps[:10])
            message = f"{frame_dir}: missing frame numbers {listed}" + (" …" if len(gaps) > 10 else "")
            if not self.allow_gaps:
                raise cli.UsageError(message + " (pass --allow_gaps to proceed over them)")
            logger.warning("%s; proceeding (--allow_gaps)", message)
        self._check_length(len(frames), f"{frame_dir}: {len(frames)} frames")
        windows = plan_windows(len(frames), self.window, stride or self.stride, self.tail)
        dataset = FrameWindowDataset([p for _, p in frames], windows, self.encoder.transform,
                                     min_side=self.encoder.model.patch_size)

        def metadata(window, image_hw):
            used = [frames[p] for p in window.positions]
            return {
                "source_type": "frames",
                "frame_dir": str(frame_dir.resolve()),
                "frame_numbers": [n for n, _ in used],
                "frame_files": [str(p.resolve()) for _, p in used],
                "start_frame": frames[window.real_positions[0]][0],
                "end_frame": frames[window.real_positions[-1]][0],
                "temporal_mapping": temporal_mapping([n for n, _ in used]),
                "gaps": [list(g) for g in gaps],
            }

        return self._extract(str(frame_dir), windows, dataset, Path(output_dir), metadata, batch_size)

    def process_video(self, video_path, output_dir, frame_step: int = 1, stride: int | None = None,
                      batch_size: int | None = None, backend: str = "auto", first_frame: int | None = None,
                      last_frame: int | None = None) -> dict:
        """Windows over every `frame_step`-th frame of a video (frame indices from 0, optionally only
        `first_frame`..`last_frame`, inclusive) → `output_dir/window_NNNNN.<fmt>`."""
        video_path = Path(video_path)
        if frame_step <= 0:
            raise cli.UsageError(f"--frame_step must be positive, got {frame_step}")
        if first_frame is not None and last_frame is not None and first_frame > last_frame:
            raise cli.UsageError(f"--first_frame {first_frame} is after --last_frame {last_frame}")
        if min(first_frame or 0, last_frame if last_frame is not None else 0) < 0:
            raise cli.UsageError("--first_frame and --last_frame are video frame indices, from 0")
        if not video_path.is_file():
            raise FileNotFoundError(f"{video_path}: video not found")
        with VideoReader(video_path, backend=backend) as reader:
            start = first_frame or 0
            if start >= reader.num_frames:
                raise cli.UsageError(f"{video_path}: --first_frame {start} is past the last frame "
                                     f"({reader.num_frames - 1})")
            stop = reader.num_frames if last_frame is None else min(last_frame + 1, reader.num_frames)
            indices = list(range(start, stop, frame_step))
            fps = reader.fps
            # float32 noise (8.960000038146973) would read as a real sub-microsecond offset
            timestamps = [round(t, 6) for t in reader.timestamps(indices)]
        span = f"frames {start}..{stop - 1}, " if first_frame is not None or last_frame is not None else ""
        self._check_length(len(indices), f"{video_path}: {len(indices)} frames ({span}frame_step {frame_step})")
        windows = plan_windows(len(indices), self.window, stride or self.stride, self.tail)
        dataset = VideoWindowDataset(video_path, indices, windows, self.encoder.transform, backend=backend,
                                     min_side=self.encoder.model.patch_size)

        def metadata(window, image_hw):
            used = [indices[p] for p in window.positions]
            return {
                "source_type": "video",
                "video_path": str(video_path.resolve()),
                "fps": fps,
                "frame_step": frame_step,
                "frame_numbers": used,
                "timestamps": [timestamps[p] for p in window.positions],
                "start_frame": indices[window.real_positions[0]],
                "end_frame": indices[window.real_positions[-1]],
                "temporal_mapping": temporal_mapping(used),
            }

        return self._extract(str(video_path), windows, dataset, Path(output_dir), metadata, batch_size)

    def _check_length(self, available: int, what: str) -> None:
        if available < self.window:
            raise cli.UsageError(f"{what}, fewer than one window of {self.window} (use --window {available - available % 2} or less)")

    def _check_same_run(self, record: dict, window, metadata_fn, path: Path) -> None:
        """Refuse to keep a finished window written by a different model, crop or frame choice:
        skipping it would mix features of two runs in one folder."""
        meta, info = record.get("metadata") or {}, record.get("model_info") or {}
        found = {"model": meta.get("model"), "img_size": info.get("img_size"),
                 "frames": meta.get("frame_numbers"),
                 "layers": stored_layers(info)}
        expected = {"model": self.model_name, "img_size": self.encoder.crop,
                    "frames": metadata_fn(window, None)["frame_numbers"],
                    "layers": stored_layers(self.encoder.describe(self.window))}
        if found != expected:
            def show(v):
                return f"{v[0]}..{v[-1]}" if isinstance(v, list) and v else repr(v)
            changed = ", ".join(f"{k} {show(found[k])} (now {show(expected[k])})" for k in found if found[k] != expected[k])
            raise cli.UsageError(f"{path}: written by another run: {changed}; "
                                 "use another --output_dir or pass --overwrite")

    # ------------------------------------------------------------------ the loop
    def _extract(self, source: str, windows, dataset, output_dir: Path, metadata_fn, batch_size) -> dict:
        output_dir.mkdir(parents=True, exist_ok=True)
        shard_index, shard_count = self.shard
        tag = {"shard": f"{shard_index}/{shard_count}"}  # run_parallel_extraction.sh counts per shard
        mine = sharding.select_shard([w.index for w in windows], shard_index, shard_count)
        outputs = {w.index: output_dir / f"window_{w.index:05d}.{self.fmt}" for w in windows}
        summary = {"source": source, "windows": len(windows), "ok": 0, "skipped": 0, "failed": 0,
                   "outputs": [outputs[i] for i in mine]}
        pending, finished = [], []
        other_fmt = "safetensors" if self.fmt == "pt" else "pt"
        for i in mine:
            other = outputs[i].with_suffix(f".{other_fmt}")
            if other.exists():  # two formats side by side would hold every window twice
                raise cli.UsageError(f"{other}: written by a --format {other_fmt} run, this one writes --format "
                                     f"{self.fmt}; use another --output_dir or remove the .{other_fmt} files")
            record = None if self.overwrite else load_complete(outputs[i])
            if record is None:
                pending.append(i)
            else:  # all checked before anything is recorded: a refused run leaves no trace
                self._check_same_run(record, windows[i], metadata_fn, outputs[i])
                finished.append(i)
        manifest = Manifest(output_dir / "manifest.jsonl")
        for i in finished:
            manifest.record(f"{source}#window{i}", str(outputs[i]), "skipped", "already complete", extra=tag)
            summary["skipped"] += 1
        if summary["skipped"]:
            logger.info("%s: %d of %d windows already complete, skipped", source, summary["skipped"], len(mine))
        padded = [w for w in windows if w.num_padded]
        if padded:
            logger.info("%s: last window padded with %d repeats of the last frame (recorded in its metadata)",
                        source, padded[0].num_padded)
        if not pending:
            manifest.close()
            return summary

        loader = DataLoader(Subset(dataset, pending), batch_size=batch_size or self.batch_size,
                            num_workers=self.num_workers, collate_fn=collate_windows, worker_init_fn=worker_init,
                            pin_memory=self.encoder.device.type == "cuda")
        tp_frames = self.window
        info = self.encoder.describe(tp_frames)
        grid = list(self.encoder.grid(tp_frames))
        start = time.perf_counter()
        with tqdm(total=len(pending), unit="win", desc=Path(source).name, disable=None) as bar, manifest:
            for batch in loader:
                for k, error in batch["errors"]:
                    w = windows[k]  # items carry their index into `windows`
                    logger.error("%s window %d: %s", source, w.index, error)
                    manifest.record(f"{source}#window{w.index}", str(outputs[w.index]), "failed", error, extra=tag)
                    summary["failed"] += 1
                if batch["clips"] is None:
                    bar.update(len(batch["errors"]))
                    continue
                with ExitStack() as claims:  # hold each window's claim from encode to save
                    keep = []
                    for j, k in enumerate(batch["windows"]):
                        path = outputs[windows[k].index]
                        if claims.enter_context(claim_output(path)) and (self.overwrite or not is_complete(path)):
                            keep.append(j)
                        else:  # another process over the same tree has it, or just finished it
                            manifest.record(f"{source}#window{windows[k].index}", str(path), "skipped",
                                            "written by another process", extra=tag)
                            summary["skipped"] += 1
                    # all kept (the usual case): the batch itself, still in the DataLoader's pinned memory
                    clips = batch["clips"] if len(keep) == len(batch["windows"]) else batch["clips"][keep]
                    feats = self.encoder.encode(clips) if keep else []  # [B, N, D] fp16
                    for j, f in zip(keep, feats):
                        k, image_hw = batch["windows"][j], batch["image_hw"][j]
                        w = windows[k]  # items carry their index into `windows`
                        record = {
                            "features": f,
                            "shape": list(f.shape),
                            "dtype": "float16",
                            "model_info": info,
                            "metadata": {
                                "window_idx": w.index,
                                **metadata_fn(w, image_hw),
                                "num_padded_frames": w.num_padded,
                                "grid": grid,
                                "image_size": list(image_hw),
                                "crop_box": self.encoder.crop_box(*image_hw),
                                "model": self.model_name,
                                "extraction_timestamp": datetime.now(timezone.utc).isoformat(),
                            },
                        }
                        save_features(record, outputs[w.index], self.fmt)
                        manifest.record(f"{source}#window{w.index}", str(outputs[w.index]), "ok", extra=tag)
                        summary["ok"] += 1
                bar.update(len(batch["windows"]) + len(batch["errors"]))
        elapsed = time.perf_counter() - start
        logger.info("%s: %d windows written, %d skipped, %d failed in %.1f s (%.2f windows/s)", source,
                    summary["ok"], summary["skipped"], summary["failed"], elapsed, summary["ok"] / max(elapsed, 1e-9))
        return summary


# ---------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, parents=[cli.common_parser()],
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
    return p


def expand_videos(entries: list[str]) -> list[Path]:
    """Video paths from --video values; a .txt/.lst file lists one video per line (# comments)."""
    videos = []
    for entry in entries:
        path = Path(entry)
        if path.suffix.lower() in VIDEO_LIST_SUFFIXES:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: video list not found")
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            videos += [(path.parent / ln) if not Path(ln).is_absolute() else Path(ln)
                       for ln in lines if ln and not ln.startswith("#")]
        else:
            videos.append(path)
    return videos


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    videos = expand_videos(args.video)
    inputs = [("frames", Path(d)) for d in args.frame_dir] + [("video", v) for v in videos]
    if not inputs:
        raise cli.UsageError("nothing to do: give --frame_dir or --video")
    for kind, path in inputs:  # inputs named on the command line must exist (list entries may fail alone)
        if kind == "frames" and not path.is_dir():
            raise FileNotFoundError(f"{path}: frame directory not found")
    for entry in args.video:
        if Path(entry).suffix.lower() not in VIDEO_LIST_SUFFIXES and not Path(entry).is_file():
            raise FileNotFoundError(f"{entry}: video not found")
    try:
        shard = sharding.resolve_shard(args.shard, args.num_shards)
    except ValueError as exc:  # a bad --shard or launcher variable: the command line's fault
        raise cli.UsageError(str(exc)) from None
    cli.check_output_dir(args.output_dir)
    extractor = SequentialVJEPA2Extractor(
        model_name=args.model, device=sharding.local_device(args.device), dtype=args.dtype, img_size=args.img_size,
        window=args.window, stride=args.stride, batch_size=args.batch_size, num_workers=args.num_workers,
        tail=args.tail, fmt=args.format, overwrite=args.overwrite, frame_pattern=args.frame_pattern,
        allow_gaps=args.allow_gaps, shard=shard, checkpoint_key=args.checkpoint_key, compile=args.compile,
        layers=args.layers,
    )
    output_root = Path(args.output_dir)
    failed_inputs, totals = 0, {"ok": 0, "skipped": 0, "failed": 0}
    for kind, path in inputs:
        # one input → its windows directly in output_dir; several → one sub-folder each
        out = output_root if len(inputs) == 1 else output_root / (path.stem if kind == "video" else path.name)
        try:
            if kind == "frames":
                summary = extractor.process_frame_directory(path, out, args.first_frame, args.last_frame)
            else:
                summary = extractor.process_video(path, out, frame_step=args.frame_step,
                                                  first_frame=args.first_frame, last_frame=args.last_frame)
        except (OutputWriteError, ModelLoadError):
            raise  # a full disk, a write error or no model stops the run (finished outputs stay intact)
        except (ValueError, OSError) as exc:  # one bad input: record, report, go on
            if len(inputs) == 1 and isinstance(exc, cli.UsageError):
                raise
            logger.error("%s", exc if str(exc).startswith(str(path)) else f"{path}: {exc}")
            out.mkdir(parents=True, exist_ok=True)
            with Manifest(out / "manifest.jsonl") as manifest:
                manifest.record(str(path), str(out), "failed", str(exc), extra={"shard": f"{shard[0]}/{shard[1]}"})
            failed_inputs += 1
            continue
        for key in totals:
            totals[key] += summary[key]
    print(f"done: {totals['ok']} windows written, {totals['skipped']} already complete, "
          f"{totals['failed']} windows failed, {failed_inputs} inputs failed → {output_root}")
    return cli.EXIT_PARTIAL if totals["failed"] or failed_inputs else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run(main))
