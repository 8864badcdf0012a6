"""Discover and read inputs: image files, numbered frame folders and videos."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import UnidentifiedImageError, Image, ImageOps

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
DEFAULT_IMAGE_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.tif", "*.tiff")
DEFAULT_FRAME_PATTERN = r"frame_(\d+)\.[^./\\]+$"

VIDEO_BACKENDS = ("auto", "decord", "pyav")

# PIL modes holding more than 8 bits per sample; these are rescaled, not truncated.
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


# --------------------------------------------------------------------------- images


def _is_hidden(name: str) -> bool:
    # Dot-files are never inputs: macOS "._x.jpg" AppleDouble files and our own
    # ".x.tmp" partial writes would otherwise be picked up as images.
    return name.startswith(".")


def find_images(
    root: str | os.PathLike,
    patterns: str | Sequence[str] | None = None,
    recursive: bool = False,
) -> list[Path]:
    """Image files under ``root`` whose name matches a glob pattern (case-insensitive).

    Sorted by the path relative to ``root`` (posix string); hidden (dot) files and
    folders are skipped. A pattern containing "/" is matched on the relative path.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: image folder does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    if patterns is None:
        patterns = DEFAULT_IMAGE_PATTERNS
    elif isinstance(patterns, str):
        patterns = (patterns,)
    lowered = [p.lower() for p in patterns]

    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if recursive:
            dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
        else:
            dirnames[:] = []
        for name in filenames:
            if _is_hidden(name):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            target_name, target_rel = name.lower(), rel.lower()
            if not any(
                fnmatch.fnmatchcase(target_rel if "/" in p else target_name, p) for p in lowered
            ):
                continue
            if path.is_file():  # follows symlinks; drops sockets, broken links etc.
                found[rel] = path
    return [found[rel] for rel in sorted(found)]


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Linearly map the finite min..max of ``values`` to 0..255 (NaN -> 0)."""
    data = values.astype(np.float64, copy=False)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, dtype=np.uint8)
    lo = float(data[finite].min())
    hi = float(data[finite].max())
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.uint8)
    # +inf/-inf clip to the ends of the finite range; NaN becomes 0.
    scaled = (np.clip(data, lo, hi) - lo) * (255.0 / (hi - lo))
    scaled = np.nan_to_num(scaled, nan=0.0)
    return np.rint(scaled).astype(np.uint8)


def _array_to_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """[H,W], [H,W,1], [H,W,3] or [H,W,4] array of any numeric dtype -> [H,W,3] uint8."""
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]  # alpha is dropped, not composited
    elif array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"{name}: unsupported image array shape {tuple(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: empty image array {tuple(array.shape)}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"{name}: unsupported image dtype {array.dtype}")
        # One min..max over all channels keeps the colour balance of RGB data.
        array = _scale_to_uint8(array)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return np.ascontiguousarray(array)


def _pil_to_rgb(image: Image.Image, name: str) -> np.ndarray:
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode in _HIGH_DEPTH_MODES:
        return _array_to_rgb(np.asarray(image), name)
    if mode in ("RGBA", "LA", "PA", "RGBX", "RGBa", "La"):
        # Alpha is dropped (colour channels kept as stored), not composited.
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if mode == "P" and "transparency" in image.info:
        return np.asarray(image.convert("RGBA").convert("RGB"), dtype=np.uint8).copy()
    try:
        # L, 1, P, CMYK, YCbCr, LAB, HSV and friends all have an RGB conversion.
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    except (ValueError, OSError) as exc:
        raise ValueError(f"{name}: cannot read image (unsupported mode {mode}: {exc})") from exc


# File signatures of formats Pillow reads, to tell "not an image" from "an image Pillow cannot
# decode" (e.g. a TIFF with 2 samples per pixel) when Pillow identifies nothing.
_SIGNATURES = {
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF", b"GIF89a": "GIF", b"BM": "BMP",
}


def _signature_format(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _SIGNATURES.items() if head.startswith(magic)), None)


def load_image(src: str | os.PathLike | Image.Image | np.ndarray) -> np.ndarray:
    """Read an image as an ``[H, W, 3]`` uint8 RGB array.

    Accepts a path, a PIL image or a numpy array. EXIF orientation is applied;
    alpha is dropped; 16-bit and float data are scaled from their finite
    min..max to 0..255 (constant images become 0, NaN becomes 0).
    """
    if isinstance(src, np.ndarray):
        return _array_to_rgb(src, "<array>")
    if isinstance(src, Image.Image):
        name = getattr(src, "filename", "") or "<PIL image>"
        try:
            src.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise ValueError(f"{name}: cannot read image ({exc})") from exc
        return _pil_to_rgb(src, str(name))
    if not isinstance(src, (str, os.PathLike)):
        raise TypeError(f"load_image: unsupported input type {type(src).__name__}")

    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file does not exist")
    try:
        # Opening from a file handle, not a name, keeps PIL off its mmap path, which
        # mangles uncompressed single-band TIFFs with a rotating EXIF orientation
        # (Pillow 13: pixel data read with swapped width/height).
        with open(path, "rb") as handle, Image.open(handle) as image:
            # .load() forces a full decode so truncated files fail here, not later.
            image.load()
            return _pil_to_rgb(image, str(path))
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read image ({exc})") from exc
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError is an OSError; truncated data raises OSError too.
        if path.stat().st_size == 0:
            reason = "empty file"
        elif isinstance(exc, UnidentifiedImageError):  # PIL's own text names the file handle
            kind = _signature_format(path)
            reason = (f"a {kind} file, but not one Pillow can decode (unsupported layout, or damaged)"
                      if kind else "not a recognised image format")
        else:
            reason = str(exc)
        raise ValueError(f"{path}: cannot read image ({reason})") from exc


def read_image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(height, width)`` of an image file as :func:`load_image` returns it (EXIF rotation applied),
    from its header only (no decoding); None if the header cannot be read (load_image will say why)."""
    try:
        with open(path, "rb") as handle, Image.open(handle) as image:
            width, height = image.size
            # orientations 5-8 are transposes / quarter turns: exif_transpose swaps the sides
            rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - any header problem: unknown here, load_image reports it
        return None
    return (int(width), int(height)) if rotated else (int(height), int(width))


