"""Tokens → vectors, in one place: the seed's `aggregate_features` (mean, max, per time step, per
patch, quadrants) and the embeddings table's `Pooling` (a reduction, then L2 normalisation) share
the reductions below."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

AGGREGATION_METHODS = ("mean", "max", "temporal", "spatial", "quadrants")
POOL_METHODS = ("mean", "max", "temporal")


def reduce_tokens(feats: torch.Tensor, method: str, tp: int) -> torch.Tensor:
    """``[N, D]`` tokens in t-major order over ``tp`` time steps → ``[D]`` (mean, max over all
    tokens) or ``[Tp, D]`` (temporal: one mean per time step)."""
    if method == "mean":
        return feats.mean(0)
    if method == "max":
        return feats.max(0).values
    if method == "temporal":
        return feats.reshape(tp, -1, feats.shape[1]).mean(1)  # [Tp, D]
    raise ValueError(f"unknown reduction {method!r}; choose from {', '.join(POOL_METHODS)}")


def aggregate_features(feats: torch.Tensor, method: str, spatial_grid: tuple[int, int]) -> torch.Tensor:
    """Pool ``[tokens, D]`` (or ``[B, tokens, D]``, per item) image features.

    Tokens are in t-major, then h, then w order over a ``(Tp, Hp, Wp)`` grid; ``spatial_grid``
    is ``(Hp, Wp)`` and ``Tp = tokens / (Hp * Wp)``. Methods:

    * ``mean`` → ``[D]``; ``max`` → ``[D]`` (over all tokens);
    * ``temporal`` → ``[Tp, D]``: one mean vector per time step;
    * ``spatial`` → ``[Hp * Wp, D]``: one vector per patch (row-major), averaged over time;
    * ``quadrants`` → ``[4, D]``: means over time of the top-left, top-right, bottom-left and
      bottom-right quarters of the Hp × Wp grid. With an odd size the middle row (column)
      belongs to the first (top / left) half: rows ``[0, ceil(Hp/2))`` are "top".
    """
    if method == "cls":
        raise ValueError("V-JEPA 2 has no CLS token (every token is a patch); use 'mean' instead")
    if method not in AGGREGATION_METHODS:
        raise ValueError(f"unknown aggregation method {method!r}; choose from {', '.join(AGGREGATION_METHODS)}")
    if feats.ndim == 3:
        return torch.stack([aggregate_features(f, method, spatial_grid) for f in feats])
    if feats.ndim != 2:
        raise ValueError(f"expected features [tokens, D] or [B, tokens, D], got shape {tuple(feats.shape)}")
    hp, wp = spatial_grid
    tokens, dim = feats.shape
    if tokens == 0 or tokens % (hp * wp):
        raise ValueError(f"{tokens} tokens do not form whole {hp}×{wp} time steps")
    if method in POOL_METHODS:
        return reduce_tokens(feats, method, tokens // (hp * wp))
    grid = feats.reshape(tokens // (hp * wp), hp, wp, dim)  # [Tp, Hp, Wp, D]
    if method == "spatial":
        return grid.mean(0).reshape(hp * wp, dim)
    # quadrants
    if hp < 2 or wp < 2:
        raise ValueError(f"quadrants need a patch grid of at least 2×2, got {hp}×{wp}")
    h1, w1 = (hp + 1) // 2, (wp + 1) // 2
    parts = (grid[:, :h1, :w1], grid[:, :h1, w1:], grid[:, h1:, :w1], grid[:, h1:, w1:])
    return torch.stack([p.mean((0, 1, 2)) for p in parts])


@dataclass(frozen=True)
class Pooling:
    """How tokens become table vectors: a reduction, then (by default) L2 normalisation."""

    method: str = "mean"
    l2: bool = True

    def __post_init__(self):
        if self.method not in POOL_METHODS:
            raise ValueError(f"unknown pooling {self.method!r}; choose from {', '.join(POOL_METHODS)}")

    @property
    def name(self) -> str:
        return f"{self.method}+l2" if self.l2 else self.method

    def __call__(self, features: torch.Tensor, grid: Iterable[int]) -> np.ndarray:
        """fp16 ``[N, D]`` tokens → float32 ``[R, D]`` (R = 1, or Tp for `temporal`), reduced in fp32."""
        tp = int(list(grid)[0])
        x = features.float()  # [N, D], N = Tp·Hp·Wp in t-major order
        if x.ndim != 2 or tp < 1 or x.shape[0] % tp:
            raise ValueError(f"features of shape {tuple(x.shape)} do not fit the token grid {list(grid)}")
        pooled = reduce_tokens(x, self.method, tp).reshape(-1, x.shape[1])  # [R, D]
        if self.l2:
            pooled = torch.nn.functional.normalize(pooled, dim=1)
        return pooled.numpy().astype(np.float32, copy=False)
