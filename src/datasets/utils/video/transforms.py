"""Video clip transforms reproducing the V-JEPA 2 evaluation pre-processing.

The eval pipeline is: resize the short side to ``int(256 / 224 * crop)``
(aspect ratio kept), centre-crop ``crop x crop``, convert to a float tensor
``[C, T, H, W]`` in ``[0, 1]`` and normalise with the ImageNet statistics.
The full-frame variant (``--spatial full``) skips the crop: the short side
becomes the working size and the long side the nearest multiple of the patch,
so the whole frame is encoded on a non-square patch grid.

Layout conventions:

* numpy clips are ``[T, H, W, C]`` (uint8 usually, float allowed);
* torch clips are channels-first ``[..., H, W]`` (typically ``[T, C, H, W]``
  or ``[C, T, H, W]``); the spatial dims are always the last two.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from src.datasets.utils.video.volume_transforms import ClipToTensor

__all__ = [
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "Compose",
    "Resize",
    "CenterCrop",
    "Normalize",
    "ClipToTensor",
    "ClipToUint8Tensor",
    "normalize_uint8_clips",
    "center_crop_box",
    "resize_short_side_hw",
    "short_side_for_crop",
    "make_eval_transform",
    "eval_crop_box",
    "patch_aligned_hw",
    "PatchAlignedResize",
    "make_full_frame_transform",
    "full_frame_box",
]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

Clip = Union[np.ndarray, torch.Tensor]
SizeArg = Union[int, Tuple[int, int], Sequence[int]]

_CV2_INTERP = {"bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
# dtypes cv2.resize handles natively for both interpolation modes.
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def _parse_size(size: SizeArg, name: str) -> Tuple[int, int]:
    """Return ``(h, w)`` from an int or a 2-sequence, validating positivity."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size):
            raise ValueError(f"{name}: size must contain ints, got {size!r}")
        h, w = int(size[0]), int(size[1])
    else:
        raise ValueError(f"{name}: size must be an int or an (h, w) pair, got {size!r}")
    if h <= 0 or w <= 0:
        raise ValueError(f"{name}: size must be positive, got {size!r}")
    return h, w


def _spatial_hw(clip: Clip, name: str) -> Tuple[int, int]:
    """Spatial size of a clip following the project layout conventions."""
    if isinstance(clip, np.ndarray):
        if clip.ndim != 4:
            raise ValueError(f"{name}: numpy clip must be [T, H, W, C], got shape {clip.shape}")
        return int(clip.shape[1]), int(clip.shape[2])
    if isinstance(clip, torch.Tensor):
        if clip.ndim < 2:
            raise ValueError(
                f"{name}: torch clip must be channels-first [..., H, W], got shape {tuple(clip.shape)}"
            )
        return int(clip.shape[-2]), int(clip.shape[-1])
    raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(clip)}")


def resize_short_side_hw(height: int, width: int, size: int) -> Tuple[int, int]:
    """Output ``(new_h, new_w)`` when resizing the short side to ``size``.

    Long side is ``int(size * long / short)`` (truncated), as in the reference
    V-JEPA 2 eval transform; for a square frame both sides become ``size``.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"resize_short_side_hw: invalid frame size {height}x{width}")
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def short_side_for_crop(crop_size: int) -> int:
    """Short-side resize target used before a centre crop: ``int(256/224 * crop)``."""
    return int(256.0 / 224 * crop_size)


def center_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> Tuple[int, int, int, int]:
    """Return ``(top, left, crop_h, crop_w)`` of a centred crop in a ``height x width`` frame.

    Offsets use Python's ``round`` (banker's rounding on exact halves) so every
    module that needs the box computes the very same pixels.
    """
    if crop_h <= 0 or crop_w <= 0:
        raise ValueError(f"center_crop_box: crop size must be positive, got {crop_h}x{crop_w}")
    if crop_h > height or crop_w > width:
        raise ValueError(
            f"center_crop_box: clip size {height}x{width} (HxW) is smaller than "
            f"crop size {crop_h}x{crop_w}"
        )
    top = int(round((height - crop_h) / 2))
    left = int(round((width - crop_w) / 2))
    return top, left, crop_h, crop_w


class Compose:
    """Apply a sequence of callables in order."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = list(transforms)

    def __call__(self, clip):
        for t in self.transforms:
            clip = t(clip)
        return clip

    def __repr__(self) -> str:
        lines = [f"{self.__class__.__name__}("]
        lines += [f"    {t!r}," for t in self.transforms]
        lines.append(")")
        return "\n".join(lines)


