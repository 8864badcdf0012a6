"""bench/gpu_check.sh --dry-run: the first GPU session's command rehearsed on the CPU with tiny
models, so a session that gets a device spends its minutes measuring, not debugging."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import clean_env

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_runs_every_step_and_writes_one_json(tmp_path):
    out = tmp_path / "check.json"
    # the command as a user types it: the script's own process is the point
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--output", str(out)], cwd=REPO,
                          capture_output=True, text=True, env=clean_env(PYTHON=sys.executable), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["ok"] is True
    assert set(report["steps"]) == {"encoder", "pipeline", "parallel", "probe", "compile"}
    assert all(step["ok"] and step["seconds"] > 0 for step in report["steps"].values())
    (run,) = report["steps"]["encoder"]["runs"]
    assert set(run["dtypes"]) == {"fp32", "bf16", "fp16"}
    assert run["dtypes"]["fp32"]["max_abs_diff_vs_transformers_fp32"] <= 1e-4
    for entry in run["dtypes"].values():
        assert entry["finite"] and entry["ours_clips_per_s"] > 0 and entry["transformers_clips_per_s"] > 0
    work = out.with_suffix("")
    assert (work / "pipeline" / "package").is_dir() and list((work / "pipeline").glob("*.zip"))
    assert len(list((work / "parallel").rglob("*.pt"))) >= 2
    assert (work / "probe" / "probe.pt").is_file()
    assert report["steps"]["compile"]["max_relative_diff"] <= 2e-3
    assert "pipeline" in proc.stdout and "all ok" in proc.stdout


def test_without_a_gpu_the_real_run_refuses_and_points_at_the_dry_run(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real run would start")
    from bench import gpu_check

    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--output", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert "use --dry-run" in capsys.readouterr().err
