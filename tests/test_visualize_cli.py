"""visualize_embeddings.py as a user runs it: help examples, image chunks and --image_root, a bad
--output_dir, and inputs whose pictures land on the same files."""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from src import cli
from tests.conftest import run_main

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "visualize_embeddings.py"
FRAMES = REPO / "examples" / "frames"
TINY = ["--model", "random:tiny", "--img_size", "32", "--device", "cpu"]
CHUNK_NAME = "features_shard000of001_chunk00000.pt"


def run(*args, cwd=REPO):
    """`python visualize_embeddings.py args` run from `cwd`, in this interpreter (tests.conftest.run_main)."""
    return run_main(SCRIPT.name, *args, cwd=cwd)


def extract(script, *args):
    proc = run_main(script, *args, *TINY)
    assert proc.returncode == 0, proc.stderr


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """2 window files (4 frames each → 2 temporal tokens) over examples/frames."""
    out = tmp_path_factory.mktemp("windows")
    extract("vjepa2_sequential_extractor.py", "--frame_dir", FRAMES, "--output_dir", out, "--window", "4",
            "--last_frame", "8")
    files = sorted(out.glob("window_*.pt"))
    assert len(files) == 2
    return out


@pytest.fixture(scope="module")
def chunk(tmp_path_factory):
    """(chunk file, its --image_dir): 4 images, 1 temporal token each."""
    base = tmp_path_factory.mktemp("chunk")
    images = base / "images"
    images.mkdir()
    for name in sorted(p.name for p in FRAMES.glob("*.jpg"))[:4]:
        shutil.copy(FRAMES / name, images / name)
    extract("vjepa2_extractor.py", "--image_dir", images, "--output_dir", base / "features", "--image_frames", "2")
    path = base / "features" / CHUNK_NAME
    assert path.is_file()
    return path, images


def help_examples() -> list[list[str]]:
    """The example command lines of --help (backslash continuations joined), split like a shell would."""
    text = run("--help").stdout
    text = text.replace("\\\n", " ")
    return [shlex.split(line)[2:] for line in text.splitlines()
            if line.strip().startswith("python visualize_embeddings.py")]


def test_every_help_example_runs_as_written(windows, chunk, tmp_path):
    """Only the paths are replaced (by real files of the same kind); the options stay as printed."""
    chunk_file, images = chunk
    examples = help_examples()
    assert len(examples) >= 2 and any("--image_root" in ex for ex in examples)
    for n, example in enumerate(examples):
        args, out = [], None
        i = 0
        while i < len(example):
            arg = example[i]
            if arg in ("--output_dir", "--image_root"):
                value = tmp_path / f"out{n}" if arg == "--output_dir" else images
                out = value if arg == "--output_dir" else out
                args += [arg, value]
                i += 2
                continue
            if re.fullmatch(r".*window_\*\.pt", arg):
                args += sorted(windows.glob("window_*.pt"))
            elif arg.endswith(CHUNK_NAME):
                args.append(chunk_file)
            else:
                args.append(arg)
            i += 1
        proc = run(*args)
        assert proc.returncode == 0, (example, proc.stderr)
        assert out is not None and pngs(out), example


def test_chunk_without_image_root_is_one_hint_before_the_fit(chunk, tmp_path):
    chunk_file, images = chunk
    proc = run(chunk_file, "--output_dir", tmp_path / "a", "--method", "pca")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no error per image, and nothing fitted or drawn
    assert lines[0].startswith(f"error: {chunk_file}: ")
    assert "pass --image_root <the folder given to vjepa2_extractor.py --image_dir>" in lines[0]
    assert not pngs(tmp_path / "a")
    # a wrong --image_root: the same one line, naming where it looked
    proc = run(chunk_file, "--output_dir", tmp_path / "b", "--method", "pca", "--image_root", REPO / "docs")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"not found under --image_root {REPO / 'docs'}" in proc.stderr and "--image_root <the folder" in proc.stderr
    proc = run(chunk_file, "--output_dir", tmp_path / "c", "--image_root", tmp_path / "nowhere")
    assert proc.returncode == 2 and "--image_root" in proc.stderr and "no such folder" in proc.stderr
    # projections only need no images
    proc = run(chunk_file, "--output_dir", tmp_path / "d", "--method", "pca", "--no_overlay")
    assert proc.returncode == 0, proc.stderr
    assert len(pngs(tmp_path / "d" / "pca_projection")) == 4


