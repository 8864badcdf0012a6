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
import logging
import sys
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from src import cli, embeddings_table, sharding
from src.errors import ModelLoadError
from src.features import Manifest, OutputWriteError, claim_output, is_complete, load_complete, save_features
from src.frames import DEFAULT_FRAME_PATTERN, VideoReader, find_frames, find_gaps, read_image_size
from src.media.sampling import sample_video
from src.inference import ClipEncoder, dtype_name, stored_layers
from src.models.weights import DEFAULT_HUB_MODEL, resolve_spec_kind
from src.spatial import DEFAULT_MAX_TOKENS, check_spatial_options
from src.windows import (
    TAIL_MODES, FrameWindowDataset, VideoWindowDataset, batches_by_key, collate_windows, default_num_workers,
    plan_windows, temporal_mapping, worker_init, worker_order,
)

logger = logging.getLogger("vjepa2_sequential_extractor")

VIDEO_LIST_SUFFIXES = (".txt", ".lst", ".list")




class SequentialVJEPA2Extractor:
    """Sliding-window extraction over frame directories and video files.

    Args:
        model_name: model spec (hub id, local directory, original .pt, random:<arch>).
        device: "auto", "cpu", "cuda", "cuda:N".
        use_fp16: compute in fp16 (the seed's flag; the same as ``dtype="fp16"``).
        dtype: "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16"; None → "fp16" if
            use_fp16 else "auto" (a dtype other than "fp16" with ``use_fp16=True`` is an error).
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
        num_heads: head count of an original .pt whose shapes cannot tell it (16-head giants).
        spatial: "center" (the centre crop) or "full" (the whole frame; see src/spatial.py).
        short_side: `full`: the short side frames are resized to (default: the crop size).
        max_tokens: refuse windows with more tokens than this (None: no limit).
        store: "tokens" (feature files), "pooled" (rows of the embeddings table) or "both".
        pooling: how the table's vectors are made (default: mean over tokens, L2-normalised).
        table_dir: the embeddings table folder (default: `embeddings/` in the first output folder).
        part_rows: table rows per Parquet part file.
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
        try:  # validate window/stride/tail before loading a model
            plan_windows(window, window, stride, tail)
            dtype = dtype_name(dtype, use_fp16)
        except ValueError as exc:
            raise cli.UsageError(str(exc)) from None
        check_spatial_options(spatial, short_side, max_tokens)
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
                                  checkpoint_key=checkpoint_key, compile=compile, layers=layers,
                                  num_heads=num_heads, spatial=spatial, short_side=short_side, max_tokens=max_tokens)
        self.model_name = model_name
        self.window, self.stride, self.batch_size, self.tail = window, stride or window, batch_size, tail
        self.num_workers = default_num_workers(cli.resolve_device(device)) if num_workers is None else num_workers
        self.fmt, self.overwrite, self.frame_pattern, self.allow_gaps = fmt, overwrite, frame_pattern, allow_gaps
        self.shard = shard
        if store not in embeddings_table.STORE_CHOICES:
            raise cli.UsageError(f"--store must be one of {embeddings_table.STORE_CHOICES}, got {store!r}")
        if part_rows < 1:
            raise cli.UsageError(f"--part_rows must be >= 1, got {part_rows}")
        self.store, self.pooling = store, pooling or embeddings_table.Pooling()
        self.table_dir, self.part_rows = table_dir, part_rows
        self._table: embeddings_table.TableWriter | None = None
        self._held = ExitStack()  # claims of windows whose rows are buffered, not yet in a part file

    def table(self, output_dir: Path) -> embeddings_table.TableWriter | None:
        """The embeddings table this extractor appends to (None when it stores tokens only)."""
        if self.store == "tokens":
            return None
        if self._table is None:
            self._table = embeddings_table.TableWriter(self.table_dir or Path(output_dir) / "embeddings", self.shard,
                                                       self.part_rows, overwrite=self.overwrite)
        return self._table

    def close(self) -> None:
        """Write the table rows still buffered (call once the inputs are done)."""
        try:
            if self._table is not None:
                self._table.flush()
        finally:
            self._held.close()

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
        # `full`: a window's grid follows its frames' size (headers only), to batch equal grids together
        sizes = [read_image_size(frames[w.positions[0]][1]) for w in windows] if self._full else None

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

        return self._extract(str(frame_dir), windows, dataset, Path(output_dir), metadata, batch_size, sizes)

    def process_video(self, video_path, output_dir, frame_step: int = 1, stride: int | None = None,
                      batch_size: int | None = None, backend: str = "auto", first_frame: int | None = None,
                      last_frame: int | None = None, sample_fps: float | None = None) -> dict:
        """Windows over every `frame_step`-th frame of a video (frame indices from 0, optionally only
        `first_frame`..`last_frame`, inclusive), or over `sample_fps` frames per second of video time
        → `output_dir/window_NNNNN.<fmt>`."""
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
            sampled = sample_video(reader, frame_step, sample_fps, first_frame, last_frame)
            indices, timestamps = sampled.indices, sampled.timestamps
            fps = reader.fps
            frame_hw = (reader.height, reader.width)  # as displayed (rotation applied)
            read_as = {**reader.metadata(), "sample_fps": sample_fps}
        span = f"frames {start}..{stop - 1}, " if first_frame is not None or last_frame is not None else ""
        chosen = f"sample_fps {sample_fps}" if sample_fps else f"frame_step {frame_step}"
        self._check_length(len(indices), f"{video_path}: {len(indices)} frames ({span}{chosen})")
        windows = plan_windows(len(indices), self.window, stride or self.stride, self.tail)
        dataset = VideoWindowDataset(video_path, indices, windows, self.encoder.transform,
                                     backend=read_as["video_backend"],
                                     min_side=self.encoder.model.patch_size)

        def metadata(window, image_hw):
            used = [indices[p] for p in window.positions]
            return {
                "source_type": "video",
                "video_path": str(video_path.resolve()),
                "fps": fps,
                "frame_step": frame_step,
                **read_as,  # backend, coded size, rotation, flip; sample_fps
                "frame_numbers": used,
                "timestamps": [timestamps[p] for p in window.positions],
                "start_frame": indices[window.real_positions[0]],
                "end_frame": indices[window.real_positions[-1]],
                "temporal_mapping": temporal_mapping(used),
            }

        sizes = [frame_hw] * len(windows) if self._full else None
        return self._extract(str(video_path), windows, dataset, Path(output_dir), metadata, batch_size, sizes)

    @property
    def _full(self) -> bool:
        return self._encoder_args["spatial"] == "full"

    def _check_tokens(self, source: str, sizes: list | None) -> None:
        """Refuse, before any window is encoded, frame sizes whose grid exceeds --max_tokens."""
        for hw in dict.fromkeys(sizes or []):
            if hw is not None:
                try:
                    self.encoder.spatial.check_tokens(self.window, *hw, name=f"{source}: a {self.window}-frame window")
                except ValueError as exc:
                    raise cli.UsageError(str(exc)) from None

    def _check_length(self, available: int, what: str) -> None:
        if available < self.window:
            raise cli.UsageError(f"{what}, fewer than one window of {self.window} (use --window {available - available % 2} or less)")

    def _check_same_run(self, record: dict, window, metadata_fn, path: Path) -> None:
        """Refuse to keep a finished window written for another input (by name), model, crop or frame
        choice: skipping it would mix features of two runs in one folder."""
        meta, info = record.get("metadata") or {}, record.get("model_info") or {}
        plan = self.encoder.spatial
        # The input by name, not by path: a folder copied to node-local scratch still resumes, while
        # another video or frame folder written into the same output folder is refused.
        expected_meta = metadata_fn(window, None)
        source_key = "video_path" if expected_meta.get("source_type") == "video" else "frame_dir"
        expected_input = Path(expected_meta[source_key]).name
        found_input = meta.get("video_path") or meta.get("frame_dir")  # absent only in hand-made files
        found = {"input": Path(found_input).name if found_input else expected_input,
                 "model": meta.get("model"), "img_size": info.get("img_size"),
                 "spatial": meta.get("spatial", "center"),  # files from before --spatial are centre crops
                 "frames": meta.get("frame_numbers"), "sample_fps": meta.get("sample_fps"),
                 "layers": stored_layers(info)}
        expected = {"input": expected_input,
                    "model": self.model_name, "img_size": self.encoder.crop, "spatial": plan.mode,
                    "frames": expected_meta["frame_numbers"], "sample_fps": expected_meta.get("sample_fps"),
                    "layers": stored_layers(self.encoder.describe(self.window))}
        if plan.mode == "full" and found["spatial"] == "full":
            found["short_side"], expected["short_side"] = meta.get("short_side"), plan.short_side
        if found != expected:
            def show(v):
                return f"{v[0]}..{v[-1]}" if isinstance(v, list) and v else repr(v)
            changed = ", ".join(f"{k} {show(found[k])} (now {show(expected[k])})" for k in found if found[k] != expected[k])
            raise cli.UsageError(f"{path}: written by another run: {changed}; "
                                 "use another --output_dir or pass --overwrite")

    def _check_same_frames(self, table, item: str, window, metadata_fn) -> None:
        """A table row of this window written for other frames (another --frame_step, range or stride)
        would be skipped as done: refuse, as for token files."""
        meta = metadata_fn(window, None)
        found = table.frames_of(item)
        expected = (meta["start_frame"], meta["end_frame"])
        if found is not None and tuple(found) != expected:
            raise cli.UsageError(f"{table.dir}: row {item} written by another run: frames {found[0]}..{found[1]} "
                                 f"(now {expected[0]}..{expected[1]}); use another table folder or pass --overwrite")

    # ------------------------------------------------------------------ the loop
    def _extract(self, source: str, windows, dataset, output_dir: Path, metadata_fn, batch_size,
                 sizes: list | None = None) -> dict:
        """`sizes`: (height, width) of each window's frames where the grid depends on it (`full`)."""
        self._check_tokens(source, sizes)
        output_dir.mkdir(parents=True, exist_ok=True)
        shard_index, shard_count = self.shard
        tag = {"shard": f"{shard_index}/{shard_count}"}  # run_parallel_extraction.sh counts per shard
        mine = sharding.select_shard([w.index for w in windows], shard_index, shard_count)
        outputs = {w.index: output_dir / f"window_{w.index:05d}.{self.fmt}" for w in windows}
        summary = {"source": source, "windows": len(windows), "ok": 0, "skipped": 0, "failed": 0,
                   "outputs": [outputs[i] for i in mine]}
        pending, finished, to_pool = [], [], []  # to_pool: token file done, table row missing
        other_fmt = "safetensors" if self.fmt == "pt" else "pt"
        table = self.table(output_dir)
        store_tokens = self.store != "pooled"
        if table is not None:
            info = self.encoder.describe(self.window)
            table.expect({"model": self.model_name, "pooling": self.pooling.name, "img_size": self.encoder.crop,
                          "clip_frames": self.window, "spatial": self.encoder.spatial.mode,
                          "generation": info.get("generation"),
                          "output": info.get("output"), "layers": info.get("layers")})
        items = {i: embeddings_table.item_id({**metadata_fn(windows[i], None), "window_idx": i}) for i in mine}
        for i in mine:
            other = outputs[i].with_suffix(f".{other_fmt}")
            if store_tokens and other.exists():  # two formats side by side would hold every window twice
                raise cli.UsageError(f"{other}: written by a --format {other_fmt} run, this one writes --format "
                                     f"{self.fmt}; use another --output_dir or remove the .{other_fmt} files")
            tokens_done = row_done = True
            if store_tokens:
                record = None if self.overwrite else load_complete(outputs[i])
                tokens_done = record is not None
                if tokens_done:  # all checked before anything is recorded: a refused run leaves no trace
                    self._check_same_run(record, windows[i], metadata_fn, outputs[i])
            if table is not None:
                row_done = not self.overwrite and table.has(items[i])
                if row_done:
                    self._check_same_frames(table, items[i], windows[i], metadata_fn)
            if not store_tokens:
                tokens_done = row_done  # no token file to pool from: a missing row is encoded
            if tokens_done and row_done:
                finished.append(i)
            elif tokens_done:
                to_pool.append(i)
            else:
                pending.append(i)
        manifest = Manifest(output_dir / "manifest.jsonl")
        for i in finished:
            manifest.record(f"{source}#window{i}", outputs[i].name if store_tokens else str(table.dir), "skipped",
                            "already complete", extra=tag)
            summary["skipped"] += 1
        for i in to_pool:  # the table row of a finished window: pooled from its token file, not re-encoded
            if self._held.enter_context(claim_output(outputs[i])):
                table.refresh()
                if not table.has(items[i]):
                    for rows in embeddings_table.rows_from_feature_file(outputs[i], self.pooling):
                        if table.add(rows):
                            self._held.close()
            manifest.record(f"{source}#window{i}", outputs[i].name, "skipped",
                            "already complete; table row pooled from the token file", extra=tag)
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

        # one grid per batch: with `full`, windows are batched by frame size (a video has one)
        batches = batches_by_key([self.encoder.spatial.batch_key(sizes[i] if sizes else None) for i in pending],
                                 batch_size or self.batch_size)
        if isinstance(dataset, VideoWindowDataset):  # each worker's decoder reads its windows in order
            batches = worker_order(batches, self.num_workers)
        loader = DataLoader(Subset(dataset, pending), batch_sampler=batches,
                            num_workers=self.num_workers, collate_fn=collate_windows, worker_init_fn=worker_init,
                            pin_memory=self.encoder.device.type == "cuda")
        tp_frames = self.window
        start = time.perf_counter()
        with tqdm(total=len(pending), unit="win", desc=Path(source).name, disable=None) as bar, manifest:
            for batch in loader:
                for k, error in batch["errors"]:
                    w = windows[k]  # items carry their index into `windows`
                    logger.error("%s window %d: %s", source, w.index, error)
                    manifest.record(f"{source}#window{w.index}", outputs[w.index].name, "failed", error, extra=tag)
                    summary["failed"] += 1
                if batch["clips"] is None:
                    bar.update(len(batch["errors"]))
                    continue
                with ExitStack() as claims:  # hold each window's claim from encode to save
                    # ... and, for table rows, until the part holding them is written
                    held = self._held if table is not None else claims
                    if table is not None:
                        table.refresh()  # parts other processes wrote meanwhile
                    keep = []
                    for j, k in enumerate(batch["windows"]):
                        path = outputs[windows[k].index]
                        done_elsewhere = ((not store_tokens or is_complete(path))
                                          and (table is None or table.has(items[windows[k].index])))
                        if held.enter_context(claim_output(path)) and (self.overwrite or not done_elsewhere):
                            keep.append(j)
                        else:  # another process over the same tree has it, or just finished it
                            manifest.record(f"{source}#window{windows[k].index}", path.name, "skipped",
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
                            "model_info": self.encoder.describe(tp_frames, image_hw),
                            "metadata": {
                                "window_idx": w.index,
                                **metadata_fn(w, image_hw),
                                "num_padded_frames": w.num_padded,
                                **self.encoder.spatial.metadata(tp_frames, *image_hw),  # grid, covered box
                                "model": self.model_name,
                                "extraction_timestamp": datetime.now(timezone.utc).isoformat(),
                            },
                        }
                        if store_tokens:
                            save_features(record, outputs[w.index], self.fmt)
                        if table is not None and (self.overwrite or not table.has(items[w.index])):
                            token_file = str(outputs[w.index].resolve()) if store_tokens else None
                            if table.add(embeddings_table.build_rows(f, record["model_info"], record["metadata"],
                                                                     self.pooling,
                                                                     token_file=token_file)):
                                self._held.close()  # rows on disk: the claims can go
                        manifest.record(f"{source}#window{w.index}",
                                        outputs[w.index].name if store_tokens else str(table.dir), "ok", extra=tag)
                        summary["ok"] += 1
                bar.update(len(batch["windows"]) + len(batch["errors"]))
        elapsed = time.perf_counter() - start
        logger.info("%s: %d windows written, %d skipped, %d failed in %.1f s (%.2f windows/s)", source,
                    summary["ok"], summary["skipped"], summary["failed"], elapsed, summary["ok"] / max(elapsed, 1e-9))
        return summary