class Resize:
    """Resize a clip spatially.

    ``size`` int: the short side becomes ``size`` and the aspect ratio is kept
    (long side truncated with ``int``). ``size`` ``(h, w)``: exact output size.
    numpy ``[T, H, W, C]`` clips go through ``cv2.resize`` frame by frame (no
    antialiasing, as the reference does for numpy clips); torch ``[..., H, W]``
    clips through ``F.interpolate``, bilinear with ``antialias`` (default True:
    the reference resizes tensors with torchvision, whose default antialiases
    since 0.17, i.e. a triangle filter widened by the downscale factor). Returns
    the input object unchanged when the size already matches.
    """

    def __init__(self, size: SizeArg, interpolation: str = "bilinear", antialias: bool = True) -> None:
        if interpolation not in _CV2_INTERP:
            raise ValueError(
                f"Resize: unknown interpolation {interpolation!r}; "
                f"expected one of {sorted(_CV2_INTERP)}"
            )
        if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
            if size <= 0:
                raise ValueError(f"Resize: size must be positive, got {size!r}")
            self.size: Union[int, Tuple[int, int]] = int(size)
        else:
            self.size = _parse_size(size, "Resize")
        self.interpolation = interpolation
        self.antialias = bool(antialias)

    def output_hw(self, height: int, width: int) -> Tuple[int, int]:
        """Output ``(h, w)`` for an input frame of ``height x width``."""
        if isinstance(self.size, int):
            return resize_short_side_hw(height, width, self.size)
        return self.size

    def __call__(self, clip: Clip) -> Clip:
        h, w = _spatial_hw(clip, "Resize")
        new_h, new_w = self.output_hw(h, w)
        if (new_h, new_w) == (h, w):
            return clip
        if isinstance(clip, np.ndarray):
            return self._resize_numpy(clip, new_h, new_w)
        return self._resize_torch(clip, new_h, new_w)

    def _resize_numpy(self, clip: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
        t, _, _, c = clip.shape
        flag = _CV2_INTERP[self.interpolation]
        native = clip.dtype in _CV2_DTYPES
        # cv2 cannot resize e.g. int32/int64/float16/bool: go via float32 and cast back.
        work = clip if native else clip.astype(np.float32)
        out = np.empty((t, new_h, new_w, c), dtype=work.dtype)
        for i in range(t):
            frame = cv2.resize(
                np.ascontiguousarray(work[i]), (new_w, new_h), interpolation=flag
            )
            # cv2 drops the channel axis of 1-channel images; restore [H, W, C].
            out[i] = frame.reshape(new_h, new_w, c)
        if native:
            return out
        if np.issubdtype(clip.dtype, np.integer) or clip.dtype == np.bool_:
            info = np.iinfo(clip.dtype) if clip.dtype != np.bool_ else None
            out = np.rint(out)
            if info is not None:
                out = np.clip(out, info.min, info.max)
        return out.astype(clip.dtype)

    def _resize_torch(self, clip: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
        lead = clip.shape[:-2]
        h, w = clip.shape[-2:]
        # interpolate wants [N, C, H, W]; all leading dims are independent planes.
        n = 1
        for d in lead:
            n *= int(d)
        x = clip.reshape(1, n, h, w)
        # Compute in float32 (uint8 and half types are not supported everywhere).
        compute_dtype = clip.dtype if clip.dtype in (torch.float32, torch.float64) else torch.float32
        x = x.to(compute_dtype)
        if n == 0:
            y = x.new_empty((1, 0, new_h, new_w))
        elif self.interpolation == "bilinear" and self.antialias:
            y = _antialiased_bilinear(x, new_h, new_w)
        elif self.interpolation == "bilinear":
            y = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
        else:
            y = F.interpolate(x, size=(new_h, new_w), mode="nearest")
        y = y.reshape(*lead, new_h, new_w)
        if clip.dtype == torch.bool:
            return y.round().to(torch.bool)
        if not clip.is_floating_point():
            info = torch.iinfo(clip.dtype)
            return y.round().clamp(info.min, info.max).to(clip.dtype)
        return y.to(clip.dtype)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(size={self.size!r}, interpolation={self.interpolation!r}, "
                f"antialias={self.antialias})")


# float64 elements per F.interpolate call of the antialiased resize (256 MB in, less out).
_AA_CHUNK_ELEMENTS = 1 << 25


def _antialiased_bilinear(x: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """Antialiased bilinear resize of ``[1, planes, H, W]``, computed in float64.

    torch's float32 kernel places the filter taps with float32 coordinates: on a 720p frame its
    output is off the exact triangle filter by up to 2e-5 of the value range. In float64 it is
    exact to the output dtype's rounding. Planes go in chunks so a long clip does not need a
    float64 copy of itself.
    """
    planes, (h, w) = x.shape[1], x.shape[-2:]
    step = max(1, _AA_CHUNK_ELEMENTS // (h * w))
    out = x.new_empty((1, planes, new_h, new_w))
    for start in range(0, planes, step):
        part = x[:, start:start + step].to(torch.float64)
        out[:, start:start + step] = F.interpolate(part, size=(new_h, new_w), mode="bilinear",
                                                   align_corners=False, antialias=True)
    return out


class PatchAlignedResize(Resize):
    """Resize so the short side is ``short_side`` and the long side the nearest multiple of
    ``multiple`` (see :func:`patch_aligned_hw`); bilinear as the eval ``Resize``, no crop."""

    def __init__(self, short_side: int, multiple: int, interpolation: str = "bilinear") -> None:
        super().__init__(short_side, interpolation)
        if multiple <= 0 or short_side % multiple:
            raise ValueError(f"PatchAlignedResize: short side {short_side} is not a multiple of {multiple}")
        self.multiple = int(multiple)

    def output_hw(self, height: int, width: int) -> Tuple[int, int]:
        return patch_aligned_hw(height, width, self.size, self.multiple)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(short_side={self.size!r}, multiple={self.multiple}, "
                f"interpolation={self.interpolation!r})")


class CenterCrop:
    """Centre-crop a clip to ``size`` (int or ``(h, w)``).

    Returns a view (slice) of the input, not a copy. Raises ``ValueError`` when
    the clip is smaller than the crop.
    """

    def __init__(self, size: SizeArg) -> None:
        self.size = _parse_size(size, "CenterCrop")

    def __call__(self, clip: Clip) -> Clip:
        h, w = _spatial_hw(clip, "CenterCrop")
        crop_h, crop_w = self.size
        if crop_h > h or crop_w > w:
            raise ValueError(
                f"CenterCrop: clip size {h}x{w} (HxW) is smaller than crop size {crop_h}x{crop_w}"
            )
        top, left, crop_h, crop_w = center_crop_box(h, w, crop_h, crop_w)
        if isinstance(clip, np.ndarray):
            return clip[:, top : top + crop_h, left : left + crop_w, :]
        return clip[..., top : top + crop_h, left : left + crop_w]

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(size={self.size!r})"


class Normalize:
    """Per-channel ``(x - mean) / std`` on a float torch ``[C, T, H, W]`` tensor.

    Returns a new tensor; the input is not modified.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or len(self.mean) == 0:
            raise ValueError(f"Normalize: mean {self.mean} and std {self.std} must have equal, non-zero length")
        if any(s == 0 for s in self.std):
            raise ValueError(f"Normalize: std must be non-zero, got {self.std}")

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise TypeError(
                "Normalize: expected a float torch tensor [C, T, H, W], got "
                f"{type(tensor).__name__}"
                + (f" of dtype {tensor.dtype}" if isinstance(tensor, torch.Tensor) else "")
            )
        if tensor.ndim < 1 or tensor.shape[0] != len(self.mean):
            raise ValueError(
                f"Normalize: expected {len(self.mean)} channels in dim 0 ([C, T, H, W]), "
                f"got shape {tuple(tensor.shape)}"
            )
        bshape = (len(self.mean),) + (1,) * (tensor.ndim - 1)
        mean = torch.tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(bshape)
        std = torch.tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(bshape)
        return (tensor - mean) / std

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mean={self.mean}, std={self.std})"


def make_eval_transform(crop_size: int = 256, normalize: bool = True) -> Compose:
    """V-JEPA 2 eval transform: short-side resize, centre crop, to tensor, ImageNet norm.

    Input: numpy ``[T, H, W, C]`` uint8 (or torch ``[T, C, H, W]`` uint8).
    Output: float32 torch ``[C, T, crop_size, crop_size]``; with ``normalize=False`` the uint8
    crop ``[C, T, crop_size, crop_size]``, to be normalised on the device by
    :func:`normalize_uint8_clips` (a quarter of the bytes through shared memory and the bus).
    """
    head = [Resize(short_side_for_crop(crop_size), interpolation="bilinear"), CenterCrop(crop_size)]
    if not normalize:
        return Compose([*head, ClipToUint8Tensor()])
    return Compose([*head, ClipToTensor(div_255=True), Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


class ClipToUint8Tensor:
    """A uint8 clip as a uint8 torch tensor ``[C, T, H, W]`` (numpy ``[T, H, W, C]`` or torch
    ``[T, C, H, W]``; one channel repeated to three), contiguous, for normalisation later."""

    def __call__(self, clip) -> torch.Tensor:
        if isinstance(clip, np.ndarray):
            if clip.ndim != 4 or clip.shape[3] not in (1, 3):
                raise ValueError(f"ClipToUint8Tensor: numpy clip must be [T, H, W, 1|3], got shape {clip.shape}")
            tensor = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2)
        elif isinstance(clip, torch.Tensor):
            if clip.ndim != 4 or clip.shape[1] not in (1, 3):
                raise ValueError(f"ClipToUint8Tensor: torch clip must be [T, 1|3, H, W], got shape {tuple(clip.shape)}")
            tensor = clip.permute(1, 0, 2, 3)
        else:
            raise TypeError(f"ClipToUint8Tensor: expected a numpy array or torch tensor, got {type(clip)}")
        if tensor.dtype != torch.uint8:
            raise ValueError(f"ClipToUint8Tensor: expected uint8 frames, got {tensor.dtype} "
                             "(use the normalising transform for other dtypes)")
        if tensor.shape[0] == 1:
            tensor = tensor.expand(3, *tensor.shape[1:])
        return tensor.contiguous()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


def normalize_uint8_clips(clips: torch.Tensor, dtype: torch.dtype = torch.float32,
                          mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                          std: Sequence[float] = IMAGENET_DEFAULT_STD) -> torch.Tensor:
    """uint8 ``[..., C, T, H, W]`` on any device → ``(x / 255 - mean) / std`` in float32, then
    ``dtype``: the same operations, in the same order and precision, as ``ClipToTensor`` +
    ``Normalize`` on the CPU, so features equal those of the CPU-normalised clips."""
    if clips.dtype != torch.uint8:
        raise ValueError(f"normalize_uint8_clips: expected uint8 clips, got {clips.dtype}")
    channel_dim = clips.ndim - 4
    shape = [1] * clips.ndim
    shape[channel_dim] = len(mean)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=clips.device).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=clips.device).view(shape)
    out = (clips.to(torch.float32) / 255.0 - mean_t) / std_t
    return out if dtype == torch.float32 else out.to(dtype)


def eval_crop_box(height: int, width: int, crop_size: int) -> Dict[str, object]:
    """Region of a ``height x width`` source frame covered by the eval transform.

    Mirrors ``make_eval_transform``: the short side is resized to
    ``short_side_for_crop(crop_size)`` (giving ``resized_hw = [new_h, new_w]``),
    then a ``crop_size`` centre crop ``(top, left)`` is taken in resized
    coordinates. The crop is mapped back with the per-axis scale factors
    (``x0 = left * width / new_w``, ``y0 = top * height / new_h``,
    ``x1 = (left + crop) * width / new_w``, ``y1 = (top + crop) * height / new_h``).

    Coordinates are continuous pixel-edge coordinates in the source frame
    (pixel ``i`` spans ``[i, i + 1)``), consistent with ``align_corners=False``
    resampling; ``x1``/``y1`` are exclusive. Returns
    ``{"x0", "y0", "x1", "y1"}`` as floats plus ``"resized_hw"`` and ``"crop"``.
    """
    new_h, new_w = resize_short_side_hw(height, width, short_side_for_crop(crop_size))
    top, left, crop_h, crop_w = center_crop_box(new_h, new_w, crop_size, crop_size)
    sx = width / new_w
    sy = height / new_h
    return {
        "x0": float(left * sx),
        "y0": float(top * sy),
        "x1": float((left + crop_w) * sx),
        "y1": float((top + crop_h) * sy),
        "resized_hw": [int(new_h), int(new_w)],
        "crop": int(crop_size),
    }


def patch_aligned_hw(height: int, width: int, short_side: int, multiple: int) -> Tuple[int, int]:
    """Frame size for the full-frame transform: short side ``short_side``, long side the nearest
    multiple of ``multiple`` to ``short_side * long / short`` (halves round up; at least one
    multiple). A 2:1 frame at 32 gives 32x64; bikes (272x640) at 256 gives 256x608.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"patch_aligned_hw: invalid frame size {height}x{width}")
    short, long = min(height, width), max(height, width)
    aligned = max(multiple, int(math.floor(short_side * long / short / multiple + 0.5)) * multiple)
    return (short_side, aligned) if height <= width else (aligned, short_side)


def make_full_frame_transform(short_side: int, multiple: int = 16, normalize: bool = True) -> Compose:
    """Whole-frame transform: patch-aligned resize (no crop), to tensor, ImageNet norm.

    Output: float32 torch ``[C, T, H, W]`` with ``H, W`` from :func:`patch_aligned_hw`; with
    ``normalize=False`` the uint8 ``[C, T, H, W]`` (see :func:`make_eval_transform`).
    """
    head = [PatchAlignedResize(short_side, multiple, interpolation="bilinear")]
    if not normalize:
        return Compose([*head, ClipToUint8Tensor()])
    return Compose([*head, ClipToTensor(div_255=True), Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


def full_frame_box(height: int, width: int, short_side: int, multiple: int = 16) -> Dict[str, object]:
    """Region covered by the full-frame transform: the whole ``height x width`` frame.

    Same keys as :func:`eval_crop_box` (``crop`` is None: nothing is cropped), in source-pixel
    edge coordinates; ``resized_hw`` is the encoder's input size.
    """
    new_h, new_w = patch_aligned_hw(height, width, short_side, multiple)
    return {
        "x0": 0.0,
        "y0": 0.0,
        "x1": float(width),
        "y1": float(height),
        "resized_hw": [int(new_h), int(new_w)],
        "crop": None,
    }
