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
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert cli.resolve_dtype("auto", gpu) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    with caplog.at_level(logging.WARNING):
        assert cli.resolve_dtype("auto", gpu) == torch.float16
    assert "Tesla V100-SXM2-16GB has no native bf16: using fp16" in caplog.text
    assert cli.resolve_dtype("fp32", gpu) == torch.float32  # an explicit choice is kept


def test_bf16_capability_is_read_on_the_process_own_device(two_gpus, monkeypatch):
    """A V100 as cuda:0 beside an A100 as cuda:1: a process told to use cuda:1 gets bf16, whatever
    device is current; one on cuda:0 gets fp16."""
    capabilities = {0: (7, 0), 1: (8, 0)}
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: capabilities[torch.device(device).index if device is not None else 0])
    assert cli.resolve_dtype("auto", torch.device("cuda:1")) == torch.bfloat16
    assert cli.resolve_dtype("auto", torch.device("cuda:0")) == torch.float16


def test_tf32_is_opt_in_and_cuda_only(caplog):
    from src.device import set_tf32

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tf32(False, torch.device("cuda:0"))
        with caplog.at_level(logging.WARNING):
            set_tf32(True, torch.device("cpu"))
        assert "--tf32 applies to CUDA devices only" in caplog.text
        assert torch.backends.cuda.matmul.allow_tf32 is False
        set_tf32(True, torch.device("cuda:0"))
        assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
        set_tf32(False, torch.device("cuda:0"))
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


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


def test_run_script_returns_the_exit_code_and_freezes_the_collector_for_exit():
    import gc

    def fails(argv):
        raise cli.UsageError("bad flag")

    assert gc.get_freeze_count() == 0
    try:
        assert cli.run_script(fails) == cli.EXIT_USAGE
        assert gc.get_freeze_count() > 0  # the process's last collections will skip these objects
    finally:
        gc.unfreeze()
