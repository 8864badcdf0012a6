"""Turn per-token colours into pictures aligned with the source frames, and write them.

Token ``n`` of a window maps to ``(t, h, w)`` in t-major, then h, then w order
(``n = (t * Hp + h) * Wp + w``); each temporal token covers ``tubelet_size``
(2) source frames. Features cover the box recorded in their metadata (the
eval centre crop, or the whole frame with ``--spatial full``; any Hp × Wp grid),
so overlays colour exactly that box and leave the rest of the frame untouched.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import secrets
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import GifImagePlugin, Image, ImageDraw

from src.background import BackgroundWriter

logger = logging.getLogger(__name__)

__all__ = [
    "token_colors_to_grids",
    "grid_for_frame",
    "crop_box_pixels",
    "upscale_nearest",
    "projection_image",
    "overlay",
    "annotate",
    "stack_vertical",
    "side_by_side",
    "VideoWriter",
    "write_png",
    "PictureWriters",
    "VIDEO_FORMATS",
]

VIDEO_FORMATS = ("mp4", "gif")

# x264 CRF used for MP4s: visibly lossless for flat patch colours, and the
# files stay small. (imageio-ffmpeg's ``quality`` maps coarsely onto CRF.)
_MP4_CRF = 18
# x264 preset: "veryfast" encodes the example's 32 stacked 1280×720 frames in 0.51 s of CPU against
# 0.88 s for "faster" and ~3 s for the default "medium", to a smaller file (851 against 978 KB) at
# 37.3 against 37.5 dB PSNR from the drawn frames (yuv420p included).
_MP4_PRESET = "veryfast"
# zlib level of PNGs: the example run's 64 PNGs take 0.53 CPU-s at level 1, 0.69 at 3 and 1.87 at
# PIL's default 6, for 11.1, 10.8 and 10.3 MB (same pixels; only the bytes differ).
PNG_COMPRESS_LEVEL = 1


# --------------------------------------------------------------------------- helpers


def _as_rgb(image, name: str) -> np.ndarray:
    """``image`` as a ``uint8 [H, W, 3]`` array; integer inputs in [0, 255] are cast."""
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"{name}: expected an RGB image [H, W, 3], got shape {arr.shape}")
    if arr.dtype != np.uint8:
        # Floats are ambiguous ([0, 1] or [0, 255]); refuse rather than guess.
        if not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
            raise ValueError(f"{name}: expected uint8 (or integer) pixels, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError(f"{name}: integer pixels must lie in [0, 255]")
        arr = arr.astype(np.uint8)
    return arr


def _temp_path(path: Path, suffix: str = ".part") -> Path:
    """A fresh hidden temporary file next to ``path`` (same filesystem, so os.replace is atomic).

    Created with mode 0666 less the umask, like any new file (tempfile.mkstemp would make it 0600,
    and the rename would keep that: pictures colleagues on a shared cluster could not read).
    """
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _remove_quietly(path: Path | None) -> None:
    if path is None:
        return
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as err:  # pragma: no cover - best effort cleanup
        logger.warning("could not remove temporary file %s: %s", path, err)


# --------------------------------------------------------------------------- grids


def token_colors_to_grids(colors, grid: Sequence[int]) -> np.ndarray:
    """Reshape per-token colours ``[N, 3]`` into ``[Tp, Hp, Wp, 3]`` (t-major, then h, then w)."""
    if len(grid) != 3:
        raise ValueError(f"token_colors_to_grids: grid must be (Tp, Hp, Wp), got {grid!r}")
    tp, hp, wp = (int(g) for g in grid)
    if min(tp, hp, wp) <= 0:
        raise ValueError(f"token_colors_to_grids: grid sizes must be positive, got {grid!r}")
    arr = np.asarray(colors)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"token_colors_to_grids: colors must be [N, 3], got shape {arr.shape}")
    expected = tp * hp * wp
    if arr.shape[0] != expected:
        raise ValueError(
            f"token_colors_to_grids: got N={arr.shape[0]} colours but grid {tp}x{hp}x{wp} "
            f"has Tp*Hp*Wp={expected} tokens"
        )
    arr = _as_rgb(arr[None], "token_colors_to_grids")[0]
    return arr.reshape(tp, hp, wp, 3)


def grid_for_frame(grids: np.ndarray, frame_offset: int, tubelet_size: int = 2) -> np.ndarray:
    """The ``[Hp, Wp, 3]`` grid covering frame ``frame_offset`` of the window."""
    if tubelet_size <= 0:
        raise ValueError(f"grid_for_frame: tubelet_size must be positive, got {tubelet_size}")
    t = int(frame_offset) // int(tubelet_size)
    if frame_offset < 0 or t >= grids.shape[0]:
        raise IndexError(
            f"grid_for_frame: frame offset {frame_offset} outside the window "
            f"({grids.shape[0]} temporal tokens x {tubelet_size} frames)"
        )
    return grids[t]


# --------------------------------------------------------------------------- geometry


def crop_box_pixels(crop_box: Mapping[str, float], height: int, width: int) -> tuple[int, int, int, int]:
    """Integer ``(x0, y0, x1, y1)`` of a float crop box (x1/y1 exclusive), clamped to the image.

    Edges round half up (``floor(v + 0.5)``): edges are pixel-boundary
    coordinates, so the nearest boundary is wanted, without banker's rounding.
    """
    try:
        edges = [float(crop_box[k]) for k in ("x0", "y0", "x1", "y1")]
    except KeyError as err:
        raise ValueError(f"crop_box_pixels: crop box lacks key {err}; got keys {sorted(crop_box)}") from None
    if not all(math.isfinite(v) for v in edges):
        raise ValueError(f"crop_box_pixels: non-finite crop box {edges}")
    x0, y0, x1, y1 = (int(math.floor(v + 0.5)) for v in edges)
    x0, x1 = (min(max(v, 0), int(width)) for v in (x0, x1))
    y0, y1 = (min(max(v, 0), int(height)) for v in (y0, y1))
    return x0, y0, max(x1, x0), max(y1, y0)


def upscale_nearest(grid_img, out_h: int, out_w: int) -> np.ndarray:
    """Block-upscale ``[Hp, Wp, 3]`` to ``[out_h, out_w, 3]``; output row i shows patch ``(i*Hp)//out_h``.

    Integer index mapping keeps every patch a flat block with exact
    boundaries (no interpolation, no floating-point drift).
    """
    grid = _as_rgb(grid_img, "upscale_nearest")
    out_h, out_w = int(out_h), int(out_w)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"upscale_nearest: output size must be positive, got {out_h}x{out_w}")
    hp, wp = grid.shape[:2]
    rows = (np.arange(out_h) * hp) // out_h
    cols = (np.arange(out_w) * wp) // out_w
    return grid.take(rows, axis=0).take(cols, axis=1)  # = grid[rows[:, None], cols[None, :]], 5x faster


def projection_image(grid_img, scale: int = 16) -> np.ndarray:
    """The patch grid as a picture, each patch a ``scale x scale`` block: ``[Hp*scale, Wp*scale, 3]``."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"projection_image: scale must be a positive integer, got {scale!r}")
    grid = _as_rgb(grid_img, "projection_image")
    scale = int(scale)
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


