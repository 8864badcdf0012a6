"""Tests for src.features: feature files, atomic writes, temp files and the manifest."""

import json
import multiprocessing
import os
import sys
import time

import pytest
import torch

from src import features


def _record(n=4, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    feats = torch.randn(n, d, generator=gen).to(torch.float16)
    return {
        "features": feats,
        "shape": [n, d],
        "dtype": "float16",
        "model_info": {"name": "vjepa2-vitl", "patch_size": 16, "layers": [-1], "fp16": True},
        "metadata": {
            "source": "videos/a.mp4",
            "frames": [0, 2, 4],
            "timestamps": [0.0, 0.08, 0.16],
            "nested": {"grid": [16, 16], "note": "Ünïcode ok", "none": None},
        },
    }


def _assert_same(loaded, original):
    assert list(loaded) == list(original)
    assert loaded["features"].dtype == torch.float16
    assert torch.equal(loaded["features"], original["features"])
    for key in original:
        if isinstance(original[key], torch.Tensor):
            assert torch.equal(loaded[key], original[key])
        else:
            assert loaded[key] == original[key]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_roundtrip(tmp_path, suffix):
    record = _record()
    path = features.save_features(record, tmp_path / f"w{suffix}")
    assert path == tmp_path / f"w{suffix}"
    loaded = features.load_features(path)
    _assert_same(loaded, record)
    assert isinstance(loaded["shape"], list)
    assert features.is_complete(path)
    assert features.temp_files(tmp_path) == []


def test_explicit_format_overrides_suffix(tmp_path):
    path = features.save_features(_record(), tmp_path / "w.pt", fmt="safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["format"] == "vjepa2-features"
    with pytest.raises(ValueError, match="unknown feature format"):
        features.save_features(_record(), tmp_path / "w.pt", fmt="npz")


def test_safetensors_extra_tensors(tmp_path):
    record = _record()
    record["cls"] = torch.arange(3, dtype=torch.float32)
    loaded = features.load_features(features.save_features(record, tmp_path / "w.safetensors"))
    assert torch.equal(loaded["cls"], record["cls"])
    _assert_same(loaded, record)


def test_view_is_saved_without_its_base(tmp_path):
    big = torch.zeros(1000, 64, dtype=torch.float16)
    record = _record()
    record["features"] = big[:2]
    record["shape"] = [2, 64]
    path = features.save_features(record, tmp_path / "w.pt")
    assert path.stat().st_size < 1000 * 64 * 2 / 4


def test_invalid_records(tmp_path):
    record = _record()
    record["shape"] = [5, 8]
    with pytest.raises(ValueError, match="shape"):
        features.save_features(record, tmp_path / "w.pt")
    record = _record()
    record["metadata"]["bad"] = object()
    with pytest.raises(ValueError, match="JSON"):
        features.save_features(record, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="'features' tensor"):
        features.save_features({"features": [1, 2]}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="suffix"):
        features.save_features(_record(), tmp_path / "w.npy")
    assert list(tmp_path.iterdir()) == []


def test_creates_parent_folders(tmp_path):
    path = features.save_features(_record(), tmp_path / "a" / "b" / "w.pt")
    assert features.is_complete(path)


# --------------------------------------------------------------------------- corrupt files


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_truncated_file(tmp_path, suffix):
    path = features.save_features(_record(64, 32), tmp_path / f"w{suffix}")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not features.is_complete(path)
    with pytest.raises(ValueError, match="not a valid feature file") as info:
        features.load_features(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_empty_and_garbage_files(tmp_path, suffix):
    for content in (b"", b"garbage" * 10):
        path = tmp_path / f"w{suffix}"
        path.write_bytes(content)
        assert not features.is_complete(path)
        with pytest.raises(ValueError, match=str(path)):
            features.load_features(path)


def test_shape_mismatch_and_missing_is_not_complete(tmp_path):
    record = _record()
    torch.save({**record, "shape": [9, 9]}, tmp_path / "bad.pt")
    assert not features.is_complete(tmp_path / "bad.pt")
    torch.save({"shape": [1]}, tmp_path / "nofeat.pt")
    assert not features.is_complete(tmp_path / "nofeat.pt")
    with pytest.raises(ValueError, match="no 'features' tensor"):
        features.load_features(tmp_path / "nofeat.pt")
    assert not features.is_complete(tmp_path / "missing.pt")
    assert not features.is_complete(tmp_path / "file.unknown")
    assert not features.is_complete(tmp_path)  # a folder
    with pytest.raises(FileNotFoundError):
        features.load_features(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="suffix"):
        features.load_features(tmp_path / "x.h5")


# --------------------------------------------------------------------------- failed writes


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_failed_save_leaves_nothing(tmp_path, monkeypatch, suffix):
    def exploding_save(obj, handle, *args):
        handle.write(b"partial data")
        raise RuntimeError("disk on fire")

    def exploding_safetensors(tensors, metadata=None):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(torch, "save", exploding_save)
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save", exploding_safetensors)
    dest = tmp_path / f"w{suffix}"
    with pytest.raises(OSError, match="disk on fire") as info:
        features.save_features(_record(), dest)
    assert str(dest) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    dest = features.save_features(_record(seed=1), tmp_path / "w.pt")
    monkeypatch.setattr(torch, "save", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(OSError, match="boom"):
        features.save_features(_record(seed=2), dest)
    monkeypatch.undo()
    assert torch.equal(features.load_features(dest)["features"], _record(seed=1)["features"])
    assert features.temp_files(tmp_path) == []


def test_interrupt_during_save_removes_temp(tmp_path, monkeypatch):
    def interrupted(obj, handle, *args):
        handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        features.save_features(_record(), tmp_path / "w.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="root ignores directory permissions"
)
def test_read_only_destination(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OSError, match=str(folder / "w.pt")):
            features.save_features(_record(), folder / "w.pt")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o700)


# --------------------------------------------------------------------------- chunks


def _chunk():
    return {
        f"sub/img_{i}.png": {
            "features": torch.full((3, 4), float(i), dtype=torch.float16),
            "metadata": {"height": 480, "width": 640, "index": i},
        }
        for i in range(3)
    }


def test_chunk_roundtrip(tmp_path):
    chunk = _chunk()
    path = features.save_chunk(chunk, tmp_path / "chunk_00000.pt")
    loaded = features.load_chunk(path)
    assert list(loaded) == list(chunk)
    for key, entry in chunk.items():
        assert torch.equal(loaded[key]["features"], entry["features"])
        assert loaded[key]["features"].dtype == torch.float16
        assert loaded[key]["metadata"] == entry["metadata"]
    assert features.is_complete(path)
    assert features.temp_files(tmp_path) == []


def test_chunk_invalid_and_truncated(tmp_path):
    with pytest.raises(ValueError, match="no 'features' tensor"):
        features.save_chunk({"a.png": {"metadata": {}}}, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="JSON"):
        features.save_chunk(
            {"a.png": {"features": torch.zeros(1), "metadata": {"x": object()}}}, tmp_path / "c.pt"
        )
    path = features.save_chunk(_chunk(), tmp_path / "c.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not features.is_complete(path)
    with pytest.raises(ValueError, match="not a valid feature file"):
        features.load_chunk(path)
    torch.save({"a.png": {"metadata": {}}}, tmp_path / "bad.pt")
    assert not features.is_complete(tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="no 'features' tensor"):
        features.load_chunk(tmp_path / "bad.pt")


# --------------------------------------------------------------------------- temp files


def test_temp_files_and_stale_removal(tmp_path):
    (tmp_path / "sub").mkdir()
    old = tmp_path / "sub" / ".w.pt.123.abcd.tmp"
    new = tmp_path / ".x.pt.456.ef01.tmp"
    for path in (old, new, tmp_path / "keep.tmp", tmp_path / ".hidden", tmp_path / "w.pt"):
        path.write_bytes(b"x")
    past = time.time() - 3600
    os.utime(old, (past, past))
    assert features.temp_files(tmp_path) == sorted([old, new])
    assert features.temp_files(tmp_path / "missing") == []
    assert features.remove_stale_temp_files(tmp_path, older_than_s=600) == [old]
    assert features.temp_files(tmp_path) == [new]
    assert features.remove_stale_temp_files(tmp_path) == [new]
    assert features.temp_files(tmp_path) == []
    assert (tmp_path / "keep.tmp").exists() and (tmp_path / "w.pt").exists()


def test_temp_name_scheme(tmp_path, monkeypatch):
    seen = []
    real_save = torch.save

    def spying_save(obj, handle, *args):
        seen.append(os.path.basename(handle.name))
        real_save(obj, handle)

    monkeypatch.setattr(torch, "save", spying_save)
    features.save_features(_record(), tmp_path / "w.pt")
    (name,) = seen
    prefix = f".w.pt.{os.getpid()}."
    assert name.startswith(prefix) and name.endswith(".tmp") and len(name) > len(prefix) + 4


# --------------------------------------------------------------------------- manifest


def test_manifest_record_and_read(tmp_path):
    path = tmp_path / "logs" / "manifest.jsonl"
    with features.Manifest(path) as manifest:
        entry = manifest.record("a.mp4", tmp_path / "a.pt", "ok", extra={"windows": 3})
        manifest.record("b.mp4", None, "failed", error="cannot read video")
        manifest.record("a.mp4", "a.pt", "skipped")
    assert entry["time"].endswith("Z") and "T" in entry["time"]
    records = features.Manifest.read(path)
    assert [r["status"] for r in records] == ["ok", "failed", "skipped"]
    assert records[0] == entry and records[0]["windows"] == 3
    assert records[0]["output"] == str(tmp_path / "a.pt")
    assert records[1]["error"] == "cannot read video" and records[1]["output"] is None
    latest = features.latest_status(path)
    assert latest["a.mp4"]["status"] == "skipped" and latest["b.mp4"]["status"] == "failed"
    assert features.Manifest.latest_status(path) == latest
    assert features.Manifest.read(tmp_path / "missing.jsonl") == []


def test_manifest_rejects_bad_status_and_clashing_extra(tmp_path):
    manifest = features.Manifest(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="status"):
        manifest.record("a", "b", "done")
    with pytest.raises(ValueError, match="clashes"):
        manifest.record("a", "b", "ok", extra={"status": "x"})
    manifest.close()


def test_manifest_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    manifest = features.Manifest(path)
    manifest.record("a", "a.pt", "ok")
    manifest.close()
    with open(path, "ab") as handle:
        handle.write(b'{"input": "b", "outp')  # killed mid-write
    assert [r["input"] for r in features.Manifest.read(path)] == ["a"]
    # A later append starts on a fresh line, so only the torn line is lost.
    with features.Manifest(path) as manifest:
        manifest.record("c", "c.pt", "ok")
    assert [r["input"] for r in features.Manifest.read(path)] == ["a", "c"]
    assert set(features.latest_status(path)) == {"a", "c"}


def _append_many(path, tag, count):
    manifest = features.Manifest(path)
    for i in range(count):
        manifest.record(f"{tag}/{i}", f"{tag}/{i}.pt", "ok", extra={"pad": "x" * 500})
    manifest.close()


def _run_appenders(path, target, tags, count) -> list[bytes]:
    """One process per tag running `target(path, tag, count)` at once; the file's lines after."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    procs = [multiprocessing.get_context(method).Process(target=target, args=(path, tag, count)) for tag in tags]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    return path.read_bytes().split(b"\n")


def _append_reopening(path, tag, count):
    for i in range(count):  # a fresh Manifest per record: its torn-line check runs every time
        manifest = features.Manifest(path)
        manifest.record(f"{tag}/{i}", None, "ok", extra={"pad": "x" * 5000})  # lines spanning pages
        manifest.close()


def test_manifest_opened_while_others_append_adds_no_empty_lines(tmp_path):
    """Opening checks the last line for a crash's torn write; a record another process is writing
    across a page boundary used to look torn, so a stray newline (an empty line) got appended."""
    lines = _run_appenders(tmp_path / "m.jsonl", _append_reopening, "abcd", 100)
    assert lines[-1] == b"" and all(lines[:-1])  # no empty line anywhere
    assert sorted(json.loads(line)["input"] for line in lines[:-1]) == sorted(f"{t}/{i}" for t in "abcd" for i in range(100))


def test_manifest_two_processes_append(tmp_path):
    lines = _run_appenders(tmp_path / "m.jsonl", _append_many, "pq", 200)
    assert lines[-1] == b""
    parsed = [json.loads(line) for line in lines[:-1]]
    assert len(parsed) == 400
    assert {r["input"] for r in parsed} == {f"{t}/{i}" for t in "pq" for i in range(200)}
