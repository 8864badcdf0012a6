"""3-D rotary position embeddings of V-JEPA 2 / 2.1: positions, frequency layouts, cos/sin tables.

Each of the three axes (time, height, width) rotates `rope_axis_dim(head_dim)` channels of q and
k; the rest pass through. 2.0 tiles its frequencies (`repeat`), 2.1 pairs them (`interleave`)
and may rescale h/w positions onto the pre-training grid (`interpolate_rope`).
"""
from __future__ import annotations

import math

import torch


def rope_axis_dim(head_dim: int) -> int:
    """Channels rotated per axis (time, height, width); the rest of head_dim is passed through."""
    return 2 * ((head_dim // 3) // 2)


ROPE_LAYOUTS = ("repeat", "interleave")


def rope_angles(positions: torch.Tensor, axis_dim: int, layout: str = "repeat") -> torch.Tensor:
    """Angles `[..., axis_dim]` for positions (float32), channel by channel.

    `repeat` (2.0): channel c uses frequency c mod s/2 (the s/2 frequencies tiled twice), so
    the two channels of a rotated pair use different frequencies; the 2.0 weights were trained
    with this. `interleave` (2.1): both channels of pair i use frequency i, a true 2-D rotation.
    """
    half = axis_dim // 2
    omega = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float32, device=positions.device) / half))
    angles = positions.to(torch.float32)[..., None] * omega  # [..., half]
    if layout == "interleave":
        return angles.repeat_interleave(2, dim=-1)  # [..., axis_dim]: θ0 θ0 θ1 θ1 …
    return torch.cat([angles, angles], dim=-1)  # [..., axis_dim]: θ0 θ1 … θ0 θ1 …