@functools.lru_cache(maxsize=8)
def _blend_table(alpha: float) -> np.ndarray:
    """``table[f, c] = round((1 - alpha) * f + alpha * c)`` for all bytes f, c (float64, halves to even)."""
    values = np.arange(256, dtype=np.float64)
    blended = np.rint((1.0 - alpha) * values[:, None] + alpha * values[None, :])
    table = np.clip(blended, 0, 255).astype(np.uint8)
    table.setflags(write=False)
    return table


def overlay(frame, grid_img, crop_box: Mapping[str, float] | None, alpha: float = 0.5) -> np.ndarray:
    """Blend the patch colours over the crop box of ``frame``; outside the box the frame is unchanged.

    Inside: ``round((1 - alpha) * frame + alpha * colour)`` with the grid
    block-upscaled to the box size. ``crop_box=None`` means the whole frame.
    """
    if not (0.0 <= float(alpha) <= 1.0):
        raise ValueError(f"overlay: alpha must be in [0, 1], got {alpha!r}")
    frame = _as_rgb(frame, "overlay frame")
    height, width = frame.shape[:2]
    if crop_box is None:
        x0, y0, x1, y1 = 0, 0, width, height
    else:
        x0, y0, x1, y1 = crop_box_pixels(crop_box, height, width)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        logger.warning("overlay: crop box %s is empty in a %dx%d frame; nothing coloured", crop_box, height, width)
        return out
    patch = upscale_nearest(grid_img, y1 - y0, x1 - x0)
    # the blend of every (frame, colour) pair of bytes, looked up: 8-bit gathers instead of float64
    # arithmetic over the box, and by construction the same bytes as the formula
    out[y0:y1, x0:x1] = _blend_table(float(alpha))[frame[y0:y1, x0:x1], patch]
    return out


