"""Window and image runs of src/extract: sharding whole inputs balanced by window counts, and inf/NaN
features (an fp16 overflow) stopping the run with the window named and nothing of it stored."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.errors import ConfigError
from src.extract import layout
from src.extract.image_run import extract_directory
from src.extract.seed import SequentialVJEPA2Extractor, VJEPA2Extractor
from src.extract.window_sources import WindowPlan
from src.extract.inputs import run_inputs
from src.features import Manifest, load_chunk
from src.inference import FeatureOverflowError
from src.windows import plan_windows

FRAME_COUNTS = [2, 4, 6, 8, 10, 3, 7]  # windows of 2 frames, the tail padded: 1, 2, 3, 4, 5, 2, 4


def _frames(folder: Path, count: int, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for n in range(count):
        Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(folder / f"frame_{n:04d}.png")
    return folder


def _run(shard, inputs, out, **kwargs):
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=2, num_workers=0, shard=shard,
                                   **kwargs)
    return run_inputs(ex, inputs, out)


def test_window_plan_count_matches_the_plan():
    for tail in ("pad", "drop"):
        for window, stride in ((2, None), (4, 2), (4, 6), (16, 16)):
            plan = WindowPlan(window, stride, tail)
            for available in range(0, 40):
                expected = len(plan_windows(available, window, stride, tail)) if available >= window else 0
                assert plan.count(available) == expected, (tail, window, stride, available)


def test_seven_clips_over_three_shards_every_window_once_and_balanced(tmp_path):
    inputs = [("frames", _frames(tmp_path / "in" / f"clip{i}", n, i)) for i, n in enumerate(FRAME_COUNTS)]
    windows = {f"clip{i}": WindowPlan(2).count(n) for i, n in enumerate(FRAME_COUNTS)}
    assert sorted(windows.values()) == [1, 2, 2, 3, 4, 4, 5]
    out = tmp_path / "out"
    per_shard = [_run((i, 3), inputs, out)[0]["ok"] for i in range(3)]

    done = {}  # (clip, window) → the shards that wrote it
    for clip in windows:
        for r in Manifest.read(out / clip / layout.MANIFEST_NAME):
            assert r["status"] == "ok" and r["sharded_by"] == "input", r
            done.setdefault((clip, r["input"].rsplit("#", 1)[1]), []).append(r["shard"])
        assert sorted(p.name for p in (out / clip).glob("window_*.pt")) == \
            [f"window_{k:05d}.pt" for k in range(windows[clip])]
        writers = {shard for key, shards in done.items() if key[0] == clip for shard in shards}
        assert len(writers) == 1  # a clip is written by one shard, whole
    assert len(done) == sum(windows.values()) and all(len(s) == 1 for s in done.values())  # every window once
    assert sum(per_shard) == sum(windows.values()) == 21
    assert max(per_shard) - min(per_shard) <= max(windows.values())  # within one clip's windows
    assert min(per_shard) > 0

    # resume: a rerun of each shard finds its inputs finished and encodes nothing
    reruns = [_run((i, 3), inputs, out)[0] for i in range(3)]
    assert [r["ok"] for r in reruns] == [0, 0, 0] and [r["skipped"] for r in reruns] == per_shard


def test_fewer_inputs_than_shards_split_windows(tmp_path):
    inputs = [("frames", _frames(tmp_path / "in" / "a", 10, 0)), ("frames", _frames(tmp_path / "in" / "b", 6, 1))]
    out = tmp_path / "out"
    per_shard = [_run((i, 3), inputs, out)[0]["ok"] for i in range(3)]
    assert per_shard == [3, 3, 2]  # a's 5 windows as 2, 2, 1 and b's 3 as 1, 1, 1: a share of each input
    for clip in ("a", "b"):
        assert all(r["sharded_by"] == "windows" for r in Manifest.read(out / clip / layout.MANIFEST_NAME))


def _overflow_on_call(encoder, call: int, item: int):
    """Make the encoder's `call`-th batch come out with an inf in its `item`-th clip, as an fp16
    overflow inside the model would."""
    original, calls = encoder.encode, []

    def encode(clips):
        feats = original(clips)
        calls.append(1)
        if len(calls) == call:
            feats = feats.clone()  # `encode` returns an inference tensor
            feats[item, 0, 0] = float("inf")
        return feats

    encoder.encode = encode


def test_window_overflow_stops_naming_the_window_and_stores_nothing_of_it(tmp_path):
    frames = _frames(tmp_path / "clip", 8, 0)
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=2, num_workers=0,
                                   store="both", table_dir=tmp_path / "table")
    _overflow_on_call(ex.encoder, call=2, item=0)
    out = tmp_path / "out"
    with pytest.raises(FeatureOverflowError, match=rf"{frames}#window1: features contain inf/NaN with float32 compute;"
                                                   r" nothing of this batch was stored") as raised:
        ex.process_frame_directory(frames, out)
    assert isinstance(raised.value, ConfigError)  # exit 2 through src.cli.run
    ex.close()
    assert sorted(p.name for p in out.glob("window_*")) == ["window_00000.pt"]
    records = Manifest.read(out / layout.MANIFEST_NAME)
    assert [(r["input"], r["status"]) for r in records] == [(f"{frames}#window0", "ok")]
    import pyarrow.parquet as pq

    parts = sorted((tmp_path / "table").glob("part-*.parquet"))
    items = [i for p in parts for i in pq.read_table(p)["item"].to_pylist()]
    assert items == [f"{frames.resolve()}#window0"]
    # the run stops: a later input is not started
    other = _frames(tmp_path / "other", 4, 1)
    _overflow_on_call(ex.encoder, call=1, item=0)
    with pytest.raises(FeatureOverflowError):
        run_inputs(ex, [("frames", other), ("frames", frames)], tmp_path / "out2")
    assert not list((tmp_path / "out2").rglob("window_*.pt"))


def test_fp16_overflow_names_the_dtype_and_the_fix(tmp_path):
    frames = _frames(tmp_path / "clip", 4, 0)
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", dtype="fp16", img_size=32, window=2, num_workers=0,
                                   batch_size=2)
    with torch.no_grad():
        ex.encoder.model.patch_embed.proj.weight.mul_(1e7)  # activations beyond fp16's 65504
    with pytest.raises(FeatureOverflowError, match=r"#window0: features contain inf/NaN with float16 compute "
                                                   r"\(and 1 more in its batch\).*--dtype bf16 or fp32"):
        ex.process_frame_directory(frames, tmp_path / "out")
    assert not list((tmp_path / "out").glob("window_*"))


def test_image_overflow_stops_naming_the_image_and_writes_no_chunk(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    names = [f"img{i}.png" for i in range(4)]
    for i, name in enumerate(names):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(images / name)
    ex = VJEPA2Extractor("random:tiny", device="cpu", img_size=32, image_frames=2)
    _overflow_on_call(ex.encoder, call=2, item=1)
    out = tmp_path / "out"
    with pytest.raises(FeatureOverflowError, match=r"^img3\.png: features contain inf/NaN"):
        extract_directory(ex.encoder, images, names, out, image_frames=2, batch_size=2, chunk_size=4, progress=False)
    assert not list(out.glob(layout.CHUNK_GLOB))
    # with the overflow gone, a rerun writes the whole chunk
    ex.encoder.encode = type(ex.encoder).encode.__get__(ex.encoder)
    summary = extract_directory(ex.encoder, images, names, out, image_frames=2, batch_size=2, chunk_size=4,
                                progress=False)
    assert summary.done == 4 and sorted(load_chunk(out / layout.chunk_name(0, 1, 0))) == names