def grid_positions(grid: tuple[int, int, int], device=None, row_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(t, h, w) integer position of each token, `[N, 3]`, in the t-major, h, w token order.

    `row_grid` (Hn, Wn): read the flat token index n against a nominal Hn×Wn frame instead
    (t = n // (Hn·Wn), h = n // Wn mod Hn, w = n mod Wn): the original's positions with
    `handle_nonsquare_inputs=False`, which equal the real ones only at the nominal size.
    """
    if row_grid is not None:
        hn, wn = row_grid
        n = torch.arange(math.prod(grid), device=device)
        return torch.stack([n // (hn * wn), (n // wn) % hn, n % wn], dim=-1)
    t, h, w = torch.meshgrid(
        *(torch.arange(n, device=device) for n in grid), indexing="ij"
    )
    return torch.stack([t.flatten(), h.flatten(), w.flatten()], dim=-1)


def rope_table_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the RoPE tables for activations of `dtype`: the activations' own, so the rotation
    makes no float32 copy of q and k (a float dtype; anything else gets float32 tables).

    The angles are always computed in float32 (position angles up to a few hundred radians lose
    all precision in bf16); only the finished cos/sin are cast. Meta's code computes everything
    in the activation dtype.
    """
    return dtype if dtype in (torch.float64, torch.float32, torch.bfloat16, torch.float16) else torch.float32


def interpolated_positions(grid: tuple[int, int, int], target: int, device=None) -> torch.Tensor:
    """Float (t, h, w) positions `[N, 3]` with h and w rescaled onto a `target`×`target` grid.

    2.1's `interpolate_rope`: row h → h·(G−1)/(Hp−1), column w → w·(G−1)/(Wp−1) (multiply, then
    divide, in float32), so every input spans positions 0 … G−1 on each spatial axis, each axis
    on its own; t stays the tubelet index.
    """
    _, hp, wp = grid
    if hp < 2 or wp < 2:
        # the rescale divides by Hp−1 / Wp−1: Meta's code yields NaN positions here
        raise ValueError(f"interpolate_rope needs at least 2 patches per side, got a {hp}×{wp} patch grid "
                         "(input 16 px tall or wide)")
    pos = grid_positions(grid, device=device).to(torch.float32)
    pos[:, 1] = pos[:, 1] * (target - 1) / (hp - 1)
    pos[:, 2] = pos[:, 2] * (target - 1) / (wp - 1)
    return pos


def rope_tables(grid: tuple[int, int, int], head_dim: int, device=None, dtype: torch.dtype = torch.float32,
                layout: str = "repeat", interpolate_to: int | None = None,
                row_grid: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables `[N, 3*s]` for a patch grid (Tp, Hp, Wp); angles computed in float32.

    `layout`: frequency layout (see `rope_angles`). `interpolate_to`: rescale h/w positions onto
    a grid of that size (see `interpolated_positions`); None keeps integer patch indices.
    """
    s = rope_axis_dim(head_dim)
    if interpolate_to is None:
        pos = grid_positions(grid, device=device, row_grid=row_grid)  # [N, 3]
    else:
        pos = interpolated_positions(grid, interpolate_to, device=device)
    angles = torch.cat([rope_angles(pos[:, axis], s, layout) for axis in range(3)], dim=-1)  # [N, 3s]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_adjacent_pairs(x: torch.Tensor) -> torch.Tensor:
    """Companion of RoPE in V-JEPA 2's convention: y[2j] = -x[2j+1], y[2j+1] = x[2j]."""
    pairs = x.unflatten(-1, (-1, 2))  # [..., s/2, 2]
    return torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first 3*s channels of `x` `[B, heads, N, head_dim]`; the rest pass through.

    Computes `x*cos + rotate_adjacent_pairs(x)*sin` in the tables' dtype promoted with x's
    (tables in x's dtype, as `RopeCache` gives them: no copy of x in another dtype) and returns
    x's dtype. Eager without autograd it is written without the rotated copy, `torch.stack` or
    `torch.cat`: one product into a preallocated output, one multiply-add per half of each pair
    (strided views), then the pass-through channels. Under autograd or torch.compile it is the
    out-of-place formula (in-place writes into `out=` buffers are not differentiable and break
    Dynamo's graph; inductor fuses the formula into one kernel).
    Each axis block rotates its own adjacent pairs; blocks have even width so pairs never
    straddle two axes and one pairing over the concatenated 3*s channels is equivalent.
    """
    r = cos.shape[-1]
    dtype = torch.promote_types(x.dtype, cos.dtype)
    if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad or sin.requires_grad)):
        x_rot = x[..., :r].to(dtype)
        rotated = x_rot * cos + rotate_adjacent_pairs(x_rot) * sin
        return torch.cat([rotated.to(x.dtype), x[..., r:]], dim=-1)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    x_rot, out_rot = x[..., :r], out[..., :r]
    torch.mul(x_rot, cos, out=out_rot)
    x_pairs, out_pairs, sin_pairs = x_rot.unflatten(-1, (-1, 2)), out_rot.unflatten(-1, (-1, 2)), sin.unflatten(-1, (-1, 2))
    out_pairs[..., 0].addcmul_(x_pairs[..., 1], sin_pairs[..., 0], value=-1)  # y[2j]   = -x[2j+1]
    out_pairs[..., 1].addcmul_(x_pairs[..., 0], sin_pairs[..., 1])            # y[2j+1] =  x[2j]
    out[..., r:] = x[..., r:]
    return out if dtype == x.dtype else out.to(x.dtype)


class RopeCache:
    """cos/sin tables per (grid, device, table dtype), built once: every block of a forward pass shares them.

    `get(grid, device, dtype)` takes the dtype of the activations and gives tables in that dtype
    (see `rope_table_dtype`), their angles computed in float32. A plain dict: call it outside a
    compiled region and pass the tables in (`src.models.compile`), so Dynamo never guards on it.
    """

    def __init__(self, head_dim: int, layout: str = "repeat", interpolate_to: int | None = None,
                 row_grid: tuple[int, int] | None = None):
        if layout not in ROPE_LAYOUTS:
            raise ValueError(f"rope layout must be one of {ROPE_LAYOUTS}, got {layout!r}")
        self.head_dim, self.layout, self.interpolate_to = head_dim, layout, interpolate_to
        self.row_grid = row_grid
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, grid: tuple[int, int, int], device: torch.device,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        table_dtype = rope_table_dtype(dtype)
        key = (tuple(grid), str(torch.device(device)), table_dtype)
        if key not in self._tables:
            self._tables[key] = rope_tables(grid, self.head_dim, device=device, dtype=table_dtype,
                                            layout=self.layout, interpolate_to=self.interpolate_to,
                                            row_grid=self.row_grid)
        return self._tables[key]
