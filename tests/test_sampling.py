"""--sample_fps: windows sampled in video time from presentation timestamps, whatever the frame rate."""
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from src.errors import ConfigError
from src.features import load_features
from src.media import VideoReader, sample_video
from src.media.decord_backend import import_decord
from src.media.sampling import positions_at_fps
from vjepa2_sequential_extractor import main

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
av = pytest.importorskip("av")
BACKENDS = ["pyav"] + (["decord"] if import_decord() is not None else [])
MODEL = ["--model", "random:tiny", "--img_size", "32", "--device", "cpu", "--num_workers", "0"]


def _clip(path, rate: int, seconds: float = 2.5):
    """The same scene (testsrc2: its pictures follow the clock) encoded at `rate` frames/s."""
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=64x48:rate={rate}:duration={seconds}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("rates")
    return {rate: _clip(root / f"scene_{rate}.mp4", rate) for rate in (30, 25, 8)}


@pytest.mark.parametrize("rate", [30, 25])
def test_windows_sampled_in_video_time(clips, rate, tmp_path):
    out = tmp_path / "out"
    code = main([*MODEL, "--video", str(clips[rate]), "--output_dir", str(out), "--sample_fps", "8", "--window", "8"])
    assert code == 0
    files = sorted(out.glob("window_*.pt"))
    assert len(files) == 3  # 2.5 s at 8/s: 20 samples → 2 windows + a tail of 4
    first, second = (load_features(f)["metadata"] for f in files[:2])
    one_frame = 1 / rate
    for k, t in enumerate(first["timestamps"]):
        assert k / 8 - one_frame < t <= k / 8 + 1e-6  # the frame shown at k/8 s
    assert first["frame_numbers"] == [int(k / 8 * rate + 1e-9) for k in range(8)]
    assert second["timestamps"][0] == pytest.approx(1.0, abs=1e-6)  # window 1 starts at 1.0 s
    assert second["frame_numbers"][0] == rate
    assert first["sample_fps"] == 8 and first["fps"] == pytest.approx(rate)


def test_same_moments_at_both_rates(clips):
    sampled = {}
    for rate in (30, 25):
        with VideoReader(clips[rate]) as reader:
            picked = sample_video(reader, sample_fps=5)
            sampled[rate] = (picked, reader.get_frames(picked.indices))
    (a, frames_a), (b, frames_b) = sampled[30], sampled[25]
    assert len(a.indices) == len(b.indices) == 13  # 2.5 s at 5/s (k/5 < 2.5)
    assert a.timestamps == pytest.approx(b.timestamps, abs=1e-6)  # k/5 s falls on a frame of both
    # the same scene at the same moment: the pictures agree (up to the encoder's loss)
    assert np.abs(frames_a.astype(int) - frames_b.astype(int)).mean() < 12


def test_sample_fps_is_part_of_the_run_signature(clips, tmp_path):
    """At 8 frames/s, --sample_fps 8 picks every frame, as the default does: still another run."""
    out = tmp_path / "out"
    args = [*MODEL, "--video", str(clips[8]), "--output_dir", str(out), "--window", "8"]
    assert main(args) == 0
    before = load_features(out / "window_00000.pt")["metadata"]
    assert before["frame_numbers"] == list(range(8)) and before["sample_fps"] is None
    from src.errors import UsageError

    with pytest.raises(UsageError, match=r"sample_fps None \(now 8.0\)"):
        main([*args, "--sample_fps", "8"])
    assert main([*args, "--sample_fps", "8", "--overwrite"]) == 0
    after = load_features(out / "window_00000.pt")["metadata"]
    assert after["frame_numbers"] == before["frame_numbers"] and after["sample_fps"] == 8


def test_variable_frame_rate(tmp_path):
    """Frames shown for 0.1 s, then 0.5 s, alternately: time sampling follows the timestamps."""
    path = tmp_path / "vfr.mp4"
    pts = [0]
    for i in range(11):
        pts.append(pts[-1] + (1 if i % 2 == 0 else 5))  # in tenths of a second
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 10)
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = p, Fraction(1, 10)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    for backend in BACKENDS:
        with VideoReader(path, backend=backend) as reader:
            assert reader.timestamps(range(reader.num_frames)) == pytest.approx([p / 10 for p in pts])
            picked = sample_video(reader, sample_fps=5)  # every 0.2 s
            end = pts[-1] / 10 + 1 / reader.fps  # the last frame (3.1 s) shown for one mean frame interval
        count = sum(1 for k in range(30) if k / 5 < end - 1e-4)
        expected = [max(i for i, p in enumerate(pts) if p <= 2 * k) for k in range(count)]
        assert picked.indices == expected and count >= 16
        assert picked.indices[:7] == [0, 1, 1, 2, 3, 3, 4]  # at 0.4 s frame 1 (0.1 s) is still shown


def test_positions_and_refusals():
    times = [0.0, 0.04, 0.08, 0.12, 0.16]
    assert positions_at_fps(times, 10, frame_duration=0.04) == [0, 2]  # 0.0, 0.1 s (0.2 s is after the end)
    assert positions_at_fps(times, 50, frame_duration=0.04) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # frames repeat
    assert positions_at_fps([], 8, 0.1) == []

    class Reader:
        num_frames, fps = 5, 25.0

        def timestamps(self, indices):
            return [times[i] for i in indices]

    with pytest.raises(ConfigError, match="give one of them"):
        sample_video(Reader(), frame_step=2, sample_fps=8)
    with pytest.raises(ConfigError, match="must be positive"):
        sample_video(Reader(), sample_fps=0)
    assert sample_video(Reader(), frame_step=2).indices == [0, 2, 4]


def test_cli_refuses_a_bad_rate(clips, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main([*MODEL, "--video", str(clips[8]), "--output_dir", str(tmp_path), "--sample_fps", "-1"])
    assert info.value.code == 2 and "must be a positive number" in capsys.readouterr().err


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_video_backend_is_used_and_recorded(clips, backend, tmp_path):
    out = tmp_path / "out"
    assert main([*MODEL, "--video", str(clips[8]), "--output_dir", str(out), "--window", "8",
                 "--video_backend", backend]) == 0
    meta = load_features(out / "window_00000.pt")["metadata"]
    assert meta["video_backend"] == backend and meta["coded_size"] == [48, 64] and meta["rotation"] == 0
