"""uint8 crops through shared memory and the bus, normalised on the device: a quarter of the
bytes, and the same numbers as the CPU-normalised clip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from src.datasets.utils.video.transforms import (
    make_eval_transform, make_full_frame_transform, normalize_uint8_clips)


@pytest.fixture
def clip():
    return np.random.default_rng(0).integers(0, 256, (4, 90, 160, 3), dtype=np.uint8)


@pytest.mark.parametrize("make", [lambda n: make_eval_transform(64, normalize=n),
                                  lambda n: make_full_frame_transform(48, normalize=n)])
def test_uint8_then_device_normalisation_equals_the_float_transform(clip, make):
    floats = make(True)(clip)
    crops = make(False)(clip)
    assert crops.dtype == torch.uint8 and crops.shape == floats.shape and crops.is_contiguous()
    assert crops.element_size() * crops.numel() * 4 == floats.element_size() * floats.numel()
    batch = normalize_uint8_clips(torch.stack([crops, crops]))  # [B, C, T, H, W]
    assert torch.equal(batch[0], floats) and torch.equal(batch[1], floats)  # bit for bit on the CPU
    assert torch.equal(normalize_uint8_clips(crops), floats)  # unbatched [C, T, H, W] too


def test_normalisation_in_a_lower_dtype_is_the_fp32_result_cast(clip):
    crops = make_eval_transform(64, normalize=False)(clip)
    floats = normalize_uint8_clips(crops)
    assert torch.equal(normalize_uint8_clips(crops, torch.bfloat16), floats.to(torch.bfloat16))


def test_grayscale_repeats_and_other_dtypes_are_refused(clip):
    gray = make_eval_transform(64, normalize=False)(clip[..., :1])
    assert gray.shape[0] == 3 and torch.equal(gray[0], gray[2])
    with pytest.raises(ValueError, match="expected uint8 frames"):
        make_eval_transform(64, normalize=False)(clip.astype(np.float32))
    with pytest.raises(ValueError, match="expected uint8 clips"):
        normalize_uint8_clips(torch.zeros(3, 1, 4, 4))