def test_chunk_with_image_root_or_from_the_image_folder(chunk, tmp_path):
    chunk_file, images = chunk
    proc = run(chunk_file, "--output_dir", tmp_path / "a", "--method", "pca", "--image_root", images)
    assert proc.returncode == 0, proc.stderr
    assert len(pngs(tmp_path / "a" / "pca_overlay")) == 4
    assert f"wrote 8 PNGs to {tmp_path / 'a'}" in proc.stdout
    proc = run(chunk_file, "--output_dir", tmp_path / "b", "--method", "pca", cwd=images)  # relative keys resolve
    assert proc.returncode == 0, proc.stderr
    assert len(pngs(tmp_path / "b" / "pca_overlay")) == 4


def test_some_chunk_images_missing_is_partial(chunk, tmp_path):
    """A deleted image is a missing input (exit 3, one error for it), not a missing option."""
    chunk_file, images = chunk
    some = tmp_path / "some"
    shutil.copytree(images, some)
    missing = sorted(some.iterdir())[1]
    missing.unlink()
    proc = run(chunk_file, "--output_dir", tmp_path / "a", "--method", "pca", "--image_root", some)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("no overlay") == 1 and missing.name in proc.stderr
    assert len(pngs(tmp_path / "a" / "pca_overlay")) == 3 and len(pngs(tmp_path / "a" / "pca_projection")) == 4
    proc = run(chunk_file, "--output_dir", tmp_path / "b", "--method", "pca", cwd=some)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("no overlay") == 1 and proc.stderr.count("pass --image_root") == 1


def test_output_dir_that_is_a_file_fails_before_loading(windows, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(cli.UsageError) as expected:
        cli.check_output_dir(blocker)
    proc = run(windows, "--output_dir", blocker, "--method", "umap")
    assert proc.returncode == 2
    assert proc.stderr == f"error: {expected.value}\n"  # the other scripts' message; nothing fitted
    assert blocker.read_text() == "not a folder"


def test_inputs_writing_the_same_files_are_counted_once_and_named(windows, chunk, tmp_path):
    chunk_file, images = chunk
    other = tmp_path / "other" / CHUNK_NAME
    other.parent.mkdir()
    shutil.copy(chunk_file, other)
    out = tmp_path / "a"
    proc = run(chunk_file, other, "--output_dir", out, "--method", "pca", "--image_root", images)
    assert proc.returncode == 0, proc.stderr
    written = len(pngs(out))
    assert written == 8
    assert f"wrote {written} PNGs to {out}" in proc.stdout
    clash = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(clash) == 1, proc.stderr  # once, not per image
    assert str(chunk_file) in clash[0] and str(other) in clash[0] and "same" in clash[0]
    # window files of two runs (a copied folder), and a file also given through its folder
    copy = tmp_path / "copy"
    shutil.copytree(windows, copy)
    out = tmp_path / "b"
    proc = run(windows, copy, windows / "window_00000.pt", "--output_dir", out, "--method", "pca")
    assert proc.returncode == 0, proc.stderr
    written = len(pngs(out))
    assert written == 2 * 2 * 2  # 2 windows × 2 tokens × (projection + overlay)
    assert f"wrote {written} PNGs to {out}" in proc.stdout
    assert f"{windows / 'window_00000.pt'}: given more than once" in proc.stderr
    for name in ("window_00000.pt", "window_00001.pt"):
        assert f"{windows / name} and {copy / name}" in proc.stderr
    # distinct names: no warning
    proc = run(windows, "--output_dir", tmp_path / "c", "--method", "pca")
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr
