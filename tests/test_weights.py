import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.models import weights
from src.models.weights import CheckpointError, ModelSpecError, load_classifier, load_encoder
from tests.helpers import (
    hf_classifier_from, hf_model_from, small_classifier, small_encoder, write_original_checkpoint, write_probe,
)

REPO = Path(__file__).resolve().parents[1]


def _features(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("key", ["encoder", "target_encoder"])
def test_original_checkpoint_roundtrip_through_transformers(tmp_path, key):
    enc, target = small_encoder("vit_large", seed=0), small_encoder("vit_large", seed=1)
    path = write_original_checkpoint(tmp_path / "vitl.pt", enc, target)
    loaded = load_encoder(str(path), img_size=32, num_frames=4, checkpoint_key=key)
    chosen = enc if key == "encoder" else target
    for name, value in chosen.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = torch.randn(1, 3, 4, 32, 32)
    ours = _features(loaded, x)
    hf = hf_model_from(loaded)  # our state dict → transformers layout → VJEPA2Model
    with torch.no_grad():
        ref = hf.get_vision_features(x.permute(0, 2, 1, 3, 4))
    assert (ours - ref).abs().max() <= 1e-4
    other = enc if key == "target_encoder" else target
    assert (ours - _features(other, x)).abs().max() > 1e-2  # the other key really differs


def test_checkpoints_load_without_drawing_random_weights(tmp_path):
    """Built on the meta device: loading draws nothing from the RNG, leaves nothing on meta, and a
    bf16 checkpoint becomes the model's fp32 parameters as a copying load would make them."""
    enc = small_encoder("vit_large", depth=2)
    half = {k: v.to(torch.bfloat16) for k, v in enc.state_dict().items()}
    torch.save({"encoder": half}, tmp_path / "bf16.pt")
    hf = hf_model_from(enc)
    hf.save_pretrained(tmp_path / "hf")
    for spec in (tmp_path / "bf16.pt", tmp_path / "hf"):
        rng = torch.random.get_rng_state()
        loaded = load_encoder(str(spec), img_size=32, num_frames=4)
        assert torch.equal(torch.random.get_rng_state(), rng), spec  # no random init was drawn
        for name, value in loaded.state_dict().items():
            assert value.device.type == "cpu" and value.dtype == torch.float32, name
            want = half[name].float() if spec.suffix == ".pt" else enc.state_dict()[name]
            assert torch.equal(value, want), name
    x = torch.randn(1, 3, 4, 32, 32)
    assert (_features(loaded, x) - _features(enc, x)).abs().max() <= 1e-5


def test_giant_width_loads_with_22_heads(tmp_path):
    giant = small_encoder("vit_giant_xformers", depth=1)
    path = write_original_checkpoint(tmp_path / "vitg.pt", giant)
    loaded = load_encoder(str(path), img_size=32, num_frames=4)
    assert (loaded.embed_dim, loaded.num_heads, loaded.depth) == (1408, 22, 1)
    assert loaded.blocks[0].mlp.fc1.out_features == 6144
    x = torch.randn(1, 3, 2, 32, 32)
    assert torch.allclose(_features(loaded, x), _features(giant, x), atol=1e-6)


def test_missing_block_names_the_keys(tmp_path):
    enc = small_encoder("vit_large", depth=3)
    sd = {f"module.backbone.{k}": v for k, v in enc.state_dict().items() if not k.startswith("blocks.1.")}
    torch.save({"encoder": sd}, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\.norm1\.weight") as err:
        load_encoder(str(tmp_path / "broken.pt"))
    assert "broken.pt" in str(err.value)


def test_wrong_width_names_the_keys(tmp_path):
    enc = small_encoder("vit_large", depth=2)
    sd = dict(enc.state_dict())
    sd["blocks.1.attn.proj.weight"] = torch.zeros(768, 768)
    torch.save({"encoder": sd}, tmp_path / "wrongwidth.pt")
    with pytest.raises(CheckpointError, match=r"wrong shapes: blocks\.1\.attn\.proj\.weight \(768, 768\) vs model \(1024, 1024\)"):
        load_encoder(str(tmp_path / "wrongwidth.pt"))


def test_hf_directory_wrong_width_is_an_error(tmp_path):
    hf = hf_model_from(small_encoder("vit_large", depth=1))
    hf.save_pretrained(tmp_path / "m")
    cfg = (tmp_path / "m" / "config.json").read_text().replace('"hidden_size": 1024', '"hidden_size": 1280')
    (tmp_path / "m" / "config.json").write_text(cfg)
    with pytest.raises(CheckpointError, match="wrong shapes: .*patch_embed.proj.weight"):
        load_encoder(str(tmp_path / "m"))


def test_missing_key_in_checkpoint_lists_available(tmp_path):
    torch.save({"predictor": {}, "epoch": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"no encoder entry \(looked for encoder, target_encoder, ema_encoder\); it has epoch, predictor"):
        load_encoder(str(tmp_path / "x.pt"))


def test_truncated_checkpoint_is_clear(tmp_path):
    path = write_original_checkpoint(tmp_path / "full.pt", small_encoder("tiny"))
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: cannot read checkpoint"):
        load_encoder(str(tmp_path / "cut.pt"))


@pytest.mark.parametrize("classifier_repo", [False, True])
def test_hf_directory_matches_transformers(tmp_path, classifier_repo):
    enc = small_encoder("vit_huge", img_size=48, num_frames=4)
    if classifier_repo:
        hf_full = hf_classifier_from(enc, small_classifier(embed_dim=1280, num_classes=5))
        hf_full.save_pretrained(tmp_path / "m")
        hf = hf_full.vjepa2
    else:
        hf = hf_model_from(enc)
        hf.save_pretrained(tmp_path / "m")
    loaded = load_encoder(str(tmp_path / "m"), num_frames=4)
    assert loaded.img_size == 48 and loaded.num_heads == 16
    x = torch.randn(1, 3, 4, 48, 48)
    with torch.no_grad():
        ref = hf.get_vision_features(x.permute(0, 2, 1, 3, 4))
    assert (_features(loaded, x) - ref).abs().max() <= 1e-4


def test_conversion_roundtrip_is_exact():
    enc = small_encoder("vit_giant_xformers", depth=2)
    back = weights.encoder_from_hf(weights.encoder_to_hf(enc.state_dict()))
    assert back.keys() == enc.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in enc.state_dict().items())
    clf = small_classifier(embed_dim=64)
    back = weights.classifier_from_hf(weights.classifier_to_hf(clf.state_dict()))
    assert back.keys() == clf.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in clf.state_dict().items())
    with pytest.raises(CheckpointError, match="no counterpart: blocks.0.attn.extra.weight"):
        weights.encoder_to_hf({"blocks.0.attn.extra.weight": torch.zeros(1)})


def test_random_spec_is_seeded_and_loud(caplog):
    with caplog.at_level(logging.WARNING):
        a = load_encoder("random:tiny", img_size=32)
    b = load_encoder("random:tiny", img_size=32)
    assert "RANDOM WEIGHTS" in caplog.text and "random" in caplog.text
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert a.is_random and a.model_spec == "random:tiny"
    g = load_encoder("random:vit_giant_xformers,depth=1")
    assert (g.embed_dim, g.num_heads, g.depth) == (1408, 22, 1)
    assert weights.model_info(g)["random_weights"] is True


@pytest.mark.parametrize("spec,message", [
    ("random:vit_enormous", "unknown architecture 'vit_enormous'"),
    ("random:tiny,depth", "bad option 'depth'"),
    ("nonsense spec!", "unknown model spec 'nonsense spec!'"),
    ("./missing/vitl.pt", "no such checkpoint file or model directory"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ModelSpecError, match=message):
        load_encoder(spec)


def test_unreachable_hub_id_gives_one_clear_message(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = "from src.models.weights import load_encoder; load_encoder('facebook/vjepa2-vitl-fpc64-256')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("src.errors.ModelSpecError: cannot get 'facebook/vjepa2-vitl-fpc64-256'")
    assert "local directory" in last and "random:" in last
    assert proc.stderr.count("Traceback") == 1  # our error only, not a chain of hub tracebacks


def test_probe_matches_transformers_pooler(tmp_path):
    enc = small_encoder("vit_large", depth=1)
    clf = small_classifier(embed_dim=1024, num_classes=7)
    loaded = load_classifier(write_probe(tmp_path / "probe.pt", clf))
    assert (loaded.num_classes, loaded.pooler.cross_attention_block.norm1.eps) == (7, 1e-5)
    hf = hf_classifier_from(enc, clf)  # 16 heads, layer_norm_eps 1e-5: where the semantics agree
    tokens = torch.randn(2, 40, 1024)
    with torch.no_grad():
        ours = loaded(tokens)
        ref = hf.classifier(hf.pooler(tokens))
    assert ours.shape == (2, 7)
    assert (ours - ref).abs().max() <= 1e-4


def test_probe_file_errors(tmp_path):
    torch.save({"something": 1}, tmp_path / "notprobe.pt")
    with pytest.raises(CheckpointError, match="no 'classifiers' entry"):
        load_classifier(tmp_path / "notprobe.pt")
    with pytest.raises(ModelSpecError, match="no such probe file"):
        load_classifier(tmp_path / "absent.pt")