# ---------------------------------------------------------------------- CLI
def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, parents=[cli.common_parser(), cli.spatial_parser(), cli.video_parser(sampling=True)],
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
        layers=args.layers, num_heads=args.num_heads, spatial=args.spatial, short_side=args.short_side,
        max_tokens=args.max_tokens,
        store=args.store, pooling=embeddings_table.pooling_from_args(args),
        table_dir=args.table_dir or Path(args.output_dir) / "embeddings", part_rows=args.part_rows,
    )
    output_root = Path(args.output_dir)
    failed_inputs, totals = 0, {"ok": 0, "skipped": 0, "failed": 0}
    with embeddings_table.closing(extractor):  # buffered table rows are written however the loop ends
        failed_inputs = _run_inputs(extractor, inputs, output_root, args, shard, totals)
    if extractor.store != "tokens":
        print(f"embeddings table: {extractor.table_dir} ({extractor.store}, {extractor.pooling.name})")
    print(f"done: {totals['ok']} windows written, {totals['skipped']} already complete, "
          f"{totals['failed']} windows failed, {failed_inputs} inputs failed → {output_root}")
    return cli.EXIT_PARTIAL if totals["failed"] or failed_inputs else cli.EXIT_OK


def output_folders(inputs: list[tuple[str, Path]]) -> list[str]:
    """One sub-folder name per input: a video's stem, a frame folder's name; where several inputs
    would share one (``a/clip.mp4`` and ``b/clip.mp4``), their parent folders' names are put in
    front, then their position, so no input's windows land in (or are skipped by) another's folder.
    The same list on every shard, and unchanged names for inputs that do not collide."""
    def base(kind: str, path: Path) -> str:
        return path.stem if kind == "video" else path.name

    names = [base(kind, path) for kind, path in inputs]
    counts = {n: names.count(n) for n in names}
    for i, (kind, path) in enumerate(inputs):
        if counts[base(kind, path)] > 1:
            names[i] = "_".join(p for p in (path.resolve().parent.name, base(kind, path)) if p)
    taken = {n for n, (kind, path) in zip(names, inputs) if n == base(kind, path)}  # names kept as they were
    seen = set()
    for i, name in enumerate(names):
        if name in seen or (name != base(*inputs[i]) and name in taken):
            names[i] = f"{name}_{i}"
        seen.add(names[i])
    for (kind, path), name in zip(inputs, names):
        if name != base(kind, path):
            logger.warning("%s: another input has the same name; its windows go to %s/", path, name)
    return names


