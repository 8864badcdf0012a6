"""The embeddings table: rows equal the pooled token files, both stores at once, tables made from token
files, resume after kill -9, concurrent shards, refusals, and the table read by pyarrow, DuckDB and pandas."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from src.embeddings_table import Pooling, TableConfigError, TableWriter, build_rows, part_files, table_config
from src.features import load_chunk, load_features, temp_files
import vjepa2_embeddings
import vjepa2_extractor
import vjepa2_sequential_extractor
from src import cli
from tests.conftest import clean_env, make_image_dir, run_main
from vjepa2_sequential_extractor import SequentialVJEPA2Extractor

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO / "examples" / "frames"  # 32 frames → 8 windows of 4
TINY = ["--model", "random:tiny", "--img_size", "32", "--device", "cpu", "--num_workers", "0"]
# ~75 ms per 2-frame window on one thread (as tests/test_reliability.py): a kill lands mid-run
SLOW = ["--model", "random:vit_large,depth=4", "--img_size", "64", "--device", "cpu", "--num_workers", "0"]


def run_in_process(capsys, main, *args) -> subprocess.CompletedProcess:
    """A script's main as a user runs it (exit code, stdout, stderr), without a new interpreter."""
    capsys.readouterr()
    code = cli.run(main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def read_rows(table_dir) -> dict:
    """{row_id: row} of a table, failing on a row written twice."""
    rows = ds.dataset(str(table_dir), format="parquet").to_table().to_pylist()
    by_id = {r["row_id"]: r for r in rows}
    assert len(by_id) == len(rows), "a row is in the table twice"
    return by_id


def by_window(rows: dict) -> dict:
    return {r["window_idx"]: r for r in rows.values()}


def pooled(features: torch.Tensor, l2: bool = True) -> np.ndarray:
    v = features.float().mean(0)
    return (v / v.norm() if l2 else v).numpy()


@pytest.fixture(scope="module")
def both_run(tmp_path_factory):
    """Token files and table rows from one run (store both, mean + L2)."""
    out = tmp_path_factory.mktemp("both")
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=4, num_workers=0,
                                   store="both", table_dir=out / "embeddings", part_rows=3)
    summary = ex.process_frame_directory(FRAMES, out)
    ex.close()
    assert summary["ok"] == 8
    return out


def test_rows_equal_pooled_token_files_with_provenance(both_run):
    rows = by_window(read_rows(both_run / "embeddings"))
    assert sorted(rows) == list(range(8))
    assert len(part_files(both_run / "embeddings")) == 3  # 3 + 3 + 2 rows: written as they filled
    for i, row in rows.items():
        record = load_features(both_run / f"window_{i:05d}.pt")
        vector = np.asarray(row["vector"], np.float32)
        # the row is the mean of the stored fp16 tokens, L2-normalised (fp16 rounding is the only slack)
        np.testing.assert_allclose(vector, pooled(record["features"]), atol=1e-3)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)
        meta = record["metadata"]
        assert row["token_file"] == str((both_run / f"window_{i:05d}.pt").resolve())
        assert (row["start_frame"], row["end_frame"], row["frame_numbers"]) == (4 * i + 1, 4 * i + 4, meta["frame_numbers"])
        assert row["frame_files"] == meta["frame_files"] and row["source"] == str(FRAMES.resolve())
        assert row["grid"] == meta["grid"] == [2, 2, 2] and row["image_size"] == meta["image_size"]
        box = meta["crop_box"]
        assert row["box"] == [box["x0"], box["y0"], box["x1"], box["y1"]]
        assert (row["model"], row["pooling"], row["embed_dim"], row["clip_frames"]) == ("random:tiny", "mean+l2", 192, 4)
        assert row["feature_dtype"] == "float16" and row["compute_dtype"] == "float32" and row["random_weights"]
        assert row["extraction_time"].isoformat() == meta["extraction_timestamp"]
        info = record["model_info"]
        assert (row["generation"], row["output"], row["layers"]) == (info["generation"], info["output"], info["layers"])
        assert row["spatial"] == "center"  # the extractor's default spatial mode, from the metadata