# --------------------------------------------------------------------------- composition


def annotate(image, text: str, *, margin: int = 2, padding: int = 3) -> np.ndarray:
    """Draw ``text`` (white on a black box, PIL default font) in the top-left corner; returns a new array.

    Only the box's own pixels go through PIL (a whole 640×360 frame there and back took 2.8 ms, the
    box alone 0.4 ms); the pixels are the same as drawing on the whole image."""
    arr = _as_rgb(image, "annotate")
    x, y = margin + padding, margin + padding
    left, top, right, bottom = _TEXT_MEASURE.textbbox((x, y), text)
    x0, y0 = max(left - padding, 0), max(top - padding, 0)
    x1, y1 = min(right + padding, arr.shape[1]), min(bottom + padding, arr.shape[0])
    out = arr.copy()  # the input is never modified
    if x1 <= x0 or y1 <= y0:
        return out
    box = Image.fromarray(np.ascontiguousarray(out[y0:y1, x0:x1]))
    draw = ImageDraw.Draw(box)
    draw.rectangle((left - padding - x0, top - padding - y0, right + padding - 1 - x0, bottom + padding - 1 - y0),
                   fill=(0, 0, 0))
    draw.text((x - x0, y - y0), text, fill=(255, 255, 255))
    out[y0:y1, x0:x1] = np.asarray(box, dtype=np.uint8)
    return out


# measures text (the default font's extents do not depend on the image drawn on)
_TEXT_MEASURE = ImageDraw.Draw(Image.new("RGB", (1, 1)))


def _stack(images, axis: int, gap: int, name: str, align: str = "start") -> np.ndarray:
    arrays = [_as_rgb(im, f"{name} image {i}") for i, im in enumerate(images)]
    if not arrays:
        raise ValueError(f"{name}: need at least one image")
    if gap < 0:
        raise ValueError(f"{name}: gap must be >= 0, got {gap}")
    if align not in ("start", "center"):
        raise ValueError(f"{name}: align must be 'start' or 'center', got '{align}'")
    other = 1 - axis  # the dimension that must agree: width when stacking rows
    size = max(a.shape[other] for a in arrays)
    parts = []
    for i, a in enumerate(arrays):
        if a.shape[other] < size:
            # Pad with black: at the end (right/bottom) so the top-left corners align, or on
            # both sides (the odd pixel at the end) to centre it.
            extra = size - a.shape[other]
            before = extra // 2 if align == "center" else 0
            pad = [(0, 0), (0, 0), (0, 0)]
            pad[other] = (before, extra - before)
            a = np.pad(a, pad)
        if i and gap:
            shape = [0, 0, 3]
            shape[axis], shape[other] = gap, size
            parts.append(np.zeros(shape, np.uint8))
        parts.append(a)
    return np.concatenate(parts, axis=axis)


def stack_vertical(images: Sequence, gap: int = 0, align: str = "start") -> np.ndarray:
    """Stack RGB images top to bottom, padding narrower ones with black on the right
    (`align="start"`) or on both sides (`align="center"`)."""
    return _stack(images, axis=0, gap=gap, name="stack_vertical", align=align)


def side_by_side(images: Sequence, gap: int = 0, align: str = "start") -> np.ndarray:
    """Place RGB images left to right, padding shorter ones with black at the bottom
    (`align="start"`) or above and below (`align="center"`)."""
    return _stack(images, axis=1, gap=gap, name="side_by_side", align=align)


# --------------------------------------------------------------------------- output


def write_png(image, path: str | os.PathLike) -> Path:
    """Write ``uint8 [H, W, 3]`` as PNG atomically; identical input gives identical bytes."""
    arr = _as_rgb(image, "write_png")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        # PIL writes no time/text chunks unless asked (pnginfo), and zlib at a
        # fixed level is deterministic, so equal pixels give equal files.
        Image.fromarray(arr).save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        os.replace(tmp, path)
    except BaseException as exc:
        _remove_quietly(tmp)
        if isinstance(exc, OSError):  # PIL writes through a handle: name the file here
            raise OSError(exc.errno, f"{path}: cannot write PNG ({exc.strerror or exc})", str(path)) from exc
        raise
    return path


class PictureWriters:
    """Encode pictures on worker threads while the caller draws the next ones.

    PNG encoding (zlib) runs in C with the GIL released, so on two cores it overlaps the drawing
    (GIF quantisation does not release it). ``workers=0`` encodes
    in the caller's thread. At most ``max_pending`` jobs wait at a time (each holds its picture),
    so memory stays bounded.
    Use as a context manager: leaving it waits for every job and raises the first error.
    """

    def __init__(self, workers: int | None = None, max_pending: int = 16):
        if workers is None:
            workers = min(2, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="pictures") if workers > 0 else None
        self._pending: deque[Future] = deque()
        self._max_pending = max(1, int(max_pending))

    def __enter__(self) -> "PictureWriters":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=exc_type is not None)

    def submit(self, fn, *args) -> Future:
        """Run ``fn(*args)`` on a worker (here and now without workers, raising at once); its Future."""
        if self._pool is None:
            future: Future = Future()
            future.set_result(fn(*args))
            return future
        while len(self._pending) >= self._max_pending:
            self._pending.popleft().result()
        future = self._pool.submit(fn, *args)
        self._pending.append(future)
        return future

    def png(self, image, path: str | os.PathLike) -> Path:
        """:func:`write_png` on a worker; returns the path it will hold."""
        self.submit(write_png, image, path)
        return Path(path)

    def wait(self) -> None:
        """Wait for every job; raise the first error."""
        while self._pending:
            self._pending.popleft().result()


def gif_frame_duration_ms(fps: float) -> int:
    """GIF delays are whole centiseconds: the nearest one to 1/fps (8 fps → 130 ms, not a truncated 120)."""
    return 10 * max(1, math.floor(100.0 / fps + 0.5))


def _gif_palette_frame(arr: np.ndarray) -> Image.Image:
    """One GIF frame: 256 colours by Pillow's fast octree. Median cut fits a frame's colours a little
    closer (mean |Δ| 3.9 against 4.9 levels of 255 on the stacked video) but costs 20× the time
    (190 against 9 ms for a 1280×720 frame) and holds the GIL; the GIF is the preview, the MP4 the
    faithful copy."""
    return Image.fromarray(arr).quantize(colors=256, method=Image.Quantize.FASTOCTREE)


class _GifStream:
    """A GIF written frame by frame with Pillow's GIF header and frame encoders (`getheader`,
    `getdata`), so each frame's LZW runs when the frame arrives rather than all of them at close.

    Decoded, it equals Pillow's ``save_all`` of the same palette frames (the tests compare them):
    every frame whole, with its own colour table, shown for `duration_ms`, identical consecutive
    frames merged into one whose duration is their sum (as ``save_all`` does), looping forever.
    """

    def __init__(self, path: Path, duration_ms: int):
        self._file = open(path, "wb")
        self._duration = duration_ms
        self._pending: list | None = None  # [palette frame, its pixels and palette, duration]: written once
        self._started = False              # the next frame differs

    def add(self, frame: Image.Image) -> None:
        content = (frame.tobytes(), frame.getpalette())
        if self._pending is not None and content == self._pending[1]:
            self._pending[2] += self._duration
            return
        self._write_pending()
        self._pending = [frame, content, self._duration]

    def _write_pending(self) -> None:
        if self._pending is None:
            return
        frame, _, duration = self._pending
        if not self._started:
            header, _ = GifImagePlugin.getheader(frame, info={"loop": 0})
            self._file.writelines(header)
            self._started = True
        self._file.writelines(GifImagePlugin.getdata(frame, duration=duration, disposal=2,
                                                     include_color_table=True))
        self._file.flush()  # on disk, not in a buffer: the file grows frame by frame
        self._pending = None

    def close(self) -> None:
        try:
            self._write_pending()
            self._file.write(b";")  # the trailer
        finally:
            self._file.close()

    def abort(self) -> None:
        self._file.close()


