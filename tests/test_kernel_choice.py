"""The per-machine CPU linear choice: timed once per machine and model width, cached, logged, overridable."""
import json
import logging

import pytest
import torch

from src.inference import ClipEncoder
from src.models import fused_cpu, kernel_choice
from src.models.kernel_choice import choose_cpu_linear, set_cpu_linear
from src.models.layers import Attention, Mlp
from tests.helpers import small_encoder

needs_onednn = pytest.mark.skipif(fused_cpu.ONEDNN_LINEAR is None, reason="this torch build has no oneDNN linears")


def _paths(model) -> set:
    return {m.cpu_fused for m in model.modules() if isinstance(m, (Attention, Mlp))}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache file of the test's own; every batch is worth timing (the models here are small)."""
    path = tmp_path / "cache" / kernel_choice.CACHE_NAME
    monkeypatch.setattr(kernel_choice, "cache_file", lambda: path)
    monkeypatch.setattr(kernel_choice, "MIN_TIMED_GFLOP", 0.0)
    return path


@needs_onednn
def test_timed_once_then_read_back_for_the_same_machine_and_width(cache, monkeypatch, caplog):
    timed = []

    def timing(block, tokens, repeats=3):
        timed.append(tokens)
        return {"fused": 2.0, "plain": 1.0}  # plain wins, whatever this CPU would say

    monkeypatch.setattr(kernel_choice, "time_cpu_linears", timing)
    model = small_encoder("vit_large", depth=2)
    with caplog.at_level(logging.INFO, logger="src.models.kernel_choice"):
        first = choose_cpu_linear(model, tokens=64)
    assert first["source"] == "timed" and first["fused"] is False and timed == [64]
    assert _paths(model) == {False}
    assert "CPU linears: plain, timed on this machine" in caplog.text and str(cache) in caplog.text
    entry, = json.loads(cache.read_text()).values()
    assert entry["machine"]["torch"] == torch.__version__ and entry["timed_tokens"] == 64
    assert entry["widths"] == {"dim": 1024, "hidden": 4096, "qkv_bias": True}
    assert (entry["fused_s"], entry["plain_s"]) == (2.0, 1.0)

    again = small_encoder("vit_large", depth=2)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.models.kernel_choice"):
        second = choose_cpu_linear(again, tokens=64)
    assert second["source"] == "cached" and timed == [64] and _paths(again) == {False}
    assert "this machine's choice for 1024-wide models" in caplog.text

    # another batch size keeps the width's path (features must not depend on the batch); another width is timed
    assert choose_cpu_linear(small_encoder("vit_large", depth=1), tokens=128)["source"] == "cached"
    choose_cpu_linear(small_encoder("vit_huge", depth=1), tokens=4 * 4608)  # timed on at most 8192 tokens
    assert timed == [64, kernel_choice.MAX_TIMED_TOKENS] and len(json.loads(cache.read_text())) == 2


@needs_onednn
def test_both_paths_give_the_same_features_and_the_timing_is_real(cache):
    model = small_encoder("vit_large", depth=2)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.inference_mode():
        set_cpu_linear(model, True)
        fused = model(x)
        set_cpu_linear(model, False)
        plain = model(x)
    assert (fused - plain).abs().max() <= 1e-5
    seconds = kernel_choice.time_cpu_linears(model.blocks[0], tokens=256, repeats=2)
    assert set(seconds) == {"fused", "plain"} and all(0 < s < 5 for s in seconds.values())


@needs_onednn
def test_an_explicit_mode_skips_the_timing(cache, monkeypatch):
    monkeypatch.setattr(kernel_choice, "time_cpu_linears", lambda *a, **k: pytest.fail("timed"))
    model = small_encoder("vit_large", depth=1)
    assert choose_cpu_linear(model, 64, "plain") == {"fused": False, "source": "option"}
    assert _paths(model) == {False}
    assert choose_cpu_linear(model, 64, "fused")["fused"] and _paths(model) == {True}
    assert not cache.exists()
    with pytest.raises(ValueError, match="cpu linear mode must be one of"):
        choose_cpu_linear(model, 64, "fastest")