def test_table_from_token_files_equals_table_written_while_extracting(both_run, tmp_path, capsys):
    proc = run_in_process(capsys, vjepa2_embeddings.main, "table", both_run, "--table_dir", tmp_path / "t")
    assert proc.returncode == 0, proc.stderr
    assert "8 windows/images added" in proc.stdout
    assert read_rows(tmp_path / "t") == read_rows(both_run / "embeddings")
    again = run_in_process(capsys, vjepa2_embeddings.main, "table", both_run, "--table_dir", tmp_path / "t")
    assert "0 windows/images added (0 rows), 8 already there" in again.stdout
    other = run_in_process(capsys, vjepa2_embeddings.main, "table", both_run, "--table_dir", tmp_path / "t", "--pool", "max")
    assert other.returncode == 2
    assert "table rows written by another run: pooling 'mean+l2' (now 'max+l2')" in other.stderr


def test_pooled_store_writes_rows_only_with_the_same_vectors(both_run, tmp_path):
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=4, num_workers=0,
                                   store="pooled", table_dir=tmp_path / "embeddings")
    ex.process_frame_directory(FRAMES, tmp_path)
    ex.close()
    assert not list(tmp_path.glob("window_*"))
    rows, reference = by_window(read_rows(tmp_path / "embeddings")), by_window(read_rows(both_run / "embeddings"))
    assert [rows[i]["vector"] for i in range(8)] == [reference[i]["vector"] for i in range(8)]
    assert all(r["token_file"] is None for r in rows.values())


@pytest.mark.parametrize("method", ["max", "temporal"])
def test_other_poolings(both_run, tmp_path, method, capsys):
    proc = run_in_process(capsys, vjepa2_embeddings.main, "table", both_run, "--table_dir", tmp_path, "--pool", method, "--no_l2")
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(tmp_path)
    record = load_features(both_run / "window_00002.pt")
    tokens = record["features"].float()  # [Tp·Hp·Wp, D] = [2·2·2, 192]
    if method == "max":
        np.testing.assert_array_equal(rows[f"{FRAMES.resolve()}#window2"]["vector"], tokens.max(0).values.numpy())
        return
    assert len(rows) == 16  # one row per temporal token
    for t in range(2):
        row = rows[f"{FRAMES.resolve()}#window2#t{t}"]
        np.testing.assert_allclose(row["vector"], tokens.reshape(2, 4, -1)[t].mean(0).numpy(), rtol=1e-6)
        assert row["token_t"] == t and row["frame_numbers"] == record["metadata"]["temporal_mapping"][t]
        assert row["frame_files"] == record["metadata"]["frame_files"][2 * t:2 * t + 2]


def test_images_both_stores_rows_equal_chunk_entries(tmp_path, capsys):
    images = tmp_path / "images"
    make_image_dir(images, 5)
    out = tmp_path / "out"
    proc = run_in_process(capsys, vjepa2_extractor.main, *TINY, "--image_dir", images, "--output_dir", out, "--image_frames", 2,
               "--chunk_size", 2, "--store", "both")
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out / "embeddings")
    assert len(rows) == 5
    for chunk_file in sorted(out.glob("features_shard*.pt")):
        for rel, entry in load_chunk(chunk_file).items():
            row = rows[str((images / rel).resolve())]
            np.testing.assert_allclose(row["vector"], pooled(entry["features"]), atol=1e-3)
            assert row["source_type"] == "image" and row["token_file"] == str(chunk_file.resolve())
            assert row["image_size"] == [40, 56] and row["clip_frames"] == 2 and row["grid"] == [1, 2, 2]
    # rows lost (the table removed): a rerun pools them from the finished chunk files, which stay untouched
    import shutil

    chunk_times = {p: p.stat().st_mtime_ns for p in out.glob("features_shard*.pt")}
    shutil.rmtree(out / "embeddings")
    again = run_in_process(capsys, vjepa2_extractor.main, *TINY, "--image_dir", images, "--output_dir", out,
                           "--image_frames", 2, "--chunk_size", 2, "--store", "both")
    assert again.returncode == 0, again.stderr
    def without_time(table):  # rows pooled from a chunk file carry the file's time
        return {k: {c: v for c, v in r.items() if c != "extraction_time"} for k, r in table.items()}

    assert without_time(read_rows(out / "embeddings")) == without_time(rows)
    assert {p: p.stat().st_mtime_ns for p in out.glob("features_shard*.pt")} == chunk_times
    pooled_only = run_in_process(capsys, vjepa2_extractor.main, *TINY, "--image_dir", images, "--output_dir", tmp_path / "p",
                      "--image_frames", 2, "--store", "pooled")
    assert pooled_only.returncode == 0, pooled_only.stderr
    assert not list((tmp_path / "p").glob("features_shard*"))
    assert {k: r["vector"] for k, r in read_rows(tmp_path / "p" / "embeddings").items()} == \
        {k: r["vector"] for k, r in rows.items()}
    rerun = run_in_process(capsys, vjepa2_extractor.main, *TINY, "--image_dir", images, "--output_dir", tmp_path / "p",
                "--image_frames", 16, "--store", "pooled")
    assert rerun.returncode == 2 and "clip_frames 2 (now 16)" in rerun.stderr