class VideoWriter:
    """Stream RGB frames into an MP4 (H.264, yuv420p) or a GIF, published atomically on close.

    ``with VideoWriter(path, fps) as w: w.append(frame)``. Frames go to a
    hidden temporary file next to ``path`` that replaces ``path`` only when the
    writer closes cleanly; an exception inside the ``with`` removes it.
    MP4 frames stream to ffmpeg (nothing kept in memory); odd sizes get one
    black row/column of padding (H.264 4:2:0 needs even sizes; no rescaling).
    GIF frames are reduced to 256 colours and encoded as they come (`_GifStream`);
    identical consecutive GIF frames are merged, adding their durations.

    ``background=True`` does each frame's work (the pipe to ffmpeg, the GIF palette and LZW) and
    the finishing (ffmpeg's last frames, the GIF's last frame) on a thread of the writer's own, in order,
    at most `BACKGROUND_FRAMES` frames behind: the caller keeps drawing meanwhile (Pillow and the
    pipe release the GIL), and `finish()` lets several writers finish at once before `close()`
    waits for them. A failure there is raised by the next `append`, `finish` or `close`.
    """

    BACKGROUND_FRAMES = 4

    def __init__(self, path: str | os.PathLike, fps: float, fmt: str | None = None, background: bool = False):
        self.path = Path(path)
        if fmt is None:
            fmt = self.path.suffix.lstrip(".").lower()
        fmt = str(fmt).lower()
        if fmt not in VIDEO_FORMATS:
            raise ValueError(f"VideoWriter: unknown format {fmt!r} for {self.path}; expected one of {VIDEO_FORMATS}")
        fps = float(fps)
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"VideoWriter: fps must be positive, got {fps!r}")
        self.fmt = fmt
        self.fps = fps
        self.frame_size: tuple[int, int] | None = None  # (H, W) of appended frames
        self.num_frames = 0
        self._tmp: Path | None = None
        self._gen = None  # imageio-ffmpeg writer generator (mp4)
        self._gif: _GifStream | None = None
        self._closed = False
        self._finishing = False
        self._jobs = BackgroundWriter(self.BACKGROUND_FRAMES if background else 0, name=f"video-{self.fmt}")

    # context manager ------------------------------------------------------
    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # writing --------------------------------------------------------------
    def append(self, frame, copy: bool = True) -> None:
        """Add one ``uint8 [H, W, 3]`` frame; every frame must have the first frame's size.

        ``copy=False`` (with ``background``): the caller hands the frame over and never changes it
        again, so it is not copied before it waits for the writer's thread."""
        if self._closed or self._finishing:
            raise ValueError(f"VideoWriter: {self.path} is already closed")
        arr = _as_rgb(frame, "VideoWriter.append")
        hw = (int(arr.shape[0]), int(arr.shape[1]))
        if self.frame_size is None:
            self.frame_size = hw
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = _temp_path(self.path)
            self._jobs.submit(self._start_ffmpeg if self.fmt == "mp4" else self._start_gif)
        elif hw != self.frame_size:
            raise ValueError(
                f"VideoWriter: frame {self.num_frames} has size {hw[0]}x{hw[1]} but the video "
                f"is {self.frame_size[0]}x{self.frame_size[1]} (HxW)"
            )
        # a frame waiting for the writer's thread is its own copy: the caller may reuse its buffer
        self._jobs.submit(self._write_frame, arr.copy() if copy and self._jobs.max_pending else arr)
        self.num_frames += 1

    def _write_frame(self, arr: np.ndarray) -> None:
        if self.fmt == "mp4":
            self._gen.send(np.ascontiguousarray(self._pad_even(arr)).tobytes())
        else:
            self._gif.add(_gif_palette_frame(arr))

    def _start_gif(self) -> None:
        self._gif = _GifStream(self._tmp, gif_frame_duration_ms(self.fps))

    def _start_ffmpeg(self) -> None:
        import imageio_ffmpeg

        h, w = self._padded_size()
        if (h, w) != self.frame_size:
            logger.info("VideoWriter: padding %dx%d frames to %dx%d for H.264", *self.frame_size, h, w)
        self._gen = imageio_ffmpeg.write_frames(
            str(self._tmp),
            (w, h),
            fps=self.fps,
            codec="libx264",
            pix_fmt_out="yuv420p",
            macro_block_size=1,  # we pad to even ourselves; never let ffmpeg rescale
            quality=None,
            ffmpeg_log_level="error",
            # "-f mp4": the temporary name has no .mp4 suffix to infer the muxer from.
            output_params=["-crf", str(_MP4_CRF), "-preset", _MP4_PRESET, "-movflags", "+faststart", "-f", "mp4"],
        )
        self._gen.send(None)  # prime the generator (starts ffmpeg)

    def _padded_size(self) -> tuple[int, int]:
        h, w = self.frame_size
        return h + (h % 2), w + (w % 2)

    def _pad_even(self, arr: np.ndarray) -> np.ndarray:
        h, w = arr.shape[:2]
        ph, pw = self._padded_size()
        if (ph, pw) == (h, w):
            return arr
        return np.pad(arr, ((0, ph - h), (0, pw - w), (0, 0)))

    # finishing ------------------------------------------------------------
    def _write_file(self) -> None:
        if self.fmt == "mp4":
            gen, self._gen = self._gen, None
            gen.close()  # closes ffmpeg's stdin and waits for it to finish
            # imageio-ffmpeg does not report ffmpeg's exit status; an empty file means failure.
            if not self._tmp.exists() or self._tmp.stat().st_size == 0:
                raise OSError(f"VideoWriter: ffmpeg produced no output for {self.path}")
        else:
            gif, self._gif = self._gif, None
            gif.close()

    def finish(self) -> None:
        """Start finishing the file (with ``background``, without waiting); `close` completes it."""
        if self._finishing or self._closed or self.num_frames == 0:
            return
        self._finishing = True
        try:
            self._jobs.submit(self._write_file)
        except BaseException:
            self.abort()
            raise

    def close(self) -> Path:
        """Finish the file and move it into place; raises ValueError if no frame was appended."""
        if self._closed:
            return self.path
        if self.num_frames == 0:
            self.abort()
            raise ValueError(f"VideoWriter: no frames appended; {self.path} not written")
        try:
            self.finish()
            self._jobs.close()  # every frame and the finishing have run; their first error is raised here
            os.replace(self._tmp, self.path)
            self._tmp = None
        except BaseException:
            self.abort()
            raise
        self._closed = True
        logger.debug("wrote %s (%d frames, %.3g fps)", self.path, self.num_frames, self.fps)
        return self.path

    def abort(self) -> None:
        """Stop writing and delete the temporary file; ``path`` is left as it was."""
        try:
            self._jobs.close()
        except BaseException as err:  # noqa: BLE001 - cleanup must not mask the original error
            logger.debug("VideoWriter: a queued frame also failed: %s", err)
        gen, self._gen = self._gen, None
        if gen is not None:
            try:
                gen.close()
            except Exception as err:  # pragma: no cover - cleanup must not mask the original error
                logger.warning("VideoWriter: error stopping ffmpeg: %s", err)
        gif, self._gif = self._gif, None
        if gif is not None:
            gif.abort()
        _remove_quietly(self._tmp)
        self._tmp = None
        self._closed = True