# --------------------------------------------------------------------------- frames


def _compile_frame_pattern(pattern: str | re.Pattern) -> re.Pattern:
    compiled = re.compile(pattern) if isinstance(pattern, str) else pattern
    if compiled.groups != 1:
        raise ValueError(
            f"frame pattern {compiled.pattern!r} must have exactly one capture group "
            f"(has {compiled.groups})"
        )
    return compiled


def _frame_number(compiled: re.Pattern, name: str) -> int | None:
    match = compiled.search(name)
    if match is None or match.group(1) is None:
        return None
    try:
        return int(match.group(1))
    except ValueError:
        raise ValueError(
            f"{name}: frame pattern {compiled.pattern!r} captured {match.group(1)!r}, "
            "not an integer"
        ) from None


def parse_frame_number(name: str | os.PathLike, pattern: str = DEFAULT_FRAME_PATTERN) -> int | None:
    """Frame number found by ``pattern`` in the file name, or None if it does not match."""
    return _frame_number(_compile_frame_pattern(pattern), Path(name).name)


def find_frames(
    frame_dir: str | os.PathLike,
    pattern: str = DEFAULT_FRAME_PATTERN,
    first_frame: int | None = None,
    last_frame: int | None = None,
) -> list[tuple[int, Path]]:
    """``(frame_number, path)`` for matching files in ``frame_dir``, sorted numerically.

    Only frames within ``first_frame..last_frame`` (inclusive) are returned; two
    files with the same frame number in that range raise ValueError.
    """
    frame_dir = Path(frame_dir)
    compiled = _compile_frame_pattern(pattern)
    if not frame_dir.exists():
        raise FileNotFoundError(f"{frame_dir}: frame folder does not exist")
    if not frame_dir.is_dir():
        raise NotADirectoryError(f"{frame_dir}: not a folder")
    if first_frame is not None and last_frame is not None and first_frame > last_frame:
        raise ValueError(f"{frame_dir}: first_frame {first_frame} > last_frame {last_frame}")

    with os.scandir(frame_dir) as entries:
        names = [(entry.name, entry.is_file()) for entry in entries]
    frames: dict[int, Path] = {}
    for name, is_file in names:
        if _is_hidden(name):
            continue
        number = _frame_number(compiled, name)
        if number is None or not is_file:
            continue
        if first_frame is not None and number < first_frame:
            continue
        if last_frame is not None and number > last_frame:
            continue
        path = frame_dir / name
        if number in frames:
            a, b = sorted([frames[number].name, name])
            raise ValueError(f"{frame_dir}: frame number {number} appears twice ({a}, {b})")
        frames[number] = path
    return [(n, frames[n]) for n in sorted(frames)]


