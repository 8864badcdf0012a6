"""The sections of `bench/run.py`, one module each, registered in `bench/run.py`'s `SECTIONS`.

A section module has:
  run(settings, results) -> dict | list   measure; `results` holds the sections already run
  markdown(result) -> list[str]            its part of results.md
  targets(result, machine) -> list[dict]   optional: {"target", "value", "met"} rows
  add_arguments(parser)                    optional: its own command-line options
  REQUIRES                                 optional: sections whose results it reads (run first)
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import WINDOW

CLIP = (WINDOW, 256, 256)  # frames, height, width of the encoder benchmark input
TOKENS = (WINDOW // 2) * (256 // 16) ** 2  # 2048


@dataclass
class Settings:
    """What every section is run with (from bench/run.py's arguments)."""
    args: argparse.Namespace
    device: torch.device
    quick: bool
    depth: int  # encoder blocks of the timed models
    reps: int  # timed runs per measurement
    dtypes: list[torch.dtype]  # fp32 on CPU; bf16, fp16 on CUDA
    tmp: Path  # scratch folder, removed after the run

    @property
    def pipeline_model(self) -> str:
        """The model of the extraction sections. On a GPU a 4-block model is a few ms per window and
        the benchmark would time the disk; the full ViT-L there gives the forward pass its real weight."""
        return f"random:vit_large,depth={self.depth}" if self.device.type == "cpu" else "random:vit_large"
