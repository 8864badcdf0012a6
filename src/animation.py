"""A run's pictures and videos, streamed window by window: PNGs per temporal token and one
animation frame per source frame (overlays of the projected token colours on the region the
features cover; stacked or side-by-side views), written by `vjepa2_pipeline.py`."""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from src.render import PictureWriters, VideoWriter, annotate, overlay, side_by_side, stack_vertical
from src.visualize import FrameSource, frame_label, iter_feature_items, token_grids, write_token_pictures

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PictureOptions:
    """How the pictures look: overlay opacity, frame labels, originals saved, one combined video."""

    alpha: float = 0.5
    annotate: bool = False
    original_images: bool = False
    combined: bool = False  # one side-by-side video of all views instead of one per view


def render(feature_files: list[Path], projections: dict, todo: dict, out: Path, options: PictureOptions,
           fps: float, timings: dict) -> list[Path]:
    """Stream windows: PNGs per temporal token, one animation frame per source frame. `todo`: the
    methods, PNGs, video views and formats asked for. Adds the seconds spent projecting tokens to
    colours to `timings["transform_s"]`."""
    written: list[Path] = []
    timings.setdefault("transform_s", 0.0)
    source = FrameSource()
    emitted: set[int] = set()  # frame ids already animated (overlapping windows repeat frames)
    with ExitStack() as stack:
        # PNGs encoded on worker threads (entered first: its jobs finish after the videos close);
        # each video fed from a thread of its own: GIF frames quantised there (fast octree), the MP4
        # piped to ffmpeg, which encodes in its own process
        workers = stack.enter_context(PictureWriters())
        writers: dict[str, list[VideoWriter]] = {}
        names = ["combined"] if options.combined and todo["views"] else todo["views"]
        for name in names:
            writers[name] = []
            for fmt in todo["formats"]:
                path = out / "videos" / f"{name}.{fmt}"
                path.parent.mkdir(parents=True, exist_ok=True)
                writers[name].append(stack.enter_context(VideoWriter(path, fps, fmt, background=True)))
                written.append(path)
        prepared = stack.enter_context(_Prepared(feature_files, projections, todo["methods"], source))
        for item, grids, ids, frames, transform_s in tqdm(prepared, total=len(feature_files), unit="win",
                                                          desc="pictures", disable=None):
            timings["transform_s"] += transform_s
            meta = item.metadata
            box = meta["crop_box"]
            overlays_at: dict[tuple[str, int], object] = {}  # (method, frame position) → its overlay

            def overlay_at(m: str, pos: int):
                if (m, pos) not in overlays_at:
                    overlays_at[m, pos] = overlay(frames[pos], grids[m][pos // 2], box, options.alpha)
                return overlays_at[m, pos]

            for m in todo["pngs"]:
                written += write_token_pictures(item, grids[m], ids, frames, out, m, options.alpha,
                                                annotate_frames=options.annotate, png=workers.png,
                                                overlay_at=lambda pos, m=m: overlay_at(m, pos))
            for pos, (frame_id, frame) in enumerate(zip(ids, frames)):
                if frame_id in emitted:
                    continue
                emitted.add(frame_id)
                label = frame_label(meta, frame_id, pos) if options.annotate else None
                original = annotate(frame, label) if label else frame
                if options.original_images:
                    written.append(workers.png(original, out / "original" / f"frame_{frame_id:06d}.png"))
                if not writers:
                    continue
                t = pos // 2  # each temporal token covers 2 source frames
                # each overlay once: the PNGs' (dropped here, as nothing reads it again) or a new one
                overlays = {m: overlays_at.pop((m, pos), None) for m in todo["methods"]}
                overlays = {m: overlay(frame, grids[m][t], box, options.alpha) if img is None else img
                            for m, img in overlays.items()}
                if label:
                    overlays = {m: annotate(img, f"{m.upper()}  {label}") for m, img in overlays.items()}
                views = {m: overlays[m] for m in ("umap", "pca") if m in todo["views"]}
                if "stacked" in todo["views"]:
                    views["stacked"] = stack_vertical([original, side_by_side(list(overlays.values()))], align="center")
                if "combined" in writers:
                    composed = {"combined": side_by_side(list(views.values()))}
                else:
                    composed = views
                for name, image in composed.items():
                    for writer in writers[name]:
                        writer.append(image, copy=False)  # composed for the videos alone, never changed
        for writer in (w for ws in writers.values() for w in ws):
            writer.finish()  # ffmpeg's last frames and the GIF's last frame at once, on their own threads
    source.close()
    return written


class _Prepared:
    """Each window with its colour grids and source frames, prepared on a thread one window ahead
    of the drawing: UMAP's transform (numba, single-threaded) runs beside the previous window's
    overlays and encoders instead of before them. The thread alone reads the files, in order."""

    def __init__(self, feature_files: list[Path], projections: dict, methods, source: FrameSource):
        self._items = iter_feature_items(feature_files)
        self._projections, self._methods, self._source = projections, list(methods), source
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="colours")

    def _next(self):
        item = next(self._items, None)
        if item is None:
            return None
        start = time.perf_counter()
        grids = {m: token_grids(item, self._projections[m]) for m in self._methods}
        transform_s = time.perf_counter() - start
        ids, frames = self._source.frames(item)
        return item, grids, ids, frames, transform_s

    def __iter__(self):
        ahead = self._pool.submit(self._next)
        while (window := ahead.result()) is not None:
            ahead = self._pool.submit(self._next)
            yield window

    def __enter__(self) -> "_Prepared":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def video_fps(feature_files: list[Path], fps: float | None, frame_step: int) -> float:
    """`fps` (--video_fps), else the sampling rate (--sample_fps) or the video's frame rate over
    `frame_step`, else 10."""
    first_meta = next(iter_feature_items(feature_files[:1])).metadata
    if fps:
        return fps
    if first_meta.get("source_type") != "video":
        return 10.0
    return first_meta.get("sample_fps") or first_meta["fps"] / frame_step


def warn_leftovers(out: Path, pictures: list[Path]) -> None:
    """Say which picture files in `out` this run did not write (an earlier run with other flags or
    windows): they stay on disk but are not in this run's package."""
    written = set(pictures)
    kinds = [f"{m}_{k}" for m in ("umap", "pca") for k in ("projection", "overlay")] + ["original", "videos"]
    for kind in kinds:
        stale = [p for p in sorted((out / kind).glob("*")) if p.is_file() and p not in written]
        if stale:
            logger.warning("%s: %d file(s) from an earlier run (e.g. %s) are not in this run's package; "
                           "delete them if unwanted", out / kind, len(stale), stale[0].name)