def _run_inputs(extractor, inputs, output_root: Path, args, shard, totals: dict) -> int:
    """Each input in turn; returns the number of inputs that failed."""
    failed_inputs = 0
    folders = output_folders(inputs)
    for position, (kind, path) in enumerate(inputs):
        # one input → its windows directly in output_dir; several → one sub-folder each
        out = output_root if len(inputs) == 1 else output_root / folders[position]
        try:
            if kind == "frames":
                summary = extractor.process_frame_directory(path, out, args.first_frame, args.last_frame)
            else:
                summary = extractor.process_video(path, out, frame_step=args.frame_step,
                                                  first_frame=args.first_frame, last_frame=args.last_frame,
                                                  backend=args.video_backend, sample_fps=args.sample_fps)
        except (OutputWriteError, ModelLoadError, embeddings_table.TableConfigError):
            raise  # a full disk, a write error, no model or a table of another run stops the run (finished outputs stay intact)
        except (ValueError, OSError) as exc:  # one bad input: record, report, go on
            if len(inputs) == 1 and isinstance(exc, cli.UsageError):
                raise
            message = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
            # Every shard meets a broken input the same way (it fails before its windows are
            # split): one shard, by the input's position, records and counts it for all.
            owner = position % shard[1]
            if owner != shard[0]:
                logger.info("%s (recorded by shard %d/%d)", message, owner, shard[1])
                continue
            logger.error("%s", message)
            out.mkdir(parents=True, exist_ok=True)
            with Manifest(out / "manifest.jsonl") as manifest:
                manifest.record(str(path), None, "failed", str(exc), extra={"shard": f"{shard[0]}/{shard[1]}"})
            failed_inputs += 1
            continue
        for key in totals:
            totals[key] += summary[key]
    return failed_inputs


if __name__ == "__main__":
    sys.exit(cli.run(main))
