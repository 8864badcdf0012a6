"""Rotated and flipped videos (display matrix) read as a player shows them, on every backend.

The clips are made here with the ffmpeg binary of imageio-ffmpeg (`-display_rotation`,
`-display_hflip`, `-display_vflip`, stream copy: the coded frames stay landscape) and compared
with ffmpeg's own autorotated decode, the frames a player shows.
"""
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.features import load_features
from src.media import VideoReader, find_frames, load_image
from src.media.decord_backend import import_decord
from src.media.orientation import Orientation

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
BACKENDS = ["pyav"] + (["decord"] if import_decord() is not None else [])
CODED_HW = (64, 96)  # landscape, as stored

# ffmpeg flags → (rotation, hflip) as recorded
CASES = {
    "rot90": (["-display_rotation", "90"], (90, False)),
    "rot180": (["-display_rotation", "180"], (180, False)),
    "rot270": (["-display_rotation", "270"], (270, False)),
    "hflip": (["-display_hflip"], (0, True)),
    "vflip": (["-display_vflip"], (180, True)),
    "rot90_hflip": (["-display_rotation", "90", "-display_hflip"], (90, True)),
}


def _ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", *args], check=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """{case: (clip, folder of ffmpeg's autorotated frames as PNGs)} plus the unrotated "none"."""
    root = tmp_path_factory.mktemp("orientation")
    base = root / "none.mp4"
    w, h = CODED_HW[1], CODED_HW[0]
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={w}x{h}:rate=10:duration=1.6", "-c:v", "libx264",
            "-pix_fmt", "yuv420p", "-g", "8", str(base))
    made = {"none": base}
    for name, (flags, _) in CASES.items():
        made[name] = root / f"{name}.mp4"
        _ffmpeg(*flags, "-i", str(base), "-c", "copy", str(made[name]))
    out = {}
    for name, clip in made.items():
        folder = root / f"{name}_frames"
        folder.mkdir()
        # numbered from 0 like the video's frame indices; ffmpeg autorotates by default
        _ffmpeg("-i", str(clip), "-start_number", "0", str(folder / "frame_%04d.png"))
        out[name] = (clip, folder)
    return out


def _player_frames(folder: Path) -> np.ndarray:
    return np.stack([load_image(p) for _, p in find_frames(folder)])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_frames_are_the_players(clips, case, backend):
    clip, folder = clips[case]
    expected = _player_frames(folder)  # [T, H, W, 3] as displayed
    rotation, hflip = CASES[case][1]
    with VideoReader(clip, backend=backend) as reader:
        assert reader.backend == backend
        assert reader.metadata() == {"video_backend": backend, "coded_size": list(CODED_HW),
                                     "rotation": rotation, "hflip": hflip}
        portrait = rotation in (90, 270)
        assert (reader.height, reader.width) == ((96, 64) if portrait else (64, 96))
        got = reader.get_frames(range(reader.num_frames))
        # out of order and repeated: the same frames, the same way up
        np.testing.assert_array_equal(reader.get_frames([9, 2, 9]), got[[9, 2, 9]])
    assert got.shape == expected.shape == (16, *((96, 64) if portrait else (64, 96)), 3)
    diff = np.abs(got.astype(int) - expected).mean()
    assert diff < 1.0, diff  # same decoder underneath: 0 here
    with VideoReader(clips["none"][0], backend=backend) as reader:  # the coded frames
        coded = reader.get_frames(range(16))
    if coded.shape == got.shape:  # a test that could not tell a flip from nothing would pass anyway
        assert np.abs(coded.astype(int) - expected).mean() > 20


def test_unrotated_clip_is_untouched(clips):
    for backend in BACKENDS:
        with VideoReader(clips["none"][0], backend=backend) as reader:
            assert reader.metadata()["rotation"] == 0 and reader.metadata()["hflip"] is False
            np.testing.assert_array_equal(reader.get_frames(range(16)), _player_frames(clips["none"][1]))


@pytest.mark.parametrize(("matrix", "expected"), [
    ((0, -1, 0, 1, 0, 0), Orientation(transpose=True, flip_rows=True)),  # ffmpeg -display_rotation 90
    ((-1, 0, 0, 0, 1, 0), Orientation(flip_cols=True)),  # -display_hflip
    ((1, 0, 0, 0, -1, 0), Orientation(flip_rows=True)),  # -display_vflip
    ((1, 0, 0, 0, 1, 0), Orientation()),
])
def test_orientation_from_display_matrix(matrix, expected):
    fixed = [v * 65536 for v in matrix] + [0, 0, 1 << 30]  # 16.16 fixed point, w in 2.30
    found = Orientation.from_display_matrix(fixed)
    assert found == expected
    frame = np.arange(6).reshape(1, 2, 3, 1)
    turned = found.apply(frame)[0, :, :, 0]
    if found.transpose:
        assert turned.shape == (3, 2)
    # rotation, then mirror: the recorded pair rebuilds the same frame
    rebuilt = np.rot90(frame[0, :, :, 0], found.rotation // 90)
    np.testing.assert_array_equal(rebuilt[:, ::-1] if found.hflip else rebuilt, turned)


@pytest.fixture(scope="module")
def extractor():
    from vjepa2_sequential_extractor import SequentialVJEPA2Extractor

    return SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, num_workers=0, window=8)


@pytest.mark.parametrize("case", ["rot90", "rot180", "hflip", "rot90_hflip"])
def test_features_equal_those_of_the_players_frames(extractor, clips, case, tmp_path):
    clip, folder = clips[case]
    assert extractor.process_frame_directory(folder, tmp_path / "frames")["ok"] == 2
    reference = {p.name: load_features(p) for p in sorted((tmp_path / "frames").glob("window_*.pt"))}
    rotation, hflip = CASES[case][1]
    for backend in BACKENDS:
        out = tmp_path / backend
        assert extractor.process_video(clip, out, backend=backend)["ok"] == 2
        for name, ref in reference.items():
            got = load_features(out / name)
            torch.testing.assert_close(got["features"].float(), ref["features"].float(), atol=1e-3, rtol=0)
            meta = got["metadata"]
            assert meta["image_size"] == ref["metadata"]["image_size"] == list(Image.open(folder / "frame_0000.png").size[::-1])
            assert (meta["video_backend"], meta["coded_size"], meta["rotation"], meta["hflip"]) == (
                backend, list(CODED_HW), rotation, hflip)
