"""Image files: discovery and reading (any mode, depth or EXIF orientation -> RGB uint8)."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import UnidentifiedImageError, Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
DEFAULT_IMAGE_PATTERNS = ("*.jpg", "*.jpeg", "*.png", "*.tif", "*.tiff")

# PIL modes holding more than 8 bits per sample; these are rescaled, not truncated.
_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def is_hidden(name: str) -> bool:
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
            dirnames[:] = [d for d in dirnames if not is_hidden(d)]
        else:
            dirnames[:] = []
        for name in filenames:
            if is_hidden(name):
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