def test_table_read_by_pyarrow_duckdb_and_pandas(both_run):
    import duckdb
    import pandas
    import pyarrow as pa

    table = both_run / "embeddings"
    schema = ds.dataset(str(table), format="parquet").schema
    vector_type = schema.field("vector").type
    assert pa.types.is_fixed_size_list(vector_type) and vector_type.list_size == 192
    assert vector_type.value_type == pa.float32()
    assert str(schema.field("extraction_time").type) == "timestamp[us, tz=UTC]"
    assert table_config(table)["pooling"] == "mean+l2"
    con = duckdb.connect()
    count, distinct, width = con.execute(
        f"SELECT count(*), count(DISTINCT row_id), max(len(vector)) FROM '{table}/*.parquet'").fetchone()
    assert (count, distinct, width) == (8, 8, 192)
    first = con.execute(f"SELECT start_frame, grid FROM '{table}/*.parquet' WHERE window_idx = 1").fetchone()
    assert first == (5, [2, 2, 2])
    frame = pandas.read_parquet(table)
    assert len(frame) == 8 and frame.set_index("window_idx").loc[3, "end_frame"] == 16


def test_refusals_of_another_model_or_pooling(both_run, tmp_path, capsys):
    table = both_run / "embeddings"
    for args, expected in [(("--pool", "max"), "pooling 'mean+l2' (now 'max+l2')"),
                           (("--model", "random:tiny,depth=1"), "model 'random:tiny' (now 'random:tiny,depth=1')")]:
        model = ["--model", "random:tiny"] if args[0] != "--model" else []
        proc = run_in_process(capsys, vjepa2_sequential_extractor.main, *model, "--img_size", 32, "--device", "cpu", "--window", 4,
                   "--frame_dir", FRAMES, "--output_dir", tmp_path / args[0][2:], "--store", "pooled",
                   "--table_dir", table, *args)
        assert proc.returncode == 2, proc.stderr
        assert expected in proc.stderr and "use another table folder or pass --overwrite" in proc.stderr
    assert len(read_rows(table)) == 8  # nothing added


def test_writer_refuses_rows_of_another_width(tmp_path):
    meta = {"grid": [1, 1, 1], "source": "a", "model": "m"}
    with TableWriter(tmp_path) as writer:
        writer.add(build_rows(torch.ones(1, 4), {}, meta, Pooling()))
        with pytest.raises(TableConfigError, match="dim 8 .now 4."):
            writer.add(build_rows(torch.ones(1, 8), {}, {**meta, "source": "b"}, Pooling()))
    assert len(read_rows(tmp_path)) == 1


# --------------------------------------------------------------------------- kill -9, concurrency


@pytest.fixture(scope="module")
def slow_frames(tmp_path_factory):
    from PIL import Image

    out = tmp_path_factory.mktemp("slow_frames")
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(out / f"frame_{i:04d}.png")
    return out


