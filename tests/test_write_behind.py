"""Window runs write behind the model (issue 23.2): with every write slowed down, the window loop
keeps its pace, and the outputs are those of an undelayed run."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from src import background
from src.extract import windows_run
from src.features import load_features
from vjepa2_sequential_extractor import SequentialVJEPA2Extractor

WINDOWS = 16


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(4 * WINDOWS):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / f"frame_{i:04d}.png")
    return root


def _loop_seconds(extractor, frames, out, monkeypatch) -> float:
    """The window loop's own time (`WindowRun._encode`, which ends once every write is done)."""
    spent = []
    real = windows_run.WindowRun._encode

    def timed(self, *args):
        start = time.perf_counter()
        real(self, *args)
        spent.append(time.perf_counter() - start)

    with monkeypatch.context() as patch:
        patch.setattr(windows_run.WindowRun, "_encode", timed)
        extractor.process_frame_directory(frames, out)
    return spent[0]


def test_slow_writes_do_not_slow_the_window_loop(frames, tmp_path, monkeypatch):
    extractor = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=4, num_workers=0)
    # The model's pace is fixed (the tiny model, then 80 ms: a GPU's forward pass, which leaves the CPU
    # free), so the timing does not follow the load of a shared test machine.
    encode = extractor.encoder.encode
    monkeypatch.setattr(extractor.encoder, "encode", lambda clips: (encode(clips), time.sleep(0.08))[0])
    undelayed = min(_loop_seconds(extractor, frames, tmp_path / f"plain{i}", monkeypatch) for i in range(2))
    # each write (a batch of one window) sleeps 40 ms more: written inline, the loop would take ~1.5x
    monkeypatch.setattr(background, "DELAY_EACH_JOB_S", 0.04)
    delayed = min(_loop_seconds(extractor, frames, tmp_path / f"slow{i}", monkeypatch) for i in range(2))
    assert undelayed > WINDOWS * 0.08
    assert delayed < 1.2 * undelayed, (delayed, undelayed)
    plain = {p.name: load_features(p) for p in sorted((tmp_path / "plain0").glob("window_*.pt"))}
    slow = {p.name: load_features(p) for p in sorted((tmp_path / "slow1").glob("window_*.pt"))}
    assert len(plain) == WINDOWS and plain.keys() == slow.keys()
    assert all(torch.equal(plain[n]["features"], slow[n]["features"]) for n in plain)
    lines = [json.loads(line) for line in (tmp_path / "slow1" / "manifest.jsonl").read_text().splitlines()]
    assert [(e["input"].rsplit("#", 1)[1], e["status"]) for e in lines] == [(f"window{i}", "ok") for i in range(WINDOWS)]


def test_a_failed_write_stops_the_run_with_its_error(frames, tmp_path, monkeypatch):
    extractor = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=4, num_workers=0)
    calls = []

    def failing_save(record, path, fmt):
        calls.append(path.name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(record, path, fmt)

    from src.extract import writer
    real = writer.save_features
    monkeypatch.setattr(writer, "save_features", failing_save)
    with pytest.raises(OSError, match="No space left on device"):
        extractor.process_frame_directory(frames, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("window_*.pt")) == ["window_00000.pt", "window_00001.pt"]
    assert calls == ["window_00000.pt", "window_00001.pt", "window_00002.pt"]  # nothing written after the failure
