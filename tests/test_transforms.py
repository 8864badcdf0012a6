"""Tests for the V-JEPA 2 eval video transforms (CPU, fast)."""

import numpy as np
import pytest
import torch

from src.datasets.utils.video import transforms as video_transforms
from src.datasets.utils.video import volume_transforms
from src.datasets.utils.video.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    CenterCrop,
    Compose,
    Normalize,
    Resize,
    center_crop_box,
    eval_crop_box,
    make_eval_transform,
    short_side_for_crop,
)
from src.datasets.utils.video.volume_transforms import ClipToTensor


def _np_clip(t, h, w, c=3, value=None):
    if value is not None:
        return np.full((t, h, w, c), value, dtype=np.uint8)
    return (np.arange(t * h * w * c) % 251).astype(np.uint8).reshape(t, h, w, c)


def _gradient_clip(t, h, w):
    """Smooth uint8 gradient clip [T, H, W, 3] (different ramp per channel)."""
    y = np.linspace(0.0, 1.0, h)[:, None]
    x = np.linspace(0.0, 1.0, w)[None, :]
    chans = [200 * x + 50 * y, 100 * x + 150 * y, 255 * (0.5 * x + 0.5 * y)]
    frame = np.stack(chans, axis=-1)
    clip = np.stack([frame + 2 * i for i in range(t)], axis=0)
    return np.clip(np.rint(clip), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- sizes


def test_short_side_targets():
    assert short_side_for_crop(256) == 292
    assert short_side_for_crop(384) == 438
    assert short_side_for_crop(224) == 256


def test_resize_numpy_landscape_and_portrait():
    out = Resize(292)(_np_clip(2, 480, 640))
    assert out.shape == (2, 292, 389, 3) and out.dtype == np.uint8
    out = Resize(292)(_np_clip(2, 640, 480))
    assert out.shape == (2, 389, 292, 3)


def test_resize_torch_landscape_and_portrait():
    clip = torch.from_numpy(_np_clip(2, 480, 640)).permute(0, 3, 1, 2)  # [T, C, H, W]
    out = Resize(292)(clip)
    assert tuple(out.shape) == (2, 3, 292, 389) and out.dtype == torch.uint8
    clip = torch.from_numpy(_np_clip(2, 640, 480)).permute(0, 3, 1, 2)
    out = Resize(292)(clip)
    assert tuple(out.shape) == (2, 3, 389, 292)
    # [C, T, H, W] layout: spatial dims are still the last two.
    out = Resize(292)(clip.permute(1, 0, 2, 3).float())
    assert tuple(out.shape) == (3, 2, 389, 292) and out.dtype == torch.float32


def test_resize_noop_returns_input():
    clip = _np_clip(1, 292, 389)
    assert Resize(292)(clip) is clip
    tclip = torch.zeros(1, 3, 292, 389)
    assert Resize(292)(tclip) is tclip


def test_resize_exact_tuple_and_single_channel():
    out = Resize((10, 20))(_np_clip(3, 40, 50))
    assert out.shape == (3, 10, 20, 3)
    # cv2 drops the channel axis of 1-channel frames; we must keep [T, H, W, 1].
    out = Resize(16)(_np_clip(2, 32, 48, c=1))
    assert out.shape == (2, 16, 24, 1)


def test_resize_numpy_vs_torch_agree_on_gradient():
    clip = _gradient_clip(2, 480, 640)
    for size in (292, 600):  # down- and up-sampling
        np_out = Resize(size)(clip)
        t_out = Resize(size)(torch.from_numpy(clip).permute(0, 3, 1, 2))
        t_out = t_out.permute(0, 2, 3, 1).numpy()
        assert np_out.shape == t_out.shape
        diff = np.abs(np_out.astype(np.int16) - t_out.astype(np.int16))
        assert diff.max() <= 1, (size, diff.max())


def test_resize_nearest_matches_between_paths():
    clip = _np_clip(1, 8, 12)
    np_out = Resize((4, 6), interpolation="nearest")(clip)
    t_out = Resize((4, 6), interpolation="nearest")(torch.from_numpy(clip).permute(0, 3, 1, 2))
    # Exact 2x downscale: nearest picks every other source pixel.
    np.testing.assert_array_equal(np_out, clip[:, ::2, ::2, :])
    np.testing.assert_array_equal(t_out.permute(0, 2, 3, 1).numpy(), clip[:, ::2, ::2, :])


def _triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of an antialiased bilinear resize, written from its definition
    (float64): output pixel i is centred at (i + 0.5)·scale in input pixel units; the triangle
    filter is widened to the scale when downscaling, cut at the frame and renormalised (the
    filter PIL and torchvision use)."""
    scale = n_in / n_out
    support = max(scale, 1.0)
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) + 0.5 - centre) / support))
        weights[i, lo:hi] = taps / taps.sum()
    return weights


def _reference_resize(planes: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """[..., H, W] float64 → [..., new_h, new_w], separable triangle filter."""
    rows, cols = _triangle_weights(planes.shape[-2], new_h), _triangle_weights(planes.shape[-1], new_w)
    return rows @ planes.astype(np.float64) @ cols.T


@pytest.mark.parametrize("shape,size", [((2, 3, 720, 1280), 292), ((1, 3, 97, 61), (40, 23))])
def test_resize_torch_is_antialiased_bilinear(shape, size):
    """Tensor clips resize like torchvision's default (antialiased bilinear) on a downscale."""
    rng = np.random.default_rng(0)
    clip = rng.uniform(0.0, 1.0, shape).astype(np.float32)
    out = Resize(size)(torch.from_numpy(clip))
    new_h, new_w = out.shape[-2:]
    ref = _reference_resize(clip, new_h, new_w)
    assert np.abs(out.numpy() - ref).max() <= 1e-5
    # PIL's bilinear (an independent implementation of the same filter) agrees too
    from PIL import Image

    pil = np.asarray(Image.fromarray(clip[0, 0], mode="F").resize((new_w, new_h), Image.BILINEAR))
    assert np.abs(out[0, 0].numpy() - pil).max() <= 1e-5
    # the old path (antialias=False, plain bilinear sampling) is far from it: the test can tell
    plain = Resize(size, antialias=False)(torch.from_numpy(clip))
    assert np.abs(plain.numpy() - ref).max() > 0.1


def test_eval_transform_of_a_uint8_tensor_clip_in_normalised_units():
    """720p uint8 [T, C, H, W] through the whole eval transform, against the reference filter
    followed by uint8 rounding (as torchvision returns uint8 for uint8 input)."""
    rng = np.random.default_rng(1)
    clip = rng.integers(0, 256, (2, 3, 720, 1280), dtype=np.uint8)
    out = make_eval_transform(256)(torch.from_numpy(clip))  # [C, T, 256, 256]
    resized = np.clip(np.rint(_reference_resize(clip, 292, 519)), 0, 255)
    top, left, _, _ = center_crop_box(292, 519, 256, 256)
    crop = resized[..., top:top + 256, left:left + 256].transpose(1, 0, 2, 3) / 255.0
    mean = np.array(IMAGENET_DEFAULT_MEAN)[:, None, None, None]
    std = np.array(IMAGENET_DEFAULT_STD)[:, None, None, None]
    diff = np.abs(out.numpy() - (crop - mean) / std)
    one_level = 1 / 255 / min(IMAGENET_DEFAULT_STD)
    assert diff.max() <= one_level + 1e-5  # a value on a rounding tie may land one level off
    assert (diff > 1e-5).mean() < 1e-3


def test_resize_numpy_path_is_cv2_bilinear_unchanged():
    import cv2

    clip = _gradient_clip(2, 480, 640) + _np_clip(2, 480, 640) // 8
    out = Resize(292)(clip)
    for t in range(2):
        np.testing.assert_array_equal(out[t], cv2.resize(clip[t], (389, 292), interpolation=cv2.INTER_LINEAR))
    assert Resize(292, antialias=True)(clip).tobytes() == out.tobytes()


# ---------------------------------------------------------------- crop


def test_center_crop_box_known_sizes():
    # (292 - 256) / 2 = 18; (389 - 256) / 2 = 66.5 -> round() -> 66 (banker's rounding).
    assert center_crop_box(292, 389, 256, 256) == (18, 66, 256, 256)
    # (389 - 256) / 2 = 66.5 -> 66 ; (292 - 256) / 2 = 18
    assert center_crop_box(389, 292, 256, 256) == (66, 18, 256, 256)
    # (438 - 384) / 2 = 27 ; (583 - 384) / 2 = 99.5 -> 100 (round half to even)
    assert center_crop_box(438, 583, 384, 384) == (27, 100, 384, 384)
    assert center_crop_box(10, 10, 10, 10) == (0, 0, 10, 10)


def test_center_crop_pixels_numpy_and_torch():
    clip = np.arange(2 * 292 * 389 * 3, dtype=np.int64).reshape(2, 292, 389, 3)
    out = CenterCrop(256)(clip)
    assert out.shape == (2, 256, 256, 3)
    np.testing.assert_array_equal(out, clip[:, 18:274, 66:322, :])

    tclip = torch.from_numpy(clip).permute(0, 3, 1, 2)  # [T, C, H, W]
    tout = CenterCrop(256)(tclip)
    assert tuple(tout.shape) == (2, 3, 256, 256)
    assert torch.equal(tout, tclip[:, :, 18:274, 66:322])

    out = CenterCrop((4, 6))(clip[:, :10, :10])
    np.testing.assert_array_equal(out, clip[:, 3:7, 2:8, :])


# ---------------------------------------------------------------- tensor / normalize


def test_clip_to_tensor_numpy_and_torch():
    clip = _np_clip(4, 6, 5)
    out = ClipToTensor()(clip)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 4, 6, 5)
    expected = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 255.0
    assert torch.equal(out, expected)

    tout = ClipToTensor()(torch.from_numpy(clip).permute(0, 3, 1, 2))
    assert torch.equal(tout, expected)

    # Float input is only permuted/converted, not divided.
    fclip = clip.astype(np.float32)
    fout = ClipToTensor()(fclip)
    assert torch.equal(fout, torch.from_numpy(fclip).permute(3, 0, 1, 2))

    # div_255=False keeps uint8 values.
    raw = ClipToTensor(div_255=False)(clip)
    assert torch.equal(raw, torch.from_numpy(clip).permute(3, 0, 1, 2).float())


