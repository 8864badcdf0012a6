"""Volume (whole-clip) transforms: conversion of a decoded clip to a model tensor.

Layout conventions used across the project:

* numpy clips are ``[T, H, W, C]``;
* torch clips are channels-first ``[T, C, H, W]``;
* the model input produced here is a float32 torch tensor ``[C, T, H, W]``.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

__all__ = ["ClipToTensor"]

ClipLike = Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]]


class ClipToTensor:
    """Convert a clip to a float32 torch tensor of shape ``[C, T, H, W]``.

    Accepts a numpy ``[T, H, W, C]`` array, a list/tuple of numpy ``[H, W, C]``
    frames, or a torch ``[T, C, H, W]`` tensor. ``C`` must be 1 or 3; a single
    channel is repeated to 3 (the encoder expects RGB).

    Integer input (uint8 in practice) is divided by 255 when ``div_255`` is
    true; floating-point input is only converted to float32 and permuted, since
    it is assumed to already be in the intended range.
    """

    def __init__(self, div_255: bool = True) -> None:
        self.div_255 = bool(div_255)

    def __call__(self, clip: ClipLike) -> torch.Tensor:
        if isinstance(clip, (list, tuple)):
            if len(clip) == 0:
                raise ValueError("ClipToTensor: got an empty list of frames")
            clip = np.stack([np.asarray(f) for f in clip], axis=0)

        if isinstance(clip, np.ndarray):
            if clip.ndim != 4:
                raise ValueError(
                    f"ClipToTensor: numpy clip must be [T, H, W, C], got shape {clip.shape}"
                )
            if clip.shape[3] not in (1, 3):
                raise ValueError(
                    "ClipToTensor: numpy clip must have 1 or 3 channels in the last axis "
                    f"([T, H, W, C]), got shape {clip.shape}"
                )
            if clip.dtype == np.bool_ or not (
                np.issubdtype(clip.dtype, np.integer) or np.issubdtype(clip.dtype, np.floating)
            ):
                raise ValueError(f"ClipToTensor: unsupported numpy dtype {clip.dtype}")
            # from_numpy needs a writable-stride-compatible array (no negative strides).
            tensor = torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2)
        elif isinstance(clip, torch.Tensor):
            if clip.ndim != 4:
                raise ValueError(
                    f"ClipToTensor: torch clip must be [T, C, H, W], got shape {tuple(clip.shape)}"
                )
            if clip.shape[1] not in (1, 3):
                raise ValueError(
                    "ClipToTensor: torch clip must have 1 or 3 channels in dim 1 "
                    f"([T, C, H, W]), got shape {tuple(clip.shape)}"
                )
            if clip.dtype == torch.bool or clip.is_complex():
                raise ValueError(f"ClipToTensor: unsupported torch dtype {clip.dtype}")
            tensor = clip.permute(1, 0, 2, 3)
        else:
            raise TypeError(
                f"ClipToTensor: expected numpy array, list of frames or torch tensor, got {type(clip)}"
            )

        is_integer = not tensor.is_floating_point()
        out = tensor.to(torch.float32)
        if is_integer and self.div_255:
            out = out / 255.0
        if out.shape[0] == 1:
            out = out.repeat(3, 1, 1, 1)
        # Downstream code uses .view(); make the permuted result contiguous.
        return out.contiguous()

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(div_255={self.div_255})"