@pytest.fixture(scope="module")
def slow_reference(slow_frames, tmp_path_factory):
    """The rows of an uninterrupted run (here, on one thread as the killed children: the same vectors)."""
    out = tmp_path_factory.mktemp("slow_reference")
    proc = run_main(*_slow_run(slow_frames, out, "pooled"), threads=1)
    assert proc.returncode == 0, proc.stderr
    return read_rows(out / "embeddings")


def _slow_run(frames, out, store, *extra):
    return ["vjepa2_sequential_extractor.py", *SLOW, "--frame_dir", frames, "--window", 2, "--output_dir", out,
            "--store", store, "--part_rows", 2, *extra]


@pytest.mark.parametrize("store", ["pooled", "both"])
def test_kill_9_then_rerun_gives_every_row_once(slow_frames, slow_reference, tmp_path, store):
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *map(str, _slow_run(slow_frames, out, store))], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=clean_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"))
    # pooled: killed once 3 parts (6 rows) are on disk; both: once 7 token files are, when the 7th row
    # is still buffered (lost with the process; the rerun pools it from its token file)
    def done() -> bool:
        return (len(part_files(out / "embeddings")) >= 3 if store == "pooled"
                else len(list(out.glob("window_*.pt"))) >= 7)

    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and not done() and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill"
    at_kill, tokens_at_kill = len(read_rows(out / "embeddings")), len(list(out.glob("window_*.pt")))
    assert 6 <= at_kill < 12
    rerun = run_main(*_slow_run(slow_frames, out, store), threads=1)
    assert rerun.returncode == 0, rerun.stderr
    rows, expected = read_rows(out / "embeddings"), slow_reference
    assert sorted(rows) == sorted(expected)  # no row missing, none twice (read_rows checks)
    for row_id, row in rows.items():
        assert row["vector"] == expected[row_id]["vector"]
    assert temp_files(out) == []
    if store == "both":
        assert len(list(out.glob("window_*.pt"))) == 12
        assert tokens_at_kill > at_kill, "no token file was waiting for its row at the kill"
        pooled_lines = (out / "manifest.jsonl").read_text().count("table row pooled from the token file")
        assert pooled_lines == tokens_at_kill - at_kill


def test_concurrent_shards_read_as_one_dataset(tmp_path):
    proc = subprocess.run(["bash", "run_parallel_extraction.sh", str(FRAMES), str(tmp_path), "2", "--sequential",
                           *TINY, "--window", "2", "--store", "both", "--part_rows", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=clean_env(PYTHON=sys.executable, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = sorted(p.name for p in part_files(tmp_path / "embeddings"))
    assert {n[:len("part-shard000of002")] for n in names} == {"part-shard000of002", "part-shard001of002"}
    rows = by_window(read_rows(tmp_path / "embeddings"))
    assert sorted(rows) == list(range(16))  # every window exactly once, from two processes
    for i, row in rows.items():
        np.testing.assert_allclose(row["vector"], pooled(load_features(tmp_path / f"window_{i:05d}.pt")["features"]),
                                   atol=1e-3)


def test_pipeline_store_both_packages_the_table(tmp_path, capsys):
    import zipfile

    import vjepa2_pipeline

    out = tmp_path / "pipe"
    proc = run_in_process(capsys, vjepa2_pipeline.main, "--frame_dir", FRAMES, "--output_dir", out, *TINY,
                          "--window", 8, "--pca_visualization", "--store", "both")
    assert proc.returncode == 0, proc.stderr
    rows = by_window(read_rows(out / "embeddings"))
    assert sorted(rows) == [0, 1, 2, 3]
    np.testing.assert_allclose(rows[1]["vector"], pooled(load_features(out / "features" / "window_00001.pt")["features"]),
                               atol=1e-3)
    with zipfile.ZipFile(out / "pipe_package.zip") as package:
        assert [n for n in package.namelist() if n.startswith("embeddings/")] == \
            [f"embeddings/{p.name}" for p in part_files(out / "embeddings")]
    with pytest.raises(SystemExit):  # pictures need the tokens: no table-only pipeline
        vjepa2_pipeline.get_args_parser().parse_args(["--frame_dir", "x", "--output_dir", "y", "--store", "pooled"])