def test_clip_to_tensor_single_channel_repeats():
    clip = _np_clip(2, 3, 4, c=1)
    out = ClipToTensor()(clip)
    assert tuple(out.shape) == (3, 2, 3, 4)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    assert torch.equal(out[0], torch.from_numpy(clip[..., 0]).float() / 255.0)


def test_normalize_not_in_place():
    x = torch.full((3, 2, 4, 4), 0.5)
    before = x.clone()
    y = Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)(x)
    assert torch.equal(x, before)
    for c in range(3):
        ref = (0.5 - IMAGENET_DEFAULT_MEAN[c]) / IMAGENET_DEFAULT_STD[c]
        assert torch.allclose(y[c], torch.full_like(y[c], ref), atol=1e-6)


def test_eval_transform_constant_clip():
    clip = _np_clip(3, 48, 64, value=128)
    out = make_eval_transform(32)(clip)
    assert tuple(out.shape) == (3, 3, 32, 32) and out.dtype == torch.float32
    for c in range(3):
        ref = (128 / 255 - IMAGENET_DEFAULT_MEAN[c]) / IMAGENET_DEFAULT_STD[c]
        np.testing.assert_allclose(out[c].numpy(), ref, atol=1e-6)

    # Same result from the torch [T, C, H, W] uint8 path.
    tout = make_eval_transform(32)(torch.from_numpy(clip).permute(0, 3, 1, 2))
    assert tuple(tout.shape) == (3, 3, 32, 32)
    assert torch.allclose(tout, out, atol=1e-6)


