"""Which part of each frame the encoder sees: the centre crop (the original evaluation) or the whole
frame on a non-square patch grid. The token grid, the covered box and the working resolution of an
input come from here, once, for both extractors and their metadata.

- `center`: short side resized to int(256/224·crop), centre crop crop×crop: grid Tp×(crop/p)×(crop/p)
  whatever the frame, covering the middle of it.
- `full`: short side resized to `short_side` (default: the crop size), long side to the nearest
  multiple of the patch p, no crop: grid Tp×Hp×Wp with Hp ≠ Wp for non-square frames, covering the
  whole frame. Tokens (and attention cost, which grows with tokens²) grow with the frame's area.
"""
from __future__ import annotations

from dataclasses import dataclass

from src.errors import UsageError

from src.datasets.utils.video.transforms import (
    Compose, eval_crop_box, full_frame_box, make_eval_transform, make_full_frame_transform, patch_aligned_hw,
    short_side_for_crop,
)

SPATIAL_MODES = ("center", "full")
# Tokens per clip a run accepts unless told otherwise: 3.6× a 16-frame 384 px centre crop (4608), room
# for a 16:9 (8256) or 2:1 (9216) frame at 384 in `full`. Attention work grows with tokens²; where
# attention falls back to the plain kernel it also holds batch·heads·tokens² scores (17 GB at 16384
# tokens and 16 heads in fp32).
DEFAULT_MAX_TOKENS = 16384


def check_spatial_options(spatial: str, short_side: int | None, max_tokens: int | None) -> None:
    """Refuse option values that are wrong whatever the model (before it loads): UsageError (exit 2)."""
    if spatial not in SPATIAL_MODES:
        raise UsageError(f"--spatial must be one of {', '.join(SPATIAL_MODES)}, got {spatial!r}")
    if short_side is not None:
        if spatial != "full":
            raise UsageError(f"--short_side {short_side} applies to --spatial full (the centre crop's size is "
                             "--img_size)")
        if short_side <= 0:
            raise UsageError(f"--short_side must be positive, got {short_side}")
    if max_tokens is not None and max_tokens <= 0:
        raise UsageError(f"--max_tokens must be positive, got {max_tokens}")


@dataclass(frozen=True)
class SpatialPlan:
    """How frames become encoder input, for one loaded model. Plain numbers: it pickles cheaply into
    DataLoader workers (the token check runs there, per window or image).

    Args:
        mode: "center" or "full".
        crop: the model's crop size (center: the crop; full: the default short side).
        patch_size: spatial patch size in pixels.
        tubelet_size: frames per temporal token.
        short_side: full: the short side frames are resized to (a multiple of the patch).
        max_tokens: the most tokens per clip a run accepts (None: no limit).
        image_path_frames: clips of this many frames take the model's image path (2.1: 1), one
            temporal token per frame; None: none do.
    """

    mode: str
    crop: int
    patch_size: int
    tubelet_size: int
    short_side: int | None = None
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    image_path_frames: int | None = None

    def __post_init__(self):
        check_spatial_options(self.mode, self.short_side, self.max_tokens)
        if self.mode == "full" and self.short_side is None:
            object.__setattr__(self, "short_side", self.crop)
        if self.mode == "full" and self.short_side % self.patch_size:
            raise UsageError(f"--short_side {self.short_side} is not a multiple of the {self.patch_size} px patch "
                             f"(e.g. {self.short_side - self.short_side % self.patch_size or self.patch_size})")

    @property
    def working_short_side(self) -> int:
        """The short side frames are resized to: int(256/224·crop) before the crop, or `short_side`."""
        if self.mode == "full":
            return self.short_side
        return short_side_for_crop(self.crop)

    def transform(self, normalize: bool = True) -> Compose:
        """uint8 `[T, H, W, 3]` → normalised float32 `[C, T, H', W']` (the input size below); with
        `normalize=False` the uint8 `[C, T, H', W']`, normalised later on the device."""
        if self.mode == "full":
            return make_full_frame_transform(self.short_side, self.patch_size, normalize=normalize)
        return make_eval_transform(self.crop, normalize=normalize)

    def input_hw(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Encoder input size in pixels for a `height`×`width` frame (center: always crop×crop)."""
        if self.mode == "center":
            return self.crop, self.crop
        if height is None or width is None:
            raise ValueError("--spatial full: the token grid depends on the frame size; give it")
        return patch_aligned_hw(height, width, self.short_side, self.patch_size)

    def batch_key(self, image_hw: tuple[int, int] | None) -> tuple[int, int] | None:
        """Encoder input size of a frame of `image_hw`: frames with equal keys have one grid and may
        share a forward pass. None where it depends on a size not known (`full`, unreadable header)."""
        if self.mode == "center":
            return self.input_hw()
        return None if image_hw is None else self.input_hw(*image_hw)

    def grid(self, num_frames: int, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """Token grid (Tp, Hp, Wp) of a clip of `num_frames` frames of `height`×`width` px."""
        h, w = self.input_hw(height, width)
        tubelet = 1 if num_frames == self.image_path_frames else self.tubelet_size  # as the model's patch_grid
        if num_frames <= 0 or num_frames % tubelet:
            raise ValueError(f"{num_frames} frames do not tile into {tubelet}-frame tubelets")
        return num_frames // tubelet, h // self.patch_size, w // self.patch_size

    def covered_box(self, height: int, width: int) -> dict:
        """The source-pixel region the features cover: the centre crop, or the whole frame."""
        if self.mode == "full":
            return full_frame_box(height, width, self.short_side, self.patch_size)
        return eval_crop_box(height, width, self.crop)

    def check_tokens(self, num_frames: int, height: int, width: int, name: str = "frame") -> None:
        """`full`: refuse a clip whose grid exceeds `max_tokens`, naming the numbers and the ways out.
        (`center` grids do not depend on the frame and are the model's own: never refused.)"""
        if self.mode != "full" or self.max_tokens is None:
            return
        tp, hp, wp = self.grid(num_frames, height, width)
        tokens = tp * hp * wp
        if tokens > self.max_tokens:
            raise ValueError(f"{name} is {width}×{height} px: the whole frame at short side {self.short_side} is a "
                             f"{tp}×{hp}×{wp} grid = {tokens} tokens per clip, over --max_tokens {self.max_tokens} "
                             "(attention work grows with tokens²); lower --short_side, or raise --max_tokens if "
                             "the attention fits your device")

    def metadata(self, num_frames: int, height: int, width: int) -> dict:
        """What a feature record says about its geometry (same keys for windows and images)."""
        return {
            "grid": list(self.grid(num_frames, height, width)),
            "image_size": [int(height), int(width)],
            "crop_box": self.covered_box(height, width),  # the covered box: the whole frame for `full`
            "spatial": self.mode,
            "short_side": self.working_short_side,
            "input_size": list(self.input_hw(height, width)),
        }
