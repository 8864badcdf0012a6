"""Window plans over a frame sequence, and the DataLoader datasets that decode + preprocess them.

A window is `window` consecutive frames of the sequence, started every `stride` frames. The tail
(frames after the last full window that a longer sequence would have put in the next window) is
explicit: `pad` repeats the last frame to fill one more window and records how many were
repeated; `drop` leaves them out with a warning. Nothing is lost silently.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from src.media import VideoReader, load_image

logger = logging.getLogger(__name__)

TAIL_MODES = ("pad", "drop")


@dataclass(frozen=True)
class Window:
    """One window: positions into the sequence (padded ones repeat the last real position)."""

    index: int
    positions: tuple[int, ...]
    num_padded: int = 0

    @property
    def real_positions(self) -> tuple[int, ...]:
        return self.positions[: len(self.positions) - self.num_padded]


def plan_windows(num_frames: int, window: int = 16, stride: int | None = None, tail: str = "pad",
                 tubelet_size: int = 2) -> list[Window]:
    """Windows over a sequence of `num_frames` frames (see the module docstring for the tail)."""
    stride = window if stride is None else stride
    if window <= 0 or window % tubelet_size:
        raise ValueError(f"window must be a positive multiple of {tubelet_size} frames, got {window}")
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    if tail not in TAIL_MODES:
        raise ValueError(f"tail must be one of {TAIL_MODES}, got '{tail}'")
    if num_frames <= 0:
        return []
    starts = list(range(0, num_frames - window + 1, stride))
    windows = [Window(i, tuple(range(s, s + window))) for i, s in enumerate(starts)]
    next_start = starts[-1] + stride if starts else 0
    if next_start < num_frames:  # a tail: frames a longer sequence would put in the next window
        real = tuple(range(next_start, num_frames))
        if tail == "pad":
            padded = real + (real[-1],) * (window - len(real))
            windows.append(Window(len(windows), padded, num_padded=window - len(real)))
        else:
            logger.warning("tail dropped: sequence positions %d..%d (%d frames) are in no window (--tail pad keeps them)",
                           real[0], real[-1], len(real))
    return windows


def temporal_mapping(frame_ids: list, tubelet_size: int = 2) -> list[list]:
    """For each temporal token, the frame ids (numbers or indices) it covers."""
    return [list(frame_ids[i:i + tubelet_size]) for i in range(0, len(frame_ids), tubelet_size)]


def check_frame_size(height: int, width: int, min_side: int, name: str = "frame") -> None:
    """Refuse frames smaller than one patch: upscaling a few pixels to the crop is not data."""
    if min(height, width) < min_side:
        raise ValueError(f"{name} is {width}×{height} px, smaller than one {min_side} px patch")


class _WindowDataset(Dataset):
    """Yields `{"window": k, "clip": [C,T,H,W], "image_hw": (h, w)}` or `{"window": k, "error": msg}`.

    Decoding errors are returned, not raised, so one bad frame costs one window, not the run.
    """

    def __init__(self, windows: list[Window], preprocess: Callable[[np.ndarray], torch.Tensor], min_side: int = 1):
        self.windows, self.preprocess, self.min_side = windows, preprocess, min_side

    def __len__(self) -> int:
        return len(self.windows)

    def read(self, positions: list[int]) -> np.ndarray:
        raise NotImplementedError

    def frame_name(self, position: int) -> str:
        """How an error message names the frame at sequence `position`."""
        return f"frame {position}"

    def __getitem__(self, k: int) -> dict:
        window = self.windows[k]
        try:
            unique = sorted(set(window.positions))
            frames = self.read(unique)  # [U, H, W, 3]
            # read() checked that a window's frames share one size: naming the first names them all
            check_frame_size(frames.shape[1], frames.shape[2], self.min_side, name=self.frame_name(unique[0]))
            lookup = {p: i for i, p in enumerate(unique)}
            clip = frames[[lookup[p] for p in window.positions]]
            return {"window": k, "clip": self.preprocess(clip), "image_hw": tuple(frames.shape[1:3])}
        except Exception as exc:
            return {"window": k, "error": str(exc) or type(exc).__name__}


class FrameWindowDataset(_WindowDataset):
    """Windows over image files (one per frame); all frames of a window must share one size."""

    def __init__(self, frame_paths: list[Path], windows: list[Window], preprocess, min_side: int = 1):
        super().__init__(windows, preprocess, min_side)
        self.frame_paths = list(frame_paths)

    def read(self, positions: list[int]) -> np.ndarray:
        images = [load_image(self.frame_paths[p]) for p in positions]
        sizes = {im.shape for im in images}
        if len(sizes) > 1:
            raise ValueError(f"frames of different sizes in one window: {sorted(sizes)} "
                             f"({self.frame_paths[positions[0]].name}..{self.frame_paths[positions[-1]].name})")
        return np.stack(images)

    def frame_name(self, position: int) -> str:
        return f"frame {self.frame_paths[position].name}"


class VideoWindowDataset(_WindowDataset):
    """Windows over a video's frames `frame_indices` (source indices, e.g. every `frame_step`-th).

    The reader is opened lazily in each DataLoader worker (decoders are not fork-safe).
    """

    def __init__(self, video_path: Path, frame_indices: list[int], windows: list[Window], preprocess,
                 backend: str = "auto", min_side: int = 1):
        super().__init__(windows, preprocess, min_side)
        self.video_path, self.frame_indices, self.backend = Path(video_path), list(frame_indices), backend
        self._reader: VideoReader | None = None

    def read(self, positions: list[int]) -> np.ndarray:
        if self._reader is None:
            self._reader = VideoReader(self.video_path, backend=self.backend)
        return self._reader.get_frames([self.frame_indices[p] for p in positions])

    def frame_name(self, position: int) -> str:
        return f"{self.video_path.name} frame {self.frame_indices[position]}"

    def __getstate__(self):  # never ship an open decoder to a worker process
        state = dict(self.__dict__)
        state["_reader"] = None
        return state


def batches_by_key(keys: list, batch_size: int) -> list[list[int]]:
    """Batches of at most `batch_size` positions into `keys` whose items share one key (e.g. a frame
    size, i.e. a token grid under `--spatial full`): clips of different grids cannot be stacked into
    one forward pass. Keys in order of first appearance, positions in order within a key; a None key
    (not known) is a batch of its own."""
    groups: dict = {}
    for position, key in enumerate(keys):
        groups.setdefault(("unknown", position) if key is None else key, []).append(position)
    return [members[i:i + batch_size] for members in groups.values() for i in range(0, len(members), batch_size)]


def worker_order(batches: list[list[int]], num_workers: int) -> list[list[int]]:
    """`batches` reordered so that each of `num_workers` DataLoader workers, which take batches in
    turn (batch j goes to worker j mod W), gets one contiguous run of them: a video decoder in each
    worker then reads its windows in order, in one pass, instead of skipping W−1 windows between
    reads (decoding through them when no keyframe lies between). Every batch is kept, once."""
    if num_workers <= 1 or len(batches) <= num_workers:
        return list(batches)
    size, extra = divmod(len(batches), num_workers)
    blocks, start = [], 0
    for w in range(num_workers):  # the first `extra` blocks one batch longer
        end = start + size + (w < extra)
        blocks.append(batches[start:end])
        start = end
    return [block[i] for i in range(size + 1) for block in blocks if i < len(block)]


def collate_windows(items: list[dict]) -> dict:
    """Stack the decoded clips of a batch; pass failures through as (window, message)."""
    ok = [it for it in items if "clip" in it]
    return {
        "clips": torch.stack([it["clip"] for it in ok]) if ok else None,  # [B, C, T, H, W]
        "windows": [it["window"] for it in ok],
        "image_hw": [it["image_hw"] for it in ok],
        "errors": [(it["window"], it["error"]) for it in items if "error" in it],
    }


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a Slurm or taskset share, not the node)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS, Windows)
        return os.cpu_count() or 1


def default_num_workers(device: torch.device | str | None = None) -> int:
    """DataLoader workers when none are asked for: 0 on a CPU; on a GPU one per core this process was
    given, less one for the main process (which feeds the GPU and writes).

    On a CPU the forward pass wants every core and decoding is a few % of its time, so a worker
    costs more than it hides (bench/PERFORMANCE.md: 4–27 % slower with 1 worker on 2 cores); a
    GPU needs workers to stay fed.
    """
    if device is None or torch.device(device).type == "cpu":
        return 0
    return max(0, available_cores() - 1)


def _set_cv2_threads(count: int | None) -> int | None:
    """OpenCV's thread count set to `count` (None: unchanged); the previous one, None without cv2."""
    try:
        import cv2
    except ImportError:
        return None
    previous = cv2.getNumThreads()
    if count is not None and count != previous:
        cv2.setNumThreads(count)
    return previous


@contextmanager
def decoding_workers(num_workers: int) -> Iterator[None]:
    """While DataLoader workers are forked: OpenCV at one thread in this process, so that the workers
    inherit it. Setting it in a forked worker instead deadlocks when this process had already used
    OpenCV's thread pool (its threads do not exist in the child, their condition variables stay
    held). The main process does no decoding while workers do; its count is restored after."""
    previous = _set_cv2_threads(1) if num_workers > 0 else None
    try:
        yield
    finally:
        if previous is not None:
            _set_cv2_threads(previous)


def worker_init(_worker_id: int) -> None:
    """One thread per DataLoader worker (torch, OpenMP, OpenCV: see `decoding_workers`): W workers ×
    every core each would oversubscribe the CPU, and the main process needs its core."""
    os.environ["OMP_NUM_THREADS"] = "1"  # libraries that start their OpenMP pool after this point
    torch.set_num_threads(1)
