"""What a window run reads: a folder of numbered frames or a video, as a `WindowSource` (its windows,
the dataset that decodes them, each window's frame sizes and its metadata). Inputs are checked
(frames found, no gaps unless allowed, at least one window) before the model is asked for."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch.utils.data import Dataset

from src.errors import ConfigError
from src.frames import VideoReader, find_frames, find_gaps, read_image_size
from src.media.sampling import sample_video
from src.inference import ClipEncoder
from src.text_files import read_text
from src.windows import FrameWindowDataset, VideoWindowDataset, Window, plan_windows, temporal_mapping

logger = logging.getLogger(__name__)

VIDEO_LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass(frozen=True)
class WindowPlan:
    """How a sequence is cut into windows (see `src.windows.plan_windows`)."""

    window: int = 16
    stride: int | None = None  # None: `window` (no overlap)
    tail: str = "pad"

    def __post_init__(self):
        try:  # before any model loads
            plan_windows(self.window, self.window, self.stride, self.tail)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def count(self, available: int, stride: int | None = None) -> int:
        """How many windows `windows` makes of `available` frames (0 for fewer than one window)."""
        if available < self.window:
            return 0
        stride = stride or self.stride or self.window
        full = (available - self.window) // stride + 1
        return full + int(self.tail == "pad" and full * stride < available)

    def windows(self, available: int, what: str, stride: int | None = None) -> list[Window]:
        if available < self.window:
            raise ConfigError(f"{what}, fewer than one window of {self.window} "
                              f"(use --window {available - available % 2} or less)")
        return plan_windows(available, self.window, stride or self.stride or self.window, self.tail)


@dataclass
class WindowSource:
    """One input's windows. `metadata(window)`: what a window's record says about its frames;
    `sizes`: each window's (height, width) where the token grid depends on it (`full`), else None."""

    name: str
    windows: list[Window]
    dataset: Dataset
    metadata: Callable[[Window], dict]
    sizes: list | None = None

    @property
    def input_name(self) -> str:
        """The input by name (a folder copied to node-local scratch still resumes)."""
        meta = self.metadata(self.windows[0])
        return Path(meta.get("video_path") or meta["frame_dir"]).name


def frame_folder(frame_dir: str | Path, plan: WindowPlan, encoder: Callable[[], ClipEncoder], *,
                 frame_pattern: str, allow_gaps: bool = False, first_frame: int | None = None,
                 last_frame: int | None = None, stride: int | None = None) -> WindowSource:
    """Windows over the numbered frames of `frame_dir` (numbers first_frame..last_frame, inclusive).
    `encoder` is called once the frames are checked (a hub ViT-g takes minutes to load)."""
    frame_dir = Path(frame_dir)
    if first_frame is not None and last_frame is not None and first_frame > last_frame:
        raise ConfigError(f"--first_frame {first_frame} is after --last_frame {last_frame}")
    frames = find_frames(frame_dir, frame_pattern, first_frame, last_frame)
    if not frames:
        bounds = {(False, False): "", (True, False): f" from frame {first_frame} on",
                  (False, True): f" up to frame {last_frame}",
                  (True, True): f" between frames {first_frame} and {last_frame}"}
        raise ConfigError(f"{frame_dir}: no frame files match the pattern '{frame_pattern}'"
                          + bounds[first_frame is not None, last_frame is not None])
    gaps = find_gaps([n for n, _ in frames])
    if gaps:
        listed = ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in gaps[:10])
        message = f"{frame_dir}: missing frame numbers {listed}" + (" …" if len(gaps) > 10 else "")
        if not allow_gaps:
            raise ConfigError(message + " (pass --allow_gaps to proceed over them)")
        logger.warning("%s; proceeding (--allow_gaps)", message)
    windows = plan.windows(len(frames), f"{frame_dir}: {len(frames)} frames", stride)
    enc = encoder()
    dataset = FrameWindowDataset([p for _, p in frames], windows, enc.transform, min_side=enc.architecture.patch_size)
    # `full`: a window's grid follows its frames' size (headers only), to batch equal grids together
    sizes = [read_image_size(frames[w.positions[0]][1]) for w in windows] if enc.spatial.mode == "full" else None

    def metadata(window: Window) -> dict:
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

    return WindowSource(str(frame_dir), windows, dataset, metadata, sizes)


