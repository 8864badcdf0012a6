"""Model FLOPs of one encoder forward pass, counted from the architecture (for MFU figures)."""
from __future__ import annotations

import math

from src.models.vision_transformer import VisionTransformer


def count_forward_flops(model: VisionTransformer, frames: int, height: int, width: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass for one clip: matmuls and attention."""
    n = math.prod(model.patch_grid(frames, height, width))
    d, hidden = model.embed_dim, int(model.embed_dim * model.mlp_ratio)
    tubelet = 1 if model.uses_image_path(frames) else model.tubelet_size
    patch = 2 * n * d * 3 * tubelet * model.patch_size**2
    per_block = 2 * n * d * (3 * d + d + 2 * hidden) + 2 * 2 * n * n * d
    return float(patch + model.depth * per_block)
