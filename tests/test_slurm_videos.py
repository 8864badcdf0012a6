"""examples/slurm_videos.sbatch, unedited, on a real single-node Slurm (Debian's slurm-wlm + munge,
started here; skipped with the reason when they are not installed — .ci/run installs them)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src import features
from tests.conftest import clean_env

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "examples" / "slurm_videos.sbatch"
SMALL = ["--cpus-per-task=1", "--mem=500M"]  # this machine's share, instead of the template's 8 CPUs


def _clip(path: Path, seconds: float) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc2=size=96x64:rate=10:duration={seconds}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(path)], check=True)


def windows(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out)): features.load_features(p) for p in sorted(out.glob("*/window_*.pt"))}


def test_video_array_then_rerun_of_one_task(slurm, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    _clip(videos / "a.mp4", 4.8)  # at --sample_fps 5: 24 samples → 3 windows of 8
    _clip(videos / "b.mov", 3.2)  # 16 samples → 2 windows
    (videos / "broken.mp4").write_bytes(b"not a video" * 100)
    (videos / "notes.txt").write_text("not a video")
    out, work = tmp_path / "features", tmp_path / "submit"
    (work / "logs").mkdir(parents=True)
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip(f"{venv} is not a virtual environment (the template sources its bin/activate)")
    env = clean_env(REPO=str(REPO), VIDEOS=str(videos), OUTPUT_DIR=str(out), MODEL="random:tiny", NUM_SHARDS="2",
                    DEVICE="cpu", VENV=str(venv), WINDOW="8", SAMPLE_FPS="5", VIDEO_BACKEND="pyav")

    job, status = slurm.sbatch("--array=0-1", *SMALL, str(TEMPLATE), cwd=work, env=env)
    logs = {i: (work / "logs" / f"vjepa2-videos_{job}_{i}.out").read_text() for i in range(2)}
    assert status == 3, logs  # broken.mp4 failed, the rest finished
    before = windows(out)
    assert sorted(before) == ["a/window_00000.pt", "a/window_00001.pt", "a/window_00002.pt",
                              "b/window_00000.pt", "b/window_00001.pt"]
    meta = before["a/window_00001.pt"]["metadata"]
    assert meta["sample_fps"] == 5 and meta["video_backend"] == "pyav" and meta["timestamps"][0] == pytest.approx(1.6)
    failed = [r for r in features.Manifest.read(out / "broken" / "manifest.jsonl") if r["status"] == "failed"]
    assert len(failed) == 1 and "cannot read video" in failed[0]["error"]  # recorded once, by one task
    assert "notes.txt" not in "".join(logs.values())

    # One window lost: rerun the task that owns it alone, the template as it is.
    # (3 inputs for 2 tasks: each task took whole inputs; the manifest says which one wrote it)
    written = next(r for r in features.Manifest.read(out / "a" / "manifest.jsonl")
                   if r["output"] == "window_00001.pt" and r["status"] == "ok")
    assert written["sharded_by"] == "input"
    owner = int(written["shard"].split("/")[0])
    lost = out / "a" / "window_00001.pt"
    lost.unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/window_*.pt")}
    job, status = slurm.sbatch(f"--array={owner}", *SMALL, str(TEMPLATE), cwd=work, env=env)
    log = (work / "logs" / f"vjepa2-videos_{job}_{owner}.out").read_text()
    assert status in (0, 3), log
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/window_*.pt") if p != lost} == kept
    after = windows(out)
    assert sorted(after) == sorted(before)
    for name in before:
        assert torch.equal(after[name]["features"], before[name]["features"]), name