def video(video_path: str | Path, plan: WindowPlan, encoder: Callable[[], ClipEncoder], *, frame_step: int = 1,
          backend: str = "auto", first_frame: int | None = None, last_frame: int | None = None,
          stride: int | None = None, sample_fps: float | None = None) -> WindowSource:
    """Windows over every `frame_step`-th frame of a video (frame indices from 0, optionally only
    `first_frame`..`last_frame`, inclusive), or over `sample_fps` frames per second of video time
    (from the presentation timestamps). The video is opened before the model loads; frames are
    turned as a player shows them (the container's rotation and flips)."""
    video_path = Path(video_path)
    if frame_step <= 0:
        raise ConfigError(f"--frame_step must be positive, got {frame_step}")
    if first_frame is not None and last_frame is not None and first_frame > last_frame:
        raise ConfigError(f"--first_frame {first_frame} is after --last_frame {last_frame}")
    if min(first_frame or 0, last_frame if last_frame is not None else 0) < 0:
        raise ConfigError("--first_frame and --last_frame are video frame indices, from 0")
    if not video_path.is_file():
        raise FileNotFoundError(f"{video_path}: video not found")
    with VideoReader(video_path, backend=backend) as reader:
        start = first_frame or 0
        if start >= reader.num_frames:
            raise ConfigError(f"{video_path}: --first_frame {start} is past the last frame ({reader.num_frames - 1})")
        stop = reader.num_frames if last_frame is None else min(last_frame + 1, reader.num_frames)
        sampled = sample_video(reader, frame_step, sample_fps, first_frame, last_frame)
        indices, timestamps = sampled.indices, sampled.timestamps
        fps = reader.fps
        frame_hw = (reader.height, reader.width)  # as displayed (rotation applied)
        read_as = {**reader.metadata(), "sample_fps": sample_fps}  # backend, coded size, rotation, flip
    span = f"frames {start}..{stop - 1}, " if first_frame is not None or last_frame is not None else ""
    chosen = f"sample_fps {sample_fps}" if sample_fps else f"frame_step {frame_step}"
    windows = plan.windows(len(indices), f"{video_path}: {len(indices)} frames ({span}{chosen})", stride)
    enc = encoder()
    dataset = VideoWindowDataset(video_path, indices, windows, enc.transform, backend=read_as["video_backend"],
                                 min_side=enc.architecture.patch_size)

    def metadata(window: Window) -> dict:
        used = [indices[p] for p in window.positions]
        return {
            "source_type": "video",
            "video_path": str(video_path.resolve()),
            "fps": fps,
            "frame_step": frame_step,
            **read_as,
            "frame_numbers": used,
            "timestamps": [timestamps[p] for p in window.positions],
            "start_frame": indices[window.real_positions[0]],
            "end_frame": indices[window.real_positions[-1]],
            "temporal_mapping": temporal_mapping(used),
        }

    sizes = [frame_hw] * len(windows) if enc.spatial.mode == "full" else None
    return WindowSource(str(video_path), windows, dataset, metadata, sizes)


def window_count(kind: str, path: Path, plan: WindowPlan, *, frame_pattern: str, first_frame: int | None = None,
                 last_frame: int | None = None, frame_step: int = 1, sample_fps: float | None = None) -> int:
    """The windows an input will have, from its file names or the video's header (no decoding), to
    share inputs out among shards; 0 for an input that cannot be read (it fails where it lands)."""
    try:
        if kind == "frames":
            available = len(find_frames(Path(path), frame_pattern, first_frame, last_frame))
        else:
            with VideoReader(path) as reader:
                stop = reader.num_frames if last_frame is None else min(last_frame + 1, reader.num_frames)
                available = len(range(first_frame or 0, stop, max(frame_step, 1)))
                if sample_fps:  # from the header's rate: close enough to balance shards
                    available = int((stop - (first_frame or 0)) / reader.fps * sample_fps)
    except Exception:  # noqa: BLE001 - the input's own run reports why
        return 0
    return plan.count(available)


def expand_videos(entries: list[str]) -> list[Path]:
    """Video paths from --video values; a .txt/.lst/.list file lists one video per line (# comments),
    as UTF-8 (a BOM dropped; another encoding is an InputError naming the file)."""
    videos = []
    for entry in entries:
        path = Path(entry)
        if path.suffix.lower() in VIDEO_LIST_SUFFIXES:
            if not path.is_file():
                raise FileNotFoundError(f"{path}: video list not found")
            lines = [ln.strip() for ln in read_text(path, "video list").splitlines()]
            videos += [(path.parent / ln) if not Path(ln).is_absolute() else Path(ln)
                       for ln in lines if ln and not ln.startswith("#")]
        else:
            videos.append(path)
    return videos