@needs_onednn
def test_a_damaged_or_unwritable_cache_never_fails_a_run(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(kernel_choice, "MIN_TIMED_GFLOP", 0.0)
    damaged = tmp_path / "cpu_kernels.json"
    damaged.write_text("{not json")
    monkeypatch.setattr(kernel_choice, "cache_file", lambda: damaged)
    with caplog.at_level(logging.WARNING, logger="src.models.kernel_choice"):
        assert choose_cpu_linear(small_encoder("vit_large", depth=1), 32)["source"] == "timed"
    assert "unreadable" in caplog.text and len(json.loads(damaged.read_text())) == 1  # rewritten whole

    blocked = tmp_path / "a_file"
    blocked.write_text("")
    monkeypatch.setattr(kernel_choice, "cache_file", lambda: blocked / "cpu_kernels.json")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="src.models.kernel_choice"):
        assert choose_cpu_linear(small_encoder("vit_large", depth=1), 32)["source"] == "timed"
    assert "cannot save the CPU linear choice" in caplog.text


def test_no_choice_without_onednn_or_off_the_cpu_fp32_path(cache, monkeypatch, caplog):
    monkeypatch.setattr(fused_cpu, "FUSED_CPU_LINEAR", False)
    assert choose_cpu_linear(small_encoder("vit_large", depth=1), 64) is None
    monkeypatch.setattr(fused_cpu, "FUSED_CPU_LINEAR", True)
    bf16 = ClipEncoder("random:tiny", device="cpu", dtype="bf16", img_size=32)
    bf16.encode(torch.zeros(1, 3, 16, 32, 32, dtype=torch.uint8))
    assert bf16.cpu_linear is None and not cache.exists()
    with caplog.at_level(logging.WARNING, logger="src.inference"):
        ClipEncoder("random:tiny", device="cpu", dtype="bf16", img_size=32, cpu_linear="plain")
    assert "--cpu_linear plain is ignored: it applies to eager fp32 runs on the CPU (this one: bfloat16" in caplog.text


@needs_onednn
def test_the_encoder_chooses_on_its_first_batch_at_the_real_token_count(cache):
    encoder = ClipEncoder("random:tiny", device="cpu", img_size=32, cpu_linear="auto")
    encoder.encode(torch.zeros(2, 3, 16, 32, 32, dtype=torch.uint8))
    entry, = json.loads(cache.read_text()).values()
    assert entry["timed_tokens"] == 2 * 8 * 2 * 2  # B × (16/2) × (32/16)²
    assert encoder.cpu_linear["source"] == "timed"
    forced = ClipEncoder("random:tiny", device="cpu", img_size=32, cpu_linear="plain")
    forced.encode(torch.zeros(1, 3, 16, 32, 32, dtype=torch.uint8))
    assert forced.cpu_linear["source"] == "option" and _paths(forced.model) == {False}


@needs_onednn
def test_batches_too_small_to_time_keep_the_fused_path_untimed(cache, monkeypatch):
    monkeypatch.setattr(kernel_choice, "MIN_TIMED_GFLOP", 4.0)
    monkeypatch.setattr(kernel_choice, "time_cpu_linears", lambda *a, **k: pytest.fail("timed"))
    model = small_encoder("vit_large", depth=1)
    set_cpu_linear(model, False)
    assert choose_cpu_linear(model, tokens=64) == {"fused": True, "source": "small"}  # 1.6 GFLOP
    assert _paths(model) == {True} and not cache.exists()


_FIRST_BATCH = """
import logging, sys, torch
logging.basicConfig(level=logging.INFO, format="%(message)s")
from src.inference import ClipEncoder
encoder = ClipEncoder("random:vit_large,depth=1", device="cpu", img_size=256)
encoder.encode(torch.zeros(1, 3, 16, 256, 256, dtype=torch.uint8))
print("CHOICE", encoder.cpu_linear["source"], encoder.cpu_linear["fused"])
"""


@needs_onednn
def test_processes_starting_together_time_once_and_run_the_same_path(tmp_path):
    """The shards of a job on a new machine take turns: one times, the others read its choice."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import clean_env

    env = clean_env(XDG_CACHE_HOME=str(tmp_path), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", _FIRST_BATCH], cwd=Path(__file__).resolve().parents[1], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    choices = sorted(line.split()[1:] for out in outputs for line in out.splitlines() if line.startswith("CHOICE"))
    assert [source for source, _ in choices] == ["cached", "cached", "timed"], outputs
    assert len({fused for _, fused in choices}) == 1  # every process on the one path
    assert sum("timed on this machine" in out for out in outputs) == 1
    entry, = json.loads((tmp_path / "vjepa2" / kernel_choice.CACHE_NAME).read_text()).values()
    assert entry["machine"]["threads"] == 1 and entry["timed_tokens"] == 2048
