"""The pipeline's fast drawing path (blend lookup table, shared overlays, PNGs encoded on worker
threads at zlib level 1, GIF frames quantised and encoded on the writer's thread) gives pictures
whose decoded pixels equal a reference rendering by the original formulas on the same grids."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageSequence

from src.render import PNG_COMPRESS_LEVEL, PictureWriters, VideoWriter, crop_box_pixels, overlay
from src.visualize import FeatureItem, write_token_pictures

BOX = {"x0": 36.4, "y0": 0.0, "x1": 123.6, "y1": 72.0}  # a centre crop of a 160 x 72 frame


def reference_overlay(frame: np.ndarray, grid: np.ndarray, box: dict, alpha: float) -> np.ndarray:
    """The original formula: float64 blend of the nearest-upscaled grid over the box, rounded."""
    x0, y0, x1, y1 = crop_box_pixels(box, *frame.shape[:2])
    rows = (np.arange(y1 - y0) * grid.shape[0]) // (y1 - y0)
    cols = (np.arange(x1 - x0) * grid.shape[1]) // (x1 - x0)
    patch = grid[rows[:, None], cols[None, :]].astype(np.float64)
    out = frame.copy()
    region = frame[y0:y1, x0:x1].astype(np.float64)
    out[y0:y1, x0:x1] = np.clip(np.rint((1.0 - alpha) * region + alpha * patch), 0, 255).astype(np.uint8)
    return out


def reference_label(image: np.ndarray, text: str) -> np.ndarray:
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    left, top, right, bottom = draw.textbbox((5, 5), text)
    draw.rectangle((left - 3, top - 3, right + 2, bottom + 2), fill=(0, 0, 0))
    draw.text((5, 5), text, fill=(255, 255, 255))
    return np.asarray(pil)


@pytest.mark.parametrize("alpha", [0.0, 0.125, 1 / 3, 0.5, 0.77, 1.0])
def test_overlay_equals_float64_formula_for_every_byte_pair(alpha):
    # every (frame byte, colour byte) pair occurs: 256 x 256 pixels, frame value = row, colour = column
    frame = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 256, axis=1).repeat(3, axis=2)
    grid = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 256, axis=0).repeat(3, axis=2)
    whole = {"x0": 0, "y0": 0, "x1": 256, "y1": 256}
    fast = overlay(frame, grid, whole, alpha)
    assert np.array_equal(fast, reference_overlay(frame, grid, whole, alpha))
    if alpha == 0.5:  # halves round to even, as np.rint does: (0 + 1) / 2 -> 0, (1 + 2) / 2 -> 2
        assert fast[0, 1, 0] == 0 and fast[1, 2, 0] == 2


def test_token_pictures_on_worker_threads_equal_reference(tmp_path):
    rng = np.random.default_rng(3)
    grids = rng.integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)  # Tp=2 tokens of a 4 x 5 grid
    frames = [rng.integers(0, 256, (72, 160, 3), dtype=np.uint8) for _ in range(4)]
    meta = {"crop_box": BOX, "source_type": "frames"}
    item = FeatureItem("clip_w0", None, meta, (2, 4, 5))
    cache = {}

    def overlay_at(pos):  # as the pipeline shares overlays between PNGs and video frames
        return cache.setdefault(pos, overlay(frames[pos], grids[pos // 2], BOX, 0.4))

    with PictureWriters(workers=2, max_pending=2) as workers:
        written = write_token_pictures(item, grids, [1, 2, 3, 4], frames, tmp_path, "umap", 0.4,
                                       annotate_frames=True, png=workers.png, overlay_at=overlay_at)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == [
        "umap_projection/clip_w0_t00.png", "umap_overlay/clip_w0_t00.png",
        "umap_projection/clip_w0_t01.png", "umap_overlay/clip_w0_t01.png"]
    for t in range(2):
        projection = np.asarray(Image.open(tmp_path / f"umap_projection/clip_w0_t{t:02d}.png"))
        assert np.array_equal(projection, np.kron(grids[t], np.ones((16, 16, 1), np.uint8)))
        picture = np.asarray(Image.open(tmp_path / f"umap_overlay/clip_w0_t{t:02d}.png"))
        expected = reference_label(reference_overlay(frames[2 * t], grids[t], BOX, 0.4), f"frame {2 * t + 1}")
        assert np.array_equal(picture, expected)
        assert not np.array_equal(picture, frames[2 * t])  # the overlay is there
    # pixels as PIL's default level would store them; the bytes are level 1's
    reference = tmp_path / "level6.png"
    Image.fromarray(expected).save(reference, format="PNG", compress_level=6)
    assert np.array_equal(np.asarray(Image.open(reference)), picture)
    assert PNG_COMPRESS_LEVEL == 1


def test_gif_frames_are_the_fast_octree_palette_of_each_frame(tmp_path):
    rng = np.random.default_rng(5)
    frames = [reference_overlay(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8),
                                rng.integers(0, 256, (4, 4, 3), dtype=np.uint8),
                                {"x0": 0, "y0": 0, "x1": 60, "y1": 40}, 0.5) for _ in range(5)]
    for background in (False, True):  # inline, and on the writer's own thread as render() uses it
        path = tmp_path / f"v{int(background)}.gif"
        with VideoWriter(path, fps=10, background=background) as gif:
            for frame in frames:
                buffer = frame.copy()
                gif.append(buffer)
                buffer[:] = 0  # a caller reusing its buffer does not change the frame already appended
        decoded = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(Image.open(path))]
        assert len(decoded) == 5
        for got, frame in zip(decoded, frames):
            reference = np.asarray(Image.fromarray(frame).quantize(256, method=Image.Quantize.FASTOCTREE).convert("RGB"))
            assert np.array_equal(got, reference)
            assert np.abs(got.astype(int) - frame).mean() < 12  # a palette of the frame, not of another one


@pytest.mark.parametrize("background", [False, True])
def test_a_streamed_gif_decodes_as_pillows_save_all_of_the_same_frames(tmp_path, background):
    """Frames are encoded as they come, yet the GIF shows what Pillow's one-go `save_all` shows:
    the same frames, identical consecutive ones merged with their durations added, looping."""
    from src.render import _gif_palette_frame, gif_frame_duration_ms

    rng = np.random.default_rng(7)
    distinct = [rng.integers(0, 256, (30, 44, 3), dtype=np.uint8) for _ in range(4)]
    frames = [distinct[0], distinct[1], distinct[1], distinct[2], distinct[3], distinct[3], distinct[3]]
    path = tmp_path / "s.gif"
    sizes = []
    with VideoWriter(path, fps=8, background=background) as gif:
        for frame in frames:
            gif.append(frame)
            if not background:
                (partial,) = tmp_path.glob(".*")  # the GIF being written, under its temporary name
                sizes.append(partial.stat().st_size)
    palette = [_gif_palette_frame(f) for f in frames]
    palette[0].save(tmp_path / "pillow.gif", format="GIF", save_all=True, append_images=palette[1:],
                    duration=gif_frame_duration_ms(8), loop=0, disposal=2)

    def decoded(p):
        with Image.open(p) as im:
            loop = im.info.get("loop")
            return loop, [(np.asarray(f.convert("RGB")).copy(), f.info["duration"]) for f in ImageSequence.Iterator(im)]

    (loop, ours), (pillow_loop, pillow) = decoded(path), decoded(tmp_path / "pillow.gif")
    assert loop == pillow_loop == 0
    assert [d for _, d in ours] == [d for _, d in pillow] == [130, 260, 130, 390]
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(ours, pillow))
    if not background:  # each frame reached the file when the next different one came, not at close
        assert sizes[0] == 0 < sizes[1] == sizes[2] < sizes[3] < sizes[4] == sizes[5] == sizes[6]
    assert not list(tmp_path.glob(".*"))  # the temporary name is gone


def test_an_aborted_gif_leaves_nothing(tmp_path):
    writer = VideoWriter(tmp_path / "w.gif", fps=10)
    writer.append(np.zeros((8, 8, 3), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_picture_writers_raise_the_first_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError):
        with PictureWriters(workers=2) as workers:
            workers.png(np.zeros((4, 4, 3), np.uint8), blocker / "a.png")
    with pytest.raises(ValueError, match="RGB"):
        with PictureWriters(workers=0) as workers:
            workers.png(np.zeros((4, 4), np.uint8), tmp_path / "b.png")
