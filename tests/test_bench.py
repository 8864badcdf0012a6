"""bench/run.py's arithmetic and its MFU section on a tiny CPU model (no timing assertions)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.common import machine_info
from bench.sections import mfu, spatial
from src.models import vision_transformer as vt
from src.models.flops import count_forward_flops

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_run():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989.4),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.4),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA A100 80GB PCIe", 312.0),
    ("NVIDIA L40S", 362.05),
    ("NVIDIA H200 NVL", 835.5),  # the PCIe card, not the SXM part
    ("NVIDIA GH200 480GB", 989.4),
    ("NVIDIA B200", 2250.0),
    ("NVIDIA L4", 121.0),
    ("NVIDIA A10", 125.0),
    ("NVIDIA L40", 181.05),  # not L4, not L40S
    ("Tesla T4", None),  # unknown: the MFU asks for --peak_tflops
    ("NVIDIA GeForce RTX 4090", None),
])
def test_gpu_peak_table(name, peak):
    assert mfu.gpu_bf16_peak_tflops(name) == peak


def test_mfu_section_counts_flops_and_divides_by_the_peak():
    res = mfu.bench_mfu("tiny", 32, None, torch.float32, torch.device("cpu"), [1, 2], reps=1,
                              peak_tflops=2.0, matmul_reps=1)
    model = vt.FACTORIES["tiny"](img_size=32, num_frames=16)
    assert res["tokens_per_clip"] == 8 * 2 * 2 and res["depth"] == model.depth
    assert res["tflops_per_clip"] == pytest.approx(count_forward_flops(model, 16, 32, 32) / 1e12)
    assert [r["batch"] for r in res["runs"]] == [1, 2]
    for run in res["runs"]:
        expected = run["batch"] * res["tflops_per_clip"] / run["median_s"]
        assert run["tflop_per_s"] == pytest.approx(expected)
        assert run["mfu_pct"] == pytest.approx(100 * expected / 2.0)
        assert run["pct_of_matmul_limit"] == pytest.approx(100 * expected / run["matmul_limit_tflop_per_s"])
    assert res["best_tflop_per_s"] == max(r["tflop_per_s"] for r in res["runs"])


def test_cli_mfu_only_writes_json_and_table(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "mfu", "--mfu_arch", "tiny",
                           "--mfu_img", "32", "--mfu_batch", "1", "--reps", "1", "--peak_tflops", "4",
                           "--output_dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["settings"]["sections"] == ["mfu"] and set(r) >= {"machine", "mfu", "targets"}
    assert r["mfu"][0]["peak_tflops"] == 4.0 and "mfu_pct" in r["mfu"][0]["runs"][0]
    md = (tmp_path / "results.md").read_text()
    assert "## Model FLOPs utilisation: tiny/32" in md and "device peak 4 TFLOP/s" in md


def test_spatial_section_counts_tokens_of_both_modes(bench_run, tmp_path):
    res = spatial.bench_spatial("random:tiny", "cpu", windows=1, reps=1, tmp=tmp_path, img_size=32)
    center, full = res["modes"]["center"], res["modes"]["full"]
    assert res["frame_size"] == [360, 640]  # the shipped 16:9 frames
    # 32 px crop: 2×2 patches; whole frame at short side 32: 640·32/360 = 56.9 → 64 px, 2×4 patches
    assert center["grid"] == [8, 2, 2] and full["grid"] == [8, 2, 4] and full["input_size"] == [32, 64]
    assert full["covered_fraction"] == 1.0 and center["covered_fraction"] < 0.5
    for m in (center, full):
        assert m["tokens_per_window"] == 8 * m["grid"][1] * m["grid"][2]
        assert m["tokens_per_s"] == pytest.approx(m["windows_per_s"] * m["tokens_per_window"])
    assert res["full_vs_center"]["tokens"] == 2.0
    md = bench_run.markdown({"quick": True, "machine": machine_info(torch.device("cpu")), "load_before": None,
                             "load_after": None, "settings": {"reps": 1, "depth": 2}, "spatial": res, "targets": []})
    assert "## Whole frame vs centre crop" in md and "| full | 32×64 | 8×2×4 | 64 | 100 % |" in md


def test_every_section_is_registered_with_markdown_and_a_run(bench_run):
    assert set(bench_run.SECTIONS) == set(bench_run.DEFAULT_ORDER)
    for name, section in bench_run.SECTIONS.items():
        assert callable(section.run) and callable(section.markdown), name
    # requirements run first, and memory before everything (while the process is small)
    assert bench_run.run_order(["encoder"]) == ["matmul", "encoder"]
    assert bench_run.run_order(["v21", "memory", "mfu"]) == ["memory", "v21", "mfu"]


def test_machine_info_names_the_cpu_flags():
    info = machine_info("cpu")
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    assert set(info["cpu_flags"]) == flags & {"avx2", "avx512f", "fma", "avx", "f16c", "avx512bw", "avx512vl",
                                             "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                                             "amx_int8", "neon", "asimd", "sve"}
    assert info["cpu_count"] == os.cpu_count() and info["torch"] == torch.__version__


def test_gpu_targets_judge_speed_precision_and_mfu():
    from bench.sections import encoder

    gpu = {"device": "cuda"}
    e = {"label": "ViT-L", "dtype": "bfloat16", "ours_vs_transformers": 1.3, "max_abs_diff": 0.02,
         "pct_of_matmul_limit": 65.0}
    rows = {r["target"]: r["met"] for r in encoder.targets([e], gpu)}
    assert rows == {"ViT-L bfloat16 (GPU): ours ≥ 1.0× transformers": True,
                    "ViT-L bfloat16 (GPU): max abs Δ vs transformers ≤ 0.05": True,
                    "ViT-L bfloat16 (GPU): ≥ 70 % of cuBLAS GFLOP/s at its shapes": False}
    assert encoder.targets([e], {"device": "cpu"}) == []  # bf16 on CPU is not judged
    run = {"arch": "vit_giant_xformers", "img_size": 384, "dtype": "bfloat16",
           "runs": [{"batch": 1, "mfu_pct": 31.0}, {"batch": 4, "mfu_pct": 44.0}]}
    (row,) = mfu.targets([run], gpu)
    assert row["met"] and "44.0 % at batch 4" in row["value"]
    assert mfu.targets([run], {"device": "cpu"}) == []


def test_readme_job_accounts_for_every_second_of_each_run(tmp_path):
    """bench/readme_job.py runs the README command in child processes (their start-up and exit are
    measured), here interleaved with HEAD's tree, and splits each wall time into its phases."""
    from bench import readme_job

    in_git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=readme_job.REPO, capture_output=True).returncode == 0
    against = ["--against", "HEAD"] if in_git else []  # a copy of the tree without .git: this tree only
    out = tmp_path / "readme_job.json"
    assert readme_job.main(["--model", "random:tiny", "--runs", "1", "--no_warmup", *against,
                            "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["tree"] for r in result["rows"]] == ["this tree"] + (["HEAD"] if in_git else [])
    for row in result["rows"]:
        assert min(row[k] for k in ("windows", "projection", "drawing", "rest")) > 0
        parts = row["windows"] + row["setup"] + row["projection"] + row["drawing"] + row["rest"]
        assert abs(parts - row["wall"]) < 1e-6
        assert abs(row["non_encoder_per_extraction"] - (row["wall"] - row["windows"]) / row["windows"]) < 1e-9
        # the child's CPU-seconds: some work, and never more cores busy than the machine has
        assert 0.5 < row["cpu"] and abs(row["busy_cores"] - row["cpu"] / row["wall"]) < 1e-9
        assert row["busy_cores"] <= os.cpu_count() + 0.05
    table = out.with_suffix(".md").read_text()
    assert "| drawing / extraction |" in table and result["machine"]["cpu"] in table