def test_eval_transform_sizes_and_repr():
    tf = make_eval_transform(256)
    out = tf(_gradient_clip(2, 480, 640))
    assert tuple(out.shape) == (3, 2, 256, 256)
    r = repr(tf)
    assert "Resize(size=292" in r and "CenterCrop(size=(256, 256))" in r
    assert "ClipToTensor" in r and "Normalize" in r
    assert isinstance(tf, Compose)
    assert video_transforms.ClipToTensor is volume_transforms.ClipToTensor


# ---------------------------------------------------------------- crop box


def test_eval_crop_box_landscape():
    box = eval_crop_box(480, 640, 256)
    # Resize: 292 x int(292 * 640 / 480) = 292 x 389; crop offsets top 18, left 66.
    assert box["resized_hw"] == [292, 389]
    assert box["crop"] == 256
    assert box["x0"] == pytest.approx(66 * 640 / 389)  # 108.586...
    assert box["x1"] == pytest.approx(322 * 640 / 389)  # 529.769...
    assert box["y0"] == pytest.approx(18 * 480 / 292)  # 29.589...
    assert box["y1"] == pytest.approx(274 * 480 / 292)  # 450.411...
    assert box["x0"] == pytest.approx(108.5861, abs=1e-3)
    assert box["y1"] == pytest.approx(450.4110, abs=1e-3)


def test_eval_crop_box_square_is_centred():
    box = eval_crop_box(300, 300, 256)
    assert box["resized_hw"] == [292, 292]
    assert box["x0"] == pytest.approx(18 * 300 / 292)
    assert box["x0"] + box["x1"] == pytest.approx(300.0)
    assert box["y0"] + box["y1"] == pytest.approx(300.0)
    assert box["x0"] == pytest.approx(box["y0"]) and box["x1"] == pytest.approx(box["y1"])


# ---------------------------------------------------------------- errors


def test_crop_bigger_than_clip_raises():
    with pytest.raises(ValueError, match="30x40.*64x64"):
        CenterCrop(64)(_np_clip(1, 30, 40))
    with pytest.raises(ValueError, match="smaller than crop"):
        CenterCrop((10, 50))(torch.zeros(1, 3, 20, 40))
    with pytest.raises(ValueError):
        center_crop_box(10, 10, 11, 5)


def test_bad_interpolation_raises():
    with pytest.raises(ValueError, match="bicubicc"):
        Resize(10, interpolation="bicubicc")


def test_clip_to_tensor_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        ClipToTensor()(np.zeros((4, 5), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"\(2, 4, 5, 4\)"):
        ClipToTensor()(np.zeros((2, 4, 5, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        ClipToTensor()(torch.zeros(2, 2, 4, 5))


def test_resize_bad_numpy_rank_raises():
    with pytest.raises(ValueError, match="T, H, W, C"):
        Resize(10)(np.zeros((20, 30, 3), dtype=np.uint8))
