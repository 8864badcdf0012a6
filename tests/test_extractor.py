"""vjepa2_extractor.py: the VJEPA2Extractor API, aggregation, and the chunked CLI end to end."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vjepa2_extractor as vx
from src import features
from src.datasets.utils.video.transforms import eval_crop_box
from tests.conftest import clean_env, make_image_dir, run_main, write_image

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--model", "random:tiny", "--img_size", "32", "--device", "cpu"]
D = 192  # random:tiny width


@pytest.fixture(scope="module")
def ex16():
    return vx.VJEPA2Extractor("random:tiny", device="cpu", image_frames=16, img_size=32)


@pytest.fixture(scope="module")
def ex2():
    return vx.VJEPA2Extractor("random:tiny", device="cpu", image_frames=2, img_size=32)


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def run_cli(*args):
    """`python vjepa2_extractor.py <MODEL> args` in this interpreter (tests.conftest.run_main)."""
    return run_main("vjepa2_extractor.py", *MODEL, *args)


def read_chunks(out: Path) -> dict[str, dict]:
    """All chunk entries under ``out``; asserts no image appears in two chunks."""
    entries = {}
    for path in sorted(out.glob("features_shard*_chunk*.pt")):
        chunk = features.load_chunk(path)
        assert not set(chunk) & set(entries), f"{path.name} repeats {set(chunk) & set(entries)}"
        entries.update({k: {**v, "file": path.name} for k, v in chunk.items()})
    return entries


# --------------------------------------------------------------------------- API


def test_extract_features_shapes(ex16, ex2, tmp_path):
    # Grid from the model: 16 px patches over a 32 px crop, tubelet 2.
    assert ex16.grid == ex16.encoder.grid(16) == (8, 2, 2)
    assert ex2.grid == (1, 2, 2)
    image = rgb(40, 56)
    f16, f2 = ex16.extract_features(image), ex2.extract_features(image)
    assert f16.shape == (8 * 2 * 2, D) and f16.dtype == torch.float32 and f16.device.type == "cpu"
    assert f2.shape == (2 * 2, D)
    # Non-square (portrait and very wide) inputs give the same token count.
    assert ex16.extract_features(rgb(90, 33, 1)).shape == (32, D)
    assert ex16.extract_features(rgb(20, 200, 2)).shape == (32, D)
    # Path, PIL image and array are the same image.
    path = write_image(tmp_path / "x.png", 40, 56)
    arr = np.asarray(Image.open(path).convert("RGB"))
    a = ex16.extract_features(arr)
    assert torch.equal(ex16.extract_features(path), a)
    assert torch.equal(ex16.extract_features(Image.open(path)), a)


def test_single_frame_repeat_equals_full_clip(ex16):
    # Preprocessing one frame and repeating it == preprocessing 16 copies.
    image = rgb(45, 70, 3)
    clip = ex16.encoder.preprocess(np.repeat(image[None], 16, axis=0))
    reference = ex16.encoder.encode(clip[None])[0].float()
    assert (ex16.extract_features(image) - reference).abs().max() <= 1e-5


def test_extract_batch_equals_single_calls(ex16):
    images = [rgb(40, 56, 0), rgb(64, 40, 1), rgb(33, 33, 2), rgb(50, 120, 3)]
    batch = ex16.extract_batch(images)
    assert batch.shape == (4, 32, D)
    singles = torch.stack([ex16.extract_features(im) for im in images])
    assert (batch - singles).abs().max() <= 1e-5
    assert (batch[0] - batch[1]).abs().max() > 1e-2  # different images differ


@pytest.mark.parametrize("frames", [0, 3, 15, -2, 2.0])
def test_image_frames_must_be_even(frames):
    with pytest.raises(ValueError, match="1 .* or an even integer >= 2"):
        vx.VJEPA2Extractor("random:tiny", device="cpu", image_frames=frames, img_size=32)


def test_one_image_frame_needs_an_image_path():
    with pytest.raises(ValueError, match="image_frames 1 needs a model with an image path .*V-JEPA 2.0: use 2 or 16"):
        vx.VJEPA2Extractor("random:tiny", device="cpu", image_frames=1, img_size=32)


def test_aggregation_shapes_and_values(ex16):
    feats = ex16.extract_features(rgb(40, 56, 4))  # [32, D], grid (8, 2, 2)
    agg = ex16.aggregate_features
    assert torch.equal(agg(feats, "mean"), feats.mean(0)) and agg(feats, "mean").shape == (D,)
    assert torch.equal(agg(feats, "max"), feats.max(0).values)
    temporal = agg(feats, "temporal")
    assert temporal.shape == (8, D)
    for t in range(8):  # tokens are t-major: step t is tokens 4t .. 4t+3
        assert torch.allclose(temporal[t], feats[4 * t:4 * t + 4].mean(0), atol=1e-6)
    spatial = agg(feats, "spatial")
    assert spatial.shape == (4, D)
    for p in range(4):  # patch p = h * Wp + w recurs every 4 tokens
        assert torch.allclose(spatial[p], feats[p::4].mean(0), atol=1e-6)
    # On a 2x2 grid each quadrant is one patch.
    assert torch.allclose(agg(feats, "quadrants"), spatial, atol=1e-6)
    # [B, tokens, D] is aggregated per item.
    both = torch.stack([feats, feats * 2])
    assert torch.allclose(agg(both, "temporal"), torch.stack([temporal, temporal * 2]), atol=1e-5)
    with pytest.raises(ValueError, match="no CLS token.*mean"):
        agg(feats, "cls")
    with pytest.raises(ValueError, match="mean, max, temporal, spatial, quadrants"):
        agg(feats, "median")


def test_quadrants_hand_made():
    # Tp=2, Hp=3, Wp=5, D=1: value = 100 t + 10 h + w. Odd sizes: the middle row (h=1) and the
    # middle column (w=2) belong to the first half, so top = h 0..1, left = w 0..2.
    t, h, w = torch.meshgrid(torch.arange(2), torch.arange(3), torch.arange(5), indexing="ij")
    feats = (100 * t + 10 * h + w).float().reshape(-1, 1)
    q = vx.aggregate_features(feats, "quadrants", (3, 5))
    assert q.shape == (4, 1)
    expected = [
        np.mean([100 * a + 10 * b + c for a in (0, 1) for b in rows for c in cols])
        for rows, cols in [((0, 1), (0, 1, 2)), ((0, 1), (3, 4)), ((2,), (0, 1, 2)), ((2,), (3, 4))]
    ]
    assert q[:, 0].tolist() == pytest.approx(expected)  # [61, 63.5, 71, 73.5]
    assert vx.aggregate_features(feats, "temporal", (3, 5))[:, 0].tolist() == pytest.approx([12, 112])
    with pytest.raises(ValueError, match="2×2"):
        vx.aggregate_features(torch.zeros(4, 3), "quadrants", (1, 4))
    with pytest.raises(ValueError, match="time steps"):
        vx.aggregate_features(torch.zeros(7, 3), "mean", (2, 2))


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    """7 images (mixed-case extensions, 16-bit TIFF, RGBA PNG, one in a subfolder) + a text file."""
    root = tmp_path_factory.mktemp("mixed")
    write_image(root / "a.JPG", 40, 56, seed=1)
    write_image(root / "b.png", 48, 48, seed=2)
    write_image(root / "c.TIF", 60, 40, seed=3)
    write_image(root / "d16.tif", 30, 50, kind="gray16", seed=4)
    write_image(root / "e_rgba.png", 36, 64, kind="rgba", seed=5)
    write_image(root / "f.jpeg", 80, 33, seed=6)
    write_image(root / "sub" / "g.Png", 44, 52, seed=7)
    (root / "notes.txt").write_text("not an image")
    return root


ALL_MIXED = {"a.JPG", "b.png", "c.TIF", "d16.tif", "e_rgba.png", "f.jpeg", "sub/g.Png"}


@pytest.fixture(scope="module")
def mixed_run(mixed_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "features"
    proc = run_cli("--image_dir", str(mixed_dir), "--output_dir", str(out), "--recursive", "--chunk_size", "3",
                   "--batch_size", "4", "--num_workers", "0")
    return proc, out


def test_cli_chunks_and_manifest(mixed_run, mixed_dir, ex16):
    proc, out = mixed_run
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.glob("*.pt"))
    assert names == [f"features_shard000of001_chunk{k:05d}.pt" for k in range(3)]  # 7 images / 3
    entries = read_chunks(out)
    assert set(entries) == ALL_MIXED
    order = sorted(ALL_MIXED)  # chunks are consecutive groups of the sorted list
    for k in range(3):
        assert [r for r in order if entries[r]["file"].endswith(f"{k:05d}.pt")] == order[3 * k:3 * k + 3]
    for rel, entry in entries.items():
        f, meta = entry["features"], entry["metadata"]
        assert f.dtype == torch.float16 and f.shape == (32, D)
        h, w = Image.open(mixed_dir / rel).size[::-1]
        assert meta["source"] == rel and meta["image_size"] == [h, w]
        assert meta["crop_box"] == eval_crop_box(h, w, 32)
        assert meta["image_frames"] == 16 and meta["grid"] == [8, 2, 2]
        assert meta["model_info"]["model_name"] == "random:tiny" and meta["model_info"]["patch_dim"] == D
        # The CLI's features are the API's features (same model, same preprocessing).
        assert (f.float() - ex16.extract_features(mixed_dir / rel)).abs().max() <= 1e-5
    records = features.Manifest.read(out / "manifest.jsonl")
    assert sorted(r["input"] for r in records) == sorted(ALL_MIXED)
    for r in records:
        assert r["status"] == "ok" and r["error"] is None and r["shard"] == "0/1"
        assert r["output"] == entries[r["input"]]["file"]
    assert "7 done, 0 skipped" in proc.stderr and "0 failed" in proc.stderr
    assert features.temp_files(out) == []


def test_cli_workers_and_batch_size_give_same_features(mixed_run, mixed_dir, tmp_path):
    _, out_a = mixed_run
    out = tmp_path / "b"
    # Not recursive (sub/g.Png left out), two decoding workers, one image per forward pass.
    proc = run_cli("--image_dir", str(mixed_dir), "--output_dir", str(out), "--chunk_size", "3",
                   "--batch_size", "1", "--num_workers", "2")
    assert proc.returncode == 0, proc.stderr
    a, b = read_chunks(out_a), read_chunks(out)
    assert set(b) == ALL_MIXED - {"sub/g.Png"}
    assert len(list(out.glob("*.pt"))) == 2
    for rel in b:
        assert (a[rel]["features"].float() - b[rel]["features"].float()).abs().max() <= 1e-5


def test_cli_refuses_chunks_of_another_shard_count_or_chunk_size(mixed_run, mixed_dir, tmp_path):
    """Resuming next to chunks this run would not write would store images twice."""
    import shutil

    _, done = mixed_run  # 1 shard, --chunk_size 3: 3 chunks
    out = tmp_path / "copy"
    shutil.copytree(done, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.pt")}
    base = ["--image_dir", str(mixed_dir), "--output_dir", str(out), "--recursive", "--num_workers", "0"]
    proc = run_cli(*base, "--chunk_size", "3", "--shard", "0/2")
    assert proc.returncode == 2
    assert (f"error: {out}: holds 3 chunk file(s) this run would not write (features_shard000of001_chunk00000.pt, …; "
            "this run: 2 shard(s), 2 chunk(s) for shard 0)") in proc.stderr
    proc = run_cli(*base, "--chunk_size", "5")  # 2 chunks now: chunk 2 would be left over
    assert proc.returncode == 2 and "holds 1 chunk file(s) this run would not write (features_shard000of001_chunk00002.pt;" in proc.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.pt")} == before
    proc = run_cli(*base, "--chunk_size", "3")  # the same settings resume: all skipped
    assert proc.returncode == 0 and "0 done, 7 skipped" in proc.stderr


def test_cli_image_frames_2(mixed_dir, tmp_path):
    proc = run_cli("--image_dir", str(mixed_dir), "--output_dir", str(tmp_path / "o"), "--image_frames", "2",
                   "--pattern", "*.PNG", "--num_workers", "0")
    assert proc.returncode == 0, proc.stderr
    entries = read_chunks(tmp_path / "o")
    assert set(entries) == {"b.png", "e_rgba.png"}  # --pattern is case-insensitive
    assert all(e["features"].shape == (4, D) and e["metadata"]["grid"] == [1, 2, 2] for e in entries.values())
    assert "the fast mode" in proc.stderr


def test_cli_bad_images_are_reported_and_skipped(tmp_path):
    src = tmp_path / "in"
    good = make_image_dir(src, 4)
    (src / "bad.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    (src / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    proc = run_cli("--image_dir", str(src), "--output_dir", str(out), "--chunk_size", "4", "--num_workers", "0")
    assert proc.returncode == 3, proc.stderr
    assert "bad.jpg: cannot read image" in proc.stderr and "empty.png: cannot read image (empty file)" in proc.stderr
    assert set(read_chunks(out)) == set(good)
    latest = features.latest_status(out / "manifest.jsonl")
    assert set(latest) == set(good) | {"bad.jpg", "empty.png"}
    for name in ("bad.jpg", "empty.png"):
        assert latest[name]["status"] == "failed" and latest[name]["error"] and latest[name]["output"] is None
    assert all(latest[n]["status"] == "ok" for n in good)
    assert "4 done, 0 skipped (already complete), 2 failed" in proc.stderr
    # A rerun skips the complete chunks and still reports the failures.
    again = run_cli("--image_dir", str(src), "--output_dir", str(out), "--chunk_size", "4", "--num_workers", "0")
    assert again.returncode == 3
    latest = features.latest_status(out / "manifest.jsonl")
    assert latest["bad.jpg"]["status"] == "failed" and latest["img00.png"]["status"] == "skipped"


def test_cli_resume_after_sigkill(tmp_path):
    src = tmp_path / "in"
    make_image_dir(src, 12, height=300, width=400)
    args = ["--image_dir", str(src), "--chunk_size", "2", "--batch_size", "1", "--num_workers", "0"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    first = killed / "features_shard000of001_chunk00000.pt"
    proc = subprocess.Popen([sys.executable, "vjepa2_extractor.py", *MODEL, *args, "--output_dir", str(killed)],
                            cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"
    assert first.exists()
    assert len(list(killed.glob("*.pt"))) < 6  # the kill interrupted the run
    resumed = run_cli(*args, "--output_dir", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert "skipped (already complete)" in resumed.stderr
    reference = run_cli(*args, "--output_dir", str(clean))
    assert reference.returncode == 0, reference.stderr
    names = sorted(p.name for p in clean.glob("*.pt"))
    assert len(names) == 6 and sorted(p.name for p in killed.glob("*.pt")) == names
    for name in names:
        a, b = features.load_chunk(killed / name), features.load_chunk(clean / name)
        assert list(a) == list(b)
        for key in a:
            assert (a[key]["features"].float() - b[key]["features"].float()).abs().max() <= 1e-5
            assert a[key]["metadata"] == b[key]["metadata"]
    assert features.temp_files(killed) == []
    latest = features.latest_status(killed / "manifest.jsonl")
    assert len(latest) == 12 and {r["status"] for r in latest.values()} <= {"ok", "skipped"}


def test_cli_no_matching_images(tmp_path):
    empty = tmp_path / "only_text"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    proc = run_cli("--image_dir", str(empty), "--output_dir", str(tmp_path / "o"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no images in") and str(empty) in lines[0]
    assert "*.jpg" in lines[0]
    missing = run_cli("--image_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_cli_unwritable_output_and_bad_flags(tmp_path):
    src = tmp_path / "in"
    make_image_dir(src, 1)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("--image_dir", str(src), "--output_dir", str(blocker / "out"))
    assert proc.returncode == 2 and "--output_dir" in proc.stderr
    proc = run_cli("--image_dir", str(src), "--output_dir", str(tmp_path / "o"), "--chunk_size", "0")
    assert proc.returncode == 2 and "--chunk_size" in proc.stderr
    proc = run_cli("--image_dir", str(src), "--output_dir", str(tmp_path / "o"), "--shard", "3/2")
    assert proc.returncode == 2 and "--shard" in proc.stderr
