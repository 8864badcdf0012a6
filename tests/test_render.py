"""Tests for src.render: token grids, crop-box overlays, composition, PNG/MP4/GIF output."""
from __future__ import annotations

import os
import stat
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from src.datasets.utils.video.transforms import eval_crop_box
from src.render import (
    VideoWriter,
    annotate,
    crop_box_pixels,
    grid_for_frame,
    overlay,
    projection_image,
    side_by_side,
    stack_vertical,
    token_colors_to_grids,
    upscale_nearest,
    write_png,
)


def _distinct_colors(n: int) -> np.ndarray:
    """n distinct RGB colours (n < 2**24): the index in base 256."""
    idx = np.arange(n)
    return np.stack([idx % 256, (idx // 256) % 256, (idx // 65536) % 256], axis=1).astype(np.uint8)


def _random_grid(hp: int, wp: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (hp, wp, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- grids


def test_token_index_placement():
    tp, hp, wp = 3, 4, 5
    colors = _distinct_colors(tp * hp * wp)
    grids = token_colors_to_grids(colors, (tp, hp, wp))
    assert grids.shape == (tp, hp, wp, 3) and grids.dtype == np.uint8
    for t in range(tp):
        for h in range(hp):
            for w in range(wp):
                n = (t * hp + h) * wp + w
                assert np.array_equal(grids[t, h, w], colors[n])
    # Each temporal token covers 2 frames.
    assert np.array_equal(grid_for_frame(grids, 5), grids[2])
    with pytest.raises(IndexError):
        grid_for_frame(grids, 6)


def test_token_count_mismatch_names_both():
    with pytest.raises(ValueError, match=r"N=10.*24"):
        token_colors_to_grids(np.zeros((10, 3), np.uint8), (2, 3, 4))


# --------------------------------------------------------------------------- geometry


def test_crop_box_pixels_rounds_and_clamps():
    assert crop_box_pixels({"x0": 1.4, "y0": 2.5, "x1": 10.6, "y1": 7.49}, 20, 20) == (1, 3, 11, 7)
    assert crop_box_pixels({"x0": -3.0, "y0": -0.2, "x1": 99.0, "y1": 50.0}, 40, 30) == (0, 0, 30, 40)


def test_upscale_blocks_flat_and_projection_size():
    grid = _distinct_colors(12).reshape(3, 4, 3)
    up = upscale_nearest(grid, 30, 41)
    assert up.shape == (30, 41, 3)
    rows = (np.arange(30) * 3) // 30
    cols = (np.arange(41) * 4) // 41
    for h in range(3):
        for w in range(4):
            block = up[np.ix_(rows == h, cols == w)]
            assert block.size and np.all(block == grid[h, w])
    proj = projection_image(grid, scale=16)
    assert proj.shape == (48, 64, 3)
    assert np.all(proj[16:32, 48:64] == grid[1, 3])


# --------------------------------------------------------------------------- overlay

H, W = 272, 640
BOX = eval_crop_box(H, W, 32)


def test_overlay_colours_exactly_the_box():
    grid = _random_grid(2, 2) | 1  # no zero channel, so every box pixel is nonzero
    out = overlay(np.zeros((H, W, 3), np.uint8), grid, BOX, alpha=1.0)
    x0, y0, x1, y1 = crop_box_pixels(BOX, H, W)
    assert 0 < x0 < x1 < W and 0 < y0 < y1 < H  # a real centre crop of a wide frame
    ys, xs = np.nonzero(out.any(axis=2))
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    assert np.array_equal(out[y0:y1, x0:x1], upscale_nearest(grid, y1 - y0, x1 - x0))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_overlay_blend_formula(alpha):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    grid = _random_grid(16, 16, seed=2)
    out = overlay(frame, grid, BOX, alpha=alpha)
    x0, y0, x1, y1 = crop_box_pixels(BOX, H, W)
    outside = np.ones((H, W), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], frame[outside])
    patch = upscale_nearest(grid, y1 - y0, x1 - x0).astype(np.float64)
    expected = np.rint((1 - alpha) * frame[y0:y1, x0:x1] + alpha * patch).astype(np.uint8)
    assert np.array_equal(out[y0:y1, x0:x1], expected)
    if alpha == 0.0:
        assert np.array_equal(out, frame)
    if alpha == 0.3:  # numeric spot check of one pixel, independent of upscale_nearest
        f = frame[y0, x0].astype(float)
        assert np.allclose(out[y0, x0], np.round(0.7 * f + 0.3 * grid[0, 0]), atol=0.5)


def test_overlay_rejects_bad_alpha_and_keeps_input():
    frame = np.full((8, 8, 3), 7, np.uint8)
    with pytest.raises(ValueError):
        overlay(frame, _random_grid(2, 2), None, alpha=1.5)
    overlay(frame, _random_grid(2, 2), None, alpha=1.0)
    assert np.all(frame == 7)


# --------------------------------------------------------------------------- composition


def test_annotate_changes_only_top_left():
    img = np.full((120, 200, 3), 128, np.uint8)
    out = annotate(img, "t=3 frame 17")
    assert np.all(img == 128)  # input untouched
    changed = np.nonzero((out != img).any(axis=2))
    assert changed[0].size > 0
    assert changed[0].max() < 40 and changed[1].max() < 150
    assert changed[0].min() < 5 and changed[1].min() < 5


def _annotate_on_whole_image(img, text, margin=2, padding=3):
    """The plain way: PIL draws the box and text on the whole picture."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    x = y = margin + padding
    left, top, right, bottom = draw.textbbox((x, y), text)
    draw.rectangle((left - padding, top - padding, right + padding - 1, bottom + padding - 1), fill=(0, 0, 0))
    draw.text((x, y), text, fill=(255, 255, 255))
    return np.asarray(pil)


@pytest.mark.parametrize("shape", [(360, 640), (40, 60), (9, 14), (1, 1)])
@pytest.mark.parametrize("text", ["UMAP  frame 17 (t=3)", "g", "", "two\nlines"])
def test_annotate_draws_the_same_pixels_as_on_the_whole_image(shape, text):
    img = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = annotate(img, text, margin=0 if shape == (9, 14) else 2)
    expected = _annotate_on_whole_image(img, text, margin=0 if shape == (9, 14) else 2)
    np.testing.assert_array_equal(out, expected)
    assert out is not img


def test_stack_and_side_by_side_pad_with_black():
    a = np.full((10, 20, 3), 200, np.uint8)
    b = np.full((6, 12, 3), 100, np.uint8)
    v = stack_vertical([a, b])
    assert v.shape == (16, 20, 3) and v.dtype == np.uint8
    assert np.all(v[10:, :12] == 100) and np.all(v[10:, 12:] == 0)
    s = side_by_side([a, b], gap=2)
    assert s.shape == (10, 34, 3)
    assert np.all(s[:, 20:22] == 0) and np.all(s[:6, 22:] == 100) and np.all(s[6:, 22:] == 0)


def test_stack_center_pads_both_sides():
    wide = np.full((4, 25, 3), 200, np.uint8)
    narrow = np.full((2, 10, 3), 100, np.uint8)
    v = stack_vertical([narrow, wide], align="center")
    assert v.shape == (6, 25, 3)
    assert np.all(v[:2, :7] == 0) and np.all(v[:2, 7:17] == 100) and np.all(v[:2, 17:] == 0)  # 7 left, 8 right
    assert np.all(v[2:] == 200)
    s = side_by_side([wide, narrow], align="center")
    assert s.shape == (4, 35, 3)
    assert np.all(s[0, 25:] == 0) and np.all(s[1:3, 25:] == 100) and np.all(s[3, 25:] == 0)
    with pytest.raises(ValueError, match="align must be 'start' or 'center', got 'left'"):
        stack_vertical([narrow, wide], align="left")


# --------------------------------------------------------------------------- files


def test_outputs_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        png = write_png(_random_grid(4, 4, seed=0), tmp_path / "a.png")
        with VideoWriter(tmp_path / "v.gif", fps=5, fmt="gif") as writer:
            writer.append(_random_grid(8, 8, seed=1))
    finally:
        os.umask(old)
    assert stat.S_IMODE(png.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "v.gif").stat().st_mode) == 0o644


def test_write_png_failure_names_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "taken.png"
    target.mkdir()  # a directory where the PNG should go: the final rename fails
    with pytest.raises(OSError, match=rf"{target}: cannot write PNG \(") as info:
        write_png(_random_grid(4, 4, seed=0), target)
    assert info.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]


def test_write_png_deterministic(tmp_path):
    img = _random_grid(33, 47, seed=3)
    p1, p2 = write_png(img, tmp_path / "a.png"), write_png(img.copy(), tmp_path / "sub" / "b.png")
    assert p1.read_bytes() == p2.read_bytes()
    assert np.array_equal(np.asarray(Image.open(p1)), img)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.png", "sub"]  # no temp left


def _flat_frames(n: int, h: int, w: int) -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    cols = rng.integers(30, 226, (n, 3))
    return [np.broadcast_to(c.astype(np.uint8), (h, w, 3)).copy() for c in cols]


@pytest.mark.parametrize("h,w,background", [(90, 160, False), (91, 161, False), (91, 161, True)])
def test_mp4_roundtrip(tmp_path, h, w, background):
    path = tmp_path / "out.mp4"
    frames = _flat_frames(20, h, w)
    with VideoWriter(path, fps=10, fmt="mp4", background=background) as vw:
        for f in frames:
            vw.append(f)
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.format.name == "yuv420p"
        assert stream.average_rate == Fraction(10)
        decoded = [fr.to_ndarray(format="rgb24") for fr in container.decode(stream)]
    assert len(decoded) == 20
    eh, ew = h + h % 2, w + w % 2  # padded, never rescaled
    assert decoded[0].shape == (eh, ew, 3) and eh % 2 == 0 and ew % 2 == 0
    for src, dec in zip(frames, decoded):
        # Compare away from the padded edge (chroma subsampling blends it in).
        err = np.abs(dec[: h - 2, : w - 2].astype(int) - src[: h - 2, : w - 2].astype(int)).mean()
        assert err < 3, err


def test_gif_frames_and_durations(tmp_path):
    path = tmp_path / "out.gif"
    frames = _flat_frames(12, 24, 32)
    with VideoWriter(path, fps=5) as vw:  # format from the suffix
        for f in frames:
            vw.append(f)
    with Image.open(path) as im:
        assert im.n_frames == 12
        for i in range(12):
            im.seek(i)
            assert im.info["duration"] == 200
            rgb = np.asarray(im.convert("RGB")).astype(int)
            assert np.abs(rgb - frames[i]).mean() < 3


@pytest.mark.parametrize("background", [False, True])
@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_exception_inside_writer_leaves_no_file(tmp_path, fmt, background):
    path = tmp_path / f"out.{fmt}"
    with pytest.raises(RuntimeError):
        with VideoWriter(path, fps=10, fmt=fmt, background=background) as vw:
            for f in _flat_frames(3, 16, 16):
                vw.append(f)
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_a_frame_failing_on_the_writer_thread_is_raised_here_and_leaves_no_file(tmp_path, fmt, monkeypatch):
    real = VideoWriter._write_frame

    def second_fails(self, arr):
        if self._failing_after == 0:
            raise OSError("disk full")
        self._failing_after -= 1
        real(self, arr)

    monkeypatch.setattr(VideoWriter, "_write_frame", second_fails)
    path = tmp_path / f"out.{fmt}"
    writer = VideoWriter(path, fps=10, fmt=fmt, background=True)
    writer._failing_after = 1
    with pytest.raises(OSError, match="disk full"):
        with writer:
            for f in _flat_frames(6, 16, 16):
                writer.append(f)
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_size_change(tmp_path):
    path = tmp_path / "out.mp4"
    with pytest.raises(ValueError, match="size"):
        with VideoWriter(path, fps=10, fmt="mp4") as vw:
            vw.append(np.zeros((16, 16, 3), np.uint8))
            vw.append(np.zeros((16, 18, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