def find_gaps(numbers: Iterable[int]) -> list[tuple[int, int]]:
    """Missing inclusive ranges between consecutive numbers: [1,2,5] -> [(3, 4)]."""
    ordered = sorted(set(int(n) for n in numbers))
    return [(a + 1, b - 1) for a, b in zip(ordered, ordered[1:]) if b - a > 1]


# --------------------------------------------------------------------------- video


def _import_decord():
    try:
        import decord
    except ImportError:
        return None
    return decord


class VideoReader:
    """Random access to the frames of a video (decord, falling back to PyAV).

    ``backend="auto"`` uses decord when importable and PyAV when decord is missing
    or cannot open the file. Frames come back as ``[T, H, W, 3]`` uint8 RGB.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto"):
        if backend not in VIDEO_BACKENDS:
            raise ValueError(f"{path}: unknown video backend {backend!r} (use {VIDEO_BACKENDS})")
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: cannot read video (file does not exist)")
        if self.path.stat().st_size == 0:
            raise ValueError(f"{self.path}: cannot read video (empty file)")
        self._vr = None  # decord.VideoReader
        self._pts: list[float] | None = None  # PyAV presentation times, seconds
        self._shape: tuple[int, int] | None = None

        if backend in ("auto", "decord"):
            decord = _import_decord()
            if decord is None:
                if backend == "decord":
                    raise ValueError(f"{self.path}: cannot read video (decord is not installed)")
            else:
                try:
                    self._open_decord(decord)
                    return
                except ValueError as exc:
                    if backend == "decord":
                        raise
                    # decord rejects some files PyAV can still read (codec/container gaps).
                    logger.warning("%s; trying PyAV", exc)
        self._open_pyav()

    # -- opening

    def _open_decord(self, decord) -> None:
        try:
            vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
            num_frames = len(vr)
            fps = float(vr.get_avg_fps())
            # Decode frame 0 now: decord 0.6 opens videos narrower than 64 px but fails on every
            # frame copy ("DECORDArrayCopyFromTo"); failing here lets "auto" fall back to PyAV.
            first = vr.get_batch([0]).asnumpy()[0] if num_frames > 0 else None
        except Exception as exc:  # decord raises DECORDError/RuntimeError with C++ traces
            raise ValueError(f"{self.path}: cannot read video ({_short(exc)})") from exc
        if num_frames <= 0:
            raise ValueError(f"{self.path}: cannot read video (no frames)")
        self._shape = (int(first.shape[0]), int(first.shape[1]))
        self._vr = vr
        self._num_frames = num_frames
        self._fps = fps
        self._backend = "decord"

    def _open_pyav(self) -> None:
        try:
            import av
        except ImportError as exc:
            raise ValueError(f"{self.path}: cannot read video (PyAV is not installed)") from exc
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise LookupError("no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self._shape = (int(stream.codec_context.height), int(stream.codec_context.width))
                start = stream.start_time or 0
                time_base = stream.time_base
                # Demuxing (no decoding) gives frame count and real pts cheaply.
                pts = sorted(
                    float((p.pts - start) * time_base)
                    for p in container.demux(stream)
                    if p.pts is not None and p.size > 0
                )
                claimed = int(stream.frames or 0)
        except Exception as exc:  # av.FFmpegError (a ValueError/OSError subclass) and friends
            raise ValueError(f"{self.path}: cannot read video ({_short(exc)})") from exc
        num_frames = claimed if claimed > 0 else len(pts)
        if num_frames <= 0:
            raise ValueError(f"{self.path}: cannot read video (no frames)")
        if rate:
            fps = float(rate)
        elif len(pts) > 1 and pts[-1] > pts[0]:
            fps = (len(pts) - 1) / (pts[-1] - pts[0])
        else:
            raise ValueError(f"{self.path}: cannot read video (unknown frame rate)")
        self._num_frames = num_frames
        self._fps = fps
        self._pts = pts if len(pts) == num_frames else None
        self._backend = "pyav"

    # -- properties

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def height(self) -> int:
        return self._frame_shape()[0]

    @property
    def width(self) -> int:
        return self._frame_shape()[1]

    def _frame_shape(self) -> tuple[int, int]:
        if self._shape is None:
            # decord has no size attribute; decoding frame 0 once is cheap.
            first = self.get_frames([0])
            self._shape = (int(first.shape[1]), int(first.shape[2]))
        return self._shape

    # -- reading

    def _check_indices(self, indices: Iterable[int]) -> list[int]:
        checked = []
        for i in indices:
            i = int(i)
            if not 0 <= i < self._num_frames:
                raise ValueError(
                    f"{self.path}: frame index {i} out of range (video has "
                    f"{self._num_frames} frames)"
                )
            checked.append(i)
        return checked

    def get_frames(self, indices: Iterable[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as ``[T, H, W, 3]`` uint8."""
        wanted = self._check_indices(indices)
        if not wanted:
            h, w = self._frame_shape()
            return np.zeros((0, h, w, 3), dtype=np.uint8)
        if self._backend == "decord":
            if self._vr is None:
                raise ValueError(f"{self.path}: cannot read video (reader is closed)")
            try:
                frames = self._vr.get_batch(wanted).asnumpy()
            except Exception as exc:
                raise ValueError(f"{self.path}: cannot read video ({_short(exc)})") from exc
            if frames.shape[0] != len(wanted):
                raise ValueError(
                    f"{self.path}: cannot read video (asked for {len(wanted)} frames, "
                    f"got {frames.shape[0]})"
                )
            return np.ascontiguousarray(frames, dtype=np.uint8)
        return self._pyav_frames(wanted)

    def _pyav_frames(self, wanted: list[int]) -> np.ndarray:
        import av

        needed = set(wanted)
        last = max(wanted)
        decoded: dict[int, np.ndarray] = {}
        index = -1
        try:
            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                # Sequential decode from the start: slow for long videos but exact.
                for index, frame in enumerate(container.decode(stream)):
                    if index in needed:
                        decoded[index] = frame.to_ndarray(format="rgb24")
                    if index >= last:
                        break
        except Exception as exc:
            raise ValueError(
                f"{self.path}: cannot read video (decoding failed after {index + 1} frames: "
                f"{_short(exc)})"
            ) from exc
        if index < last:
            raise ValueError(
                f"{self.path}: cannot read video (only {index + 1} of {self._num_frames} "
                f"frames decodable; frame {last} requested)"
            )
        return np.stack([decoded[i] for i in wanted]).astype(np.uint8, copy=False)

    def timestamps(self, indices: Iterable[int]) -> list[float]:
        """Presentation time in seconds of each frame, relative to the stream start."""
        wanted = self._check_indices(indices)
        if not wanted:
            return []
        if self._backend == "decord":
            try:
                return [float(t) for t in self._vr.get_frame_timestamp(wanted)[:, 0]]
            except Exception as exc:
                logger.debug("%s: decord timestamps failed (%s); using index / fps", self.path, exc)
        elif self._pts is not None:
            return [self._pts[i] for i in wanted]
        return [i / self._fps for i in wanted]

    # -- lifetime

    def close(self) -> None:
        """Release the decoder (decord keeps the file open)."""
        self._vr = None

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __len__(self) -> int:
        return self._num_frames

    def __repr__(self) -> str:
        return (
            f"VideoReader({str(self.path)!r}, backend={self._backend!r}, "
            f"num_frames={self._num_frames}, fps={self._fps:.3f})"
        )


def _short(exc: BaseException) -> str:
    """First line of an exception message; decord appends multi-line C++ traces."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:300]
