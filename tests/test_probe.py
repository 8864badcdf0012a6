"""vjepa2_probe.py and src/probe.py: a learnable synthetic task end to end, refusals, resume."""
from __future__ import annotations

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from tests.conftest import clean_env

REPO = Path(__file__).resolve().parents[1]
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
COLOURS = [(230, 40, 40), (40, 220, 60), (60, 80, 240), (240, 220, 40), (240, 240, 240)]
SIZE, FRAMES, SPEED = 36, 16, 1.25  # 36 px frames: the 32 px crop's short side (int(256/224·32))


def write_square_clip(path: Path, direction: str, rng: random.Random) -> Path:
    """A square of a random colour and size moving one way across a flat background (H.264)."""
    side = rng.randint(6, 10)
    dx, dy = DIRECTIONS[direction]
    travel = SPEED * (FRAMES - 1)
    along = rng.uniform(0, SIZE - side - travel)  # start so that it stays in the frame
    across = rng.uniform(0, SIZE - side)
    background = np.array([rng.randint(0, 60)] * 3, dtype=np.uint8)
    colour = np.array(rng.choice(COLOURS), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25, options={"crf": "12"})
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        for t in range(FRAMES):
            pos = along + SPEED * t
            start = SIZE - side - pos if (dx, dy) in ((-1, 0), (0, -1)) else pos
            x, y = (start, across) if dx else (across, start)
            frame = np.broadcast_to(background, (SIZE, SIZE, 3)).copy()
            frame[round(y):round(y) + side, round(x):round(x) + side] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def write_moving_squares(root: Path, per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """`per_class` clips per direction under `root`; returns (absolute path, direction) rows."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for direction in DIRECTIONS:
        for i in range(per_class):
            path = write_square_clip(root / f"{direction}_{i:03d}.mp4", direction, rng)
            rows.append((str(path.resolve()), direction))
    return rows
