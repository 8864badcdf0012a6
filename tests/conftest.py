"""Shared fixtures for the extractor tests: small image folders and a clean subprocess env."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
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


@pytest.fixture
def image_dir_factory(tmp_path):
    def factory(count: int, name: str = "images", **kwargs) -> tuple[Path, list[str]]:
        root = tmp_path / name
        return root, make_image_dir(root, count, **kwargs)

    return factory
