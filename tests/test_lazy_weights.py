"""Window runs read the encoder's architecture first and its weights only when a window needs them:
a rerun of a finished run reads none, and weights read later are the ones read at once."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.inference import ClipEncoder
from tests.conftest import run_main
from tests.helpers import hf_model_from, small_encoder, write_original_checkpoint
from vjepa2_sequential_extractor import SequentialVJEPA2Extractor


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """One spec of each loading path that reads or draws weights: random, original .pt, transformers folder."""
    root = tmp_path_factory.mktemp("models")
    encoder = small_encoder(img_size=32, num_frames=16)
    hf_model_from(encoder).save_pretrained(root / "hf")
    return {"random": "random:tiny", "checkpoint": str(write_original_checkpoint(root / "enc.pt", encoder)),
            "hf_dir": str(root / "hf")}


@pytest.mark.parametrize("kind", ["random", "checkpoint", "hf_dir"])
def test_architecture_first_then_the_same_weights_as_at_once(specs, kind):
    at_once = ClipEncoder(specs[kind], device="cpu", img_size=32)
    later = ClipEncoder(specs[kind], device="cpu", img_size=32, load_weights=False)
    assert not later.weights_loaded
    assert all(p.is_meta for p in later.architecture.parameters())  # nothing read or drawn yet
    assert not later.weights_loaded
    assert later.describe(16) == at_once.describe(16)
    assert later.grid(16) == at_once.grid(16) and later.embed_dim == at_once.embed_dim

    clip = torch.randint(0, 256, (1, 3, 16, 32, 32), dtype=torch.uint8)
    features = later.encode(clip)  # loads the weights first
    assert later.weights_loaded
    expected, loaded = at_once.model.state_dict(), later.model.state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(expected[k], loaded[k]) for k in expected)
    assert torch.equal(features, at_once.encode(clip))


def test_a_finished_rerun_reads_no_weights(specs, bikes_every_2nd_frame, tmp_path):
    first = SequentialVJEPA2Extractor(specs["checkpoint"], device="cpu", img_size=32, num_workers=0)
    assert first.process_frame_directory(bikes_every_2nd_frame, tmp_path, last_frame=40)["ok"] == 3
    assert first.encoder.weights_loaded

    rerun = SequentialVJEPA2Extractor(specs["checkpoint"], device="cpu", img_size=32, num_workers=0)
    summary = rerun.process_frame_directory(bikes_every_2nd_frame, tmp_path, last_frame=40)
    assert (summary["ok"], summary["skipped"]) == (0, 3)
    assert not rerun.encoder.weights_loaded  # planned, checked and described from the architecture alone

    (tmp_path / "window_00001.pt").unlink()  # one window to redo: now the weights are read
    again = rerun.process_frame_directory(bikes_every_2nd_frame, tmp_path, last_frame=40)
    assert (again["ok"], again["skipped"]) == (1, 2) and rerun.encoder.weights_loaded


def test_weights_that_cannot_be_read_stop_the_run_before_any_window(specs, bikes_every_2nd_frame, tmp_path):
    # config.json intact (the architecture reads), model.safetensors cut in half (the weights do not)
    broken = tmp_path / "hf"
    broken.mkdir()
    for f in Path(specs["hf_dir"]).iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    out = tmp_path / "out"
    proc = run_main("vjepa2_sequential_extractor.py", "--frame_dir", str(bikes_every_2nd_frame),
                    "--output_dir", str(out), "--model", str(broken), "--img_size", "32",
                    "--device", "cpu", "--num_workers", "0", "--last_frame", "40")
    assert proc.returncode == 2, proc.stderr  # the model-load error, as when it was read at once
    assert "error: " in proc.stderr and "model.safetensors: cannot read weights" in proc.stderr, proc.stderr
    assert not list(out.glob("window_*"))


def test_a_hub_model_fetches_its_config_first_and_its_weights_only_to_encode(specs, bikes_every_2nd_frame,
                                                                             tmp_path, monkeypatch):
    # the hub itself cannot be reached here: huggingface_hub's snapshot_download is served from a local folder
    import huggingface_hub

    asked = []

    def snapshot_download(repo_id, allow_patterns=None, **_):
        asked.append((repo_id, tuple(allow_patterns)))
        return specs["hf_dir"]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    run = SequentialVJEPA2Extractor("someone/vjepa2-small", device="cpu", img_size=32, num_workers=0)
    assert run.process_frame_directory(bikes_every_2nd_frame, tmp_path, last_frame=40)["ok"] == 3
    assert asked == [("someone/vjepa2-small", ("*.json",)), ("someone/vjepa2-small", ("*.json", "*.safetensors"))]

    asked.clear()
    rerun = SequentialVJEPA2Extractor("someone/vjepa2-small", device="cpu", img_size=32, num_workers=0)
    assert rerun.process_frame_directory(bikes_every_2nd_frame, tmp_path, last_frame=40)["skipped"] == 3
    assert asked == [("someone/vjepa2-small", ("*.json",))]  # a finished run downloads no weights


def test_an_old_format_checkpoint_gives_its_architecture_too(tmp_path):
    # torch cannot memory-map the pre-zip format: the file is then read whole, and still describes the model
    encoder = small_encoder(img_size=32, num_frames=16, depth=3)
    path = tmp_path / "old.pt"
    torch.save({"encoder": {f"module.backbone.{k}": v for k, v in encoder.state_dict().items()}}, path,
               _use_new_zipfile_serialization=False)
    lazy = ClipEncoder(str(path), device="cpu", img_size=32, load_weights=False)
    assert lazy.architecture.depth == 3 and all(p.is_meta for p in lazy.architecture.parameters())
    lazy.load_weights()
    expected, loaded = encoder.state_dict(), lazy.model.state_dict()
    assert expected.keys() == loaded.keys() and all(torch.equal(expected[k], loaded[k]) for k in expected)
