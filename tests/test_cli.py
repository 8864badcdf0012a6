"""Device and dtype resolution (the CUDA branches through a monkeypatched torch.cuda)."""
import logging

import pytest
import torch

from src import cli


def test_cpu_and_auto_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.resolve_device("auto") == torch.device("cpu")
    assert cli.resolve_device("cpu") == torch.device("cpu")
    assert cli.resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert cli.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(cli.UsageError, match="--device cuda:0: CUDA is not available on this machine"):
        cli.resolve_device("cuda:0")


def test_bad_device_strings_are_usage_errors():
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(cli.UsageError, match=f"--device {bad}: not a device"):
            cli.resolve_device(bad)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")


def test_cuda_index_beyond_the_visible_gpus(two_gpus):
    assert cli.resolve_device("cuda:1") == torch.device("cuda:1")
    assert cli.resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(cli.UsageError, match=r"--device cuda:2: this process sees 2 GPU\(s\), cuda:0..cuda:1"):
        cli.resolve_device("cuda:2")


def test_auto_dtype_bf16_only_where_the_gpu_has_it(two_gpus, monkeypatch, caplog):
    gpu = torch.device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert cli.resolve_dtype("auto", gpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    with caplog.at_level(logging.WARNING):
        assert cli.resolve_dtype("auto", gpu) == torch.float16
    assert "Tesla V100-SXM2-16GB has no native bf16: using fp16" in caplog.text
    assert cli.resolve_dtype("fp32", gpu) == torch.float32  # an explicit choice is kept


def test_refused_run_leaves_no_empty_output_folder(tmp_path):
    from pathlib import Path

    from tests.conftest import run_main

    repo = Path(__file__).resolve().parents[1]
    frames = str(repo / "examples" / "frames")
    existing = tmp_path / "existing"
    existing.mkdir()
    for out in (tmp_path / "new" / "deeper", existing):
        proc = run_main("vjepa2_sequential_extractor.py", "--model", "random:tiny", "--device", "cpu",
                        "--frame_dir", frames, "--first_frame", "99", "--output_dir", out)
        assert proc.returncode == 2 and "from frame 99 on" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # made by this run: removed; the user's: kept
