"""V-JEPA 2 / 2.1 video encoder: a ViT over 3D patches (tubelets) with 3D rotary position embeddings.

One configurable `VisionTransformer` covers both generations through explicit options, plus
small factories for the released families: 2.0 (`vit_large`, `vit_huge`, `vit_giant_xformers`,
`vit_gigantic_xformers` and their `_rope` aliases) and 2.1 (`vjepa2_1_vit_base` … `_gigantic`).
What 2.1 changes (see the README's 2.1 section): interleaved RoPE frequencies, RoPE positions
rescaled onto the 16×16 pre-training grid, modality embeddings, a 1-frame image patch embedding
used when T == 1, and four per-level LayerNorms (`norms_block`) instead of one `norm`.
State-dict keys follow Meta's original checkpoints (`patch_embed.proj`, `patch_embed_img.proj`,
`{video,img}_mod_embed`, `blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm` or
`norms_block.{0..3}`).

No I/O, no argument parsing: weight loading lives in `src/models/weights.py`.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYER_NORM_EPS = 1e-6


# ----------------------------------------------------------------------------- 3D RoPE
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


def grid_positions(grid: tuple[int, int, int], device=None) -> torch.Tensor:
    """(t, h, w) integer position of each token, `[N, 3]`, in the t-major, h, w token order."""
    t, h, w = torch.meshgrid(
        *(torch.arange(n, device=device) for n in grid), indexing="ij"
    )
    return torch.stack([t.flatten(), h.flatten(), w.flatten()], dim=-1)


def rope_table_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the RoPE tables for inputs of `dtype`: float32, or float64 for float64 inputs.

    Half-precision inputs (bf16/fp16) use float32 tables: position angles up to a few hundred
    radians lose all precision in bf16, so the rotation is always done in at least float32.
    """
    return torch.float64 if dtype == torch.float64 else torch.float32


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
                layout: str = "repeat", interpolate_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables `[N, 3*s]` for a patch grid (Tp, Hp, Wp); angles computed in float32.

    `layout`: frequency layout (see `rope_angles`). `interpolate_to`: rescale h/w positions onto
    a grid of that size (see `interpolated_positions`); None keeps integer patch indices.
    """
    s = rope_axis_dim(head_dim)
    if interpolate_to is None:
        pos = grid_positions(grid, device=device)  # [N, 3]
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

    Computes `x*cos + rotate_adjacent_pairs(x)*sin` (float32 at least: the tables' dtype,
    promoted with x's) and casts back to x's dtype. Without autograd it is written without
    the rotated copy, `torch.stack` or `torch.cat`: one product into a preallocated output,
    one multiply-add per half of each pair (strided views), then the pass-through channels.
    Each axis block rotates its own adjacent pairs; blocks have even width so pairs never
    straddle two axes and one pairing over the concatenated 3*s channels is equivalent.
    """
    r = cos.shape[-1]
    if torch.is_grad_enabled() and (x.requires_grad or cos.requires_grad or sin.requires_grad):
        # autograd: the out-of-place formula (in-place writes into `out` are not differentiable)
        x_rot = x[..., :r].to(torch.promote_types(x.dtype, cos.dtype))
        rotated = x_rot * cos + rotate_adjacent_pairs(x_rot) * sin
        return torch.cat([rotated.to(x.dtype), x[..., r:]], dim=-1)
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, cos.dtype), device=x.device)
    x_rot, out_rot = x[..., :r], out[..., :r]
    torch.mul(x_rot, cos, out=out_rot)
    x_pairs, out_pairs, sin_pairs = x_rot.unflatten(-1, (-1, 2)), out_rot.unflatten(-1, (-1, 2)), sin.unflatten(-1, (-1, 2))
    out_pairs[..., 0].addcmul_(x_pairs[..., 1], sin_pairs[..., 0], value=-1)  # y[2j]   = -x[2j+1]
    out_pairs[..., 1].addcmul_(x_pairs[..., 0], sin_pairs[..., 1])            # y[2j+1] =  x[2j]
    out[..., r:] = x[..., r:]
    return out.to(x.dtype)


class RopeCache:
    """cos/sin tables per (grid, device, table dtype), built once: every block of a forward pass shares them.

    `get(grid, device, dtype)` takes the dtype of the activations; the tables are float32 for
    fp32/bf16/fp16 activations (see `rope_table_dtype`) and float64 for float64 ones.
    """

    def __init__(self, head_dim: int, layout: str = "repeat", interpolate_to: int | None = None):
        if layout not in ROPE_LAYOUTS:
            raise ValueError(f"rope layout must be one of {ROPE_LAYOUTS}, got {layout!r}")
        self.head_dim, self.layout, self.interpolate_to = head_dim, layout, interpolate_to
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, grid: tuple[int, int, int], device: torch.device,
            dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        table_dtype = rope_table_dtype(dtype)
        key = (tuple(grid), str(torch.device(device)), table_dtype)
        if key not in self._tables:
            self._tables[key] = rope_tables(grid, self.head_dim, device=device, dtype=table_dtype,
                                            layout=self.layout, interpolate_to=self.interpolate_to)
        return self._tables[key]


# ----------------------------------------------------------------------------- fused CPU linears
# oneDNN's linear with a fused epilogue (bias, GELU, residual add): the kernels torch.compile's
# CPU backend emits. On CPU, in fp32 and without autograd, each Linear of a block runs as one
# oneDNN call instead of bias-copy + GEMM (+ GELU / + residual add) passes over the output.
# Set to False to get the plain nn.Linear path (bench/ablation.py does, to measure the effect).
FUSED_CPU_LINEAR = True


def _onednn_linear_ops():
    try:
        return torch.ops.mkldnn._linear_pointwise.default, torch.ops.mkldnn._linear_pointwise.binary
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


_ONEDNN_LINEAR = _onednn_linear_ops() if torch.backends.mkldnn.is_available() else None


def use_fused_linear(x: torch.Tensor) -> bool:
    """Whether the oneDNN fused path applies to activations `x` (CPU, fp32, no autograd).

    Not under torch.compile: inductor cannot lower these ops given plain weights, and it does
    its own fusion of the nn.Linear path.
    """
    return (FUSED_CPU_LINEAR and _ONEDNN_LINEAR is not None and x.device.type == "cpu"
            and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


def fused_linear(x: torch.Tensor, linear: nn.Linear, activation: str = "none") -> torch.Tensor:
    """`linear(x)`, then GELU (erf) if `activation == "gelu"`, as one oneDNN call (CPU fp32)."""
    return _ONEDNN_LINEAR[0](x, linear.weight, linear.bias, activation, [], "none" if activation == "gelu" else "")


def fused_linear_add(x: torch.Tensor, linear: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """`residual + linear(x)` as one oneDNN call (CPU fp32)."""
    return _ONEDNN_LINEAR[1](x, residual, linear.weight, linear.bias, "add")


# ----------------------------------------------------------------------------- layers
class PatchEmbed3D(nn.Module):
    """Tubelet embedding: Conv3d with kernel = stride = (tubelet, patch, patch)."""

    def __init__(self, patch_size: int, tubelet_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, D, Tp, Hp, Wp]
        # [B, N, D], t-major then h then w. Made contiguous once here: a transposed view would
        # carry its channel-major strides through every residual add of the network, and each
        # LayerNorm would then copy its input to a contiguous buffer first.
        return x.flatten(2).transpose(1, 2).contiguous()


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv; 3D RoPE on q and k when tables are given."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of `x` `[B, N, D]`; with `residual`, returns `residual + attention` (fused on CPU)."""
        B, N, D = x.shape
        fused = use_fused_linear(x)
        qkv = fused_linear(x, self.qkv) if fused else self.qkv(x)
        # views, no copies: q, k, v keep qkv's memory ([B, N, 3, heads, head_dim] permuted)
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        x = F.scaled_dot_product_attention(q, k, v)  # scale head_dim^-0.5 by default
        x = x.transpose(1, 2).reshape(B, N, D)  # [B, heads, N, hd] → [B, N, D]: the one copy
        if residual is None:
            return self.proj(x)
        return fused_linear_add(x, self.proj, residual) if fused else residual + self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """MLP of `x`; with `residual`, returns `residual + mlp(x)` (fused on CPU)."""
        if use_fused_linear(x) and isinstance(self.act, nn.GELU) and self.act.approximate == "none":
            h = fused_linear(x, self.fc1, "gelu")
            return self.fc2(h) if residual is None else fused_linear_add(h, self.fc2, residual)
        out = self.fc2(self.act(self.fc1(x)))
        return out if residual is None else residual + out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int, qkv_bias: bool, norm_layer: Callable):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, mlp_hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn(self.norm1(x), cos, sin, residual=x)  # x + attn(norm1(x))
        return self.mlp(self.norm2(x), residual=x)  # x + mlp(norm2(x))


# ----------------------------------------------------------------------------- model
# Pre-training grid of RoPE interpolation, by patch size: 256 px / 16 and 252 px / 14 (2.1).
PRETRAINED_ROPE_GRID = {16: 16, 14: 18}
# 2.1's hierarchical levels by depth; other depths use evenly spaced levels (see hierarchical_layers_for).
HIERARCHICAL_LAYERS = {12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 40: (9, 19, 29, 39), 48: (11, 23, 37, 47)}
NUM_LEVELS = 4


def hierarchical_layers_for(depth: int) -> tuple[int, ...]:
    """The 4 block indices whose outputs 2.1 exposes as levels (shallow → deep, last = depth−1).

    The released depths use Meta's table (48's list is not evenly spaced); any other depth
    (small test and smoke models) takes the quarter points, which reproduce the table for 12,
    24 and 40. Depths under 4 repeat blocks.
    """
    if depth in HIERARCHICAL_LAYERS:
        return HIERARCHICAL_LAYERS[depth]
    return tuple(max(0, (j + 1) * depth // NUM_LEVELS - 1) for j in range(NUM_LEVELS))


class VisionTransformer(nn.Module):
    """V-JEPA 2 / 2.1 encoder. Input `[B, C, T, H, W]`, output `[B, (T/2)(H/16)(W/16), D]`.

    Args:
        img_size: nominal crop size (square). Only recorded: RoPE positions come from the
            actual patch grid of each input, so other resolutions and non-square inputs work.
        num_frames: nominal frame count (recorded; any multiple of `tubelet_size` works).
        patch_size: spatial patch size in pixels.
        tubelet_size: frames per temporal patch.
        in_chans: input channels.
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width = int(embed_dim * mlp_ratio).
        qkv_bias: bias on the fused qkv projection.
        norm_eps: LayerNorm epsilon.
        out_layers: if given, forward returns the outputs of these block indices as a list
            (each normed as the generation does it) instead of the last layer only.
        rope_layout: "repeat" (2.0) or "interleave" (2.1); see `rope_angles`.
        interpolate_rope: rescale RoPE h/w positions onto the pre-training grid (2.1 hub: on).
        modality_embedding: add a learned `video_mod_embed` / `img_mod_embed` to every token (2.1).
        img_temporal_dim_size: with 1, inputs of 1 frame go through `patch_embed_img` (a 1-frame
            tubelet) with `img_mod_embed`: 2.1's image path. None: no image path (2.0).
        norms_block: four per-level LayerNorms `norms_block.{0..3}` at `hierarchical_layers`
            instead of one `norm` (2.1); the default output is `norms_block[3]` after the last block.
        return_hierarchical: forward returns the 4 levels concatenated on channels `[B, N, 4·D]`
            (2.1's `return_hierarchical`; also settable as an attribute afterwards).
    """

    def __init__(
        self,
        img_size: int = 256,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_eps: float = LAYER_NORM_EPS,
        out_layers: Sequence[int] | None = None,
        rope_layout: str = "repeat",
        interpolate_rope: bool = False,
        modality_embedding: bool = False,
        img_temporal_dim_size: int | None = None,
        norms_block: bool = False,
        return_hierarchical: bool = False,
    ):
        super().__init__()
        self.img_size, self.num_frames = img_size, num_frames
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.mlp_ratio = mlp_ratio
        self.out_layers = list(out_layers) if out_layers is not None else None
        self.rope_layout, self.interpolate_rope = rope_layout, bool(interpolate_rope)
        self.img_temporal_dim_size = img_temporal_dim_size
        self.return_hierarchical = bool(return_hierarchical)
        if img_temporal_dim_size not in (None, 1):
            raise ValueError(f"img_temporal_dim_size must be None or 1, got {img_temporal_dim_size!r}")
        if interpolate_rope and patch_size not in PRETRAINED_ROPE_GRID:
            raise ValueError(f"interpolate_rope is defined for patch sizes {sorted(PRETRAINED_ROPE_GRID)}, "
                             f"not {patch_size}")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        mlp_hidden_dim = int(embed_dim * mlp_ratio)

        self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, in_chans, embed_dim)
        if img_temporal_dim_size is not None:
            self.patch_embed_img = PatchEmbed3D(patch_size, img_temporal_dim_size, in_chans, embed_dim)
        if modality_embedding:
            self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_hidden_dim, qkv_bias, norm_layer) for _ in range(depth)
        )
        if norms_block:
            self.hierarchical_layers = list(hierarchical_layers_for(depth))
            self.norms_block = nn.ModuleList(norm_layer(embed_dim) for _ in range(NUM_LEVELS))
        else:
            self.hierarchical_layers = list(hierarchical_layers_for(depth))  # 2.0: levels normed by `norm`
            self.norm = norm_layer(embed_dim)
        interpolate_to = PRETRAINED_ROPE_GRID[patch_size] if self.interpolate_rope else None
        self.rope = RopeCache(embed_dim // num_heads, layout=rope_layout, interpolate_to=interpolate_to)

    # --------------------------------------------------------------- what kind of model this is
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def has_norms_block(self) -> bool:
        return hasattr(self, "norms_block")

    @property
    def has_image_path(self) -> bool:
        return self.img_temporal_dim_size is not None

    @property
    def has_modality_embedding(self) -> bool:
        return hasattr(self, "video_mod_embed")

    @property
    def generation(self) -> str:
        """"2.1" with every 2.1 option, "2.0" with none, "custom" for a mix (a hand-built model)."""
        flags = (self.rope_layout == "interleave", self.has_norms_block, self.has_image_path,
                 self.has_modality_embedding, self.interpolate_rope)
        return "2.1" if all(flags) else "2.0" if not any(flags) else "custom"

    @property
    def norm_eps(self) -> float:
        return (self.norms_block[-1] if self.has_norms_block else self.norm).eps

    def uses_image_path(self, frames: int) -> bool:
        """Whether an input of `frames` frames takes the image path (2.1: T == 1)."""
        return self.img_temporal_dim_size is not None and frames == self.img_temporal_dim_size

    def patch_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid (Tp, Hp, Wp) for an input of this size; raises if it does not tile."""
        t = 1 if self.uses_image_path(frames) else self.tubelet_size
        p = self.patch_size
        if frames % t or height % p or width % p or not frames:
            raise ValueError(
                f"input of {frames} frames × {height}×{width} px does not tile into "
                f"{t}-frame × {p}×{p} px patches"
            )
        return frames // t, height // p, width // p

    # --------------------------------------------------------------- outputs
    def level_norm(self, layer: int) -> nn.LayerNorm:
        """The LayerNorm applied to block `layer`'s output when it is returned (2.0: `norm`;
        2.1: the `norms_block` of its hierarchical level, which must be one of the 4)."""
        if not self.has_norms_block:
            return self.norm
        if layer not in self.hierarchical_layers:
            raise ValueError(f"block {layer} is not one of this 2.1 model's hierarchical layers "
                             f"{self.hierarchical_layers}: only those have a norm")
        return self.norms_block[self.hierarchical_layers.index(layer)]

    def resolve_layers(self, layers: Sequence[int]) -> list[int]:
        """Block indices (negative counted from the end) checked against this model's depth/levels."""
        resolved = []
        for i in layers:
            if not -self.depth <= i < self.depth:
                raise ValueError(f"layer {i} is out of range for a depth-{self.depth} model")
            resolved.append(i % self.depth)
        for i in resolved:
            self.level_norm(i)  # raises for a 2.1 block without a level norm
        return resolved

    def forward(self, x: torch.Tensor, out_layers: Sequence[int] | None = None):
        if x.ndim != 5:
            raise ValueError(f"expected input [B, C, T, H, W], got shape {tuple(x.shape)}")
        grid = self.patch_grid(*x.shape[2:])
        cos, sin = self.rope.get(grid, x.device, x.dtype)
        if self.uses_image_path(x.shape[2]):
            x = self.patch_embed_img(x)  # [B, N, D], one temporal token
            if self.has_modality_embedding:
                x = x + self.img_mod_embed
        else:
            x = self.patch_embed(x)  # [B, N, D]
            if self.has_modality_embedding:
                x = x + self.video_mod_embed

        wanted = out_layers if out_layers is not None else self.out_layers
        if wanted is None and not self.return_hierarchical:
            for block in self.blocks:
                x = block(x, cos, sin)
            return self.level_norm(self.depth - 1)(x)
        if wanted is None:  # return_hierarchical: level j = norms_block[j] (or norm) at its block
            norms = self.norms_block if self.has_norms_block else [self.norm] * NUM_LEVELS
            return torch.cat(self._run_to_levels(x, cos, sin, list(zip(self.hierarchical_layers, norms))),
                             dim=-1)  # [B, N, 4·D], shallow → deep
        levels = [(i, self.level_norm(i)) for i in self.resolve_layers(wanted)]
        return self._run_to_levels(x, cos, sin, levels)

    def _run_to_levels(self, x, cos, sin, levels: list[tuple[int, nn.Module]]) -> list[torch.Tensor]:
        """Run the blocks up to the deepest wanted one; each (block, norm) level's normed output."""
        last = max(i for i, _ in levels)
        outputs: list[torch.Tensor | None] = [None] * len(levels)
        for i, block in enumerate(self.blocks[: last + 1]):
            x = block(x, cos, sin)
            for j, (layer, norm) in enumerate(levels):
                if layer == i:
                    outputs[j] = norm(x)
        return outputs

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, depth={self.depth}, num_heads={self.num_heads}, "
            f"mlp_ratio={self.mlp_ratio:.4g}, img_size={self.img_size}, num_frames={self.num_frames}, "
            f"generation={self.generation}"
        )


# ----------------------------------------------------------------------------- factories
# The options that make a 2.1 encoder, as Meta's hub builds the released ones.
V2_1_OPTIONS = dict(rope_layout="interleave", interpolate_rope=True, modality_embedding=True,
                    img_temporal_dim_size=1, norms_block=True)

ARCHITECTURES: dict[str, dict] = {
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0),
    # V-JEPA 2 giant: 22 heads. A 16-head variant loads the same weights but computes wrong features.
    "vit_giant_xformers": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11),
    # The reference factory misspells its mlp-ratio keyword, so the released model uses ratio 4.
    "vit_gigantic_xformers": dict(embed_dim=1664, depth=48, num_heads=26, mlp_ratio=4.0),
    # Not a released model: a few-MB encoder for tests and offline smoke runs.
    "tiny": dict(embed_dim=192, depth=2, num_heads=3, mlp_ratio=4.0),
    # V-JEPA 2.1 (all released at 384 px). Gigantic's MLP is 8192 wide here (the 2.0 typo is fixed).
    "vjepa2_1_vit_base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, **V2_1_OPTIONS),
    "vjepa2_1_vit_large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, **V2_1_OPTIONS),
    "vjepa2_1_vit_giant": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11, **V2_1_OPTIONS),
    "vjepa2_1_vit_gigantic": dict(embed_dim=1664, depth=48, num_heads=26, mlp_ratio=64 / 13, **V2_1_OPTIONS),
    "vjepa2_1_tiny": dict(embed_dim=192, depth=4, num_heads=3, mlp_ratio=4.0, **V2_1_OPTIONS),
}
# Nominal crop of each family's released checkpoints (2.1 files are all `_384`).
DEFAULT_IMG_SIZE = {name: 384 if name.startswith("vjepa2_1_") else 256 for name in ARCHITECTURES}


def _create_vision_transformer(arch: str, img_size: int | None, num_frames: int, overrides: dict) -> VisionTransformer:
    args = {**ARCHITECTURES[arch], **overrides}
    return VisionTransformer(img_size=img_size or DEFAULT_IMG_SIZE[arch], num_frames=num_frames, **args)


def vit_large(img_size: int = 256, num_frames: int = 16, **overrides) -> VisionTransformer:
    return _create_vision_transformer("vit_large", img_size, num_frames, overrides)


def vit_huge(img_size: int = 256, num_frames: int = 16, **overrides) -> VisionTransformer:
    return _create_vision_transformer("vit_huge", img_size, num_frames, overrides)


def vit_giant_xformers(img_size: int = 256, num_frames: int = 16, **overrides) -> VisionTransformer:
    return _create_vision_transformer("vit_giant_xformers", img_size, num_frames, overrides)


def vit_gigantic_xformers(img_size: int = 256, num_frames: int = 16, **overrides) -> VisionTransformer:
    return _create_vision_transformer("vit_gigantic_xformers", img_size, num_frames, overrides)


def vit_tiny(img_size: int = 256, num_frames: int = 16, **overrides) -> VisionTransformer:
    return _create_vision_transformer("tiny", img_size, num_frames, overrides)


def vjepa2_1_vit_base(img_size: int = 384, num_frames: int = 16, **overrides) -> VisionTransformer:
    return _create_vision_transformer("vjepa2_1_vit_base", img_size, num_frames, overrides)


def vjepa2_1_vit_large(img_size: int = 384, num_frames: int = 16, **overrides) -> VisionTransformer:
    return _create_vision_transformer("vjepa2_1_vit_large", img_size, num_frames, overrides)


def vjepa2_1_vit_giant(img_size: int = 384, num_frames: int = 16, **overrides) -> VisionTransformer:
    return _create_vision_transformer("vjepa2_1_vit_giant", img_size, num_frames, overrides)


def vjepa2_1_vit_gigantic(img_size: int = 384, num_frames: int = 16, **overrides) -> VisionTransformer:
    return _create_vision_transformer("vjepa2_1_vit_gigantic", img_size, num_frames, overrides)


def vjepa2_1_tiny(img_size: int = 384, num_frames: int = 16, **overrides) -> VisionTransformer:
    return _create_vision_transformer("vjepa2_1_tiny", img_size, num_frames, overrides)


# The original release names its RoPE encoders with a `_rope` suffix; the demo imports these.
vit_large_rope = vit_large
vit_huge_rope = vit_huge
vit_giant_xformers_rope = vit_giant_xformers
vit_gigantic_xformers_rope = vit_gigantic_xformers

FACTORIES: dict[str, Callable[..., VisionTransformer]] = {
    "vit_large": vit_large,
    "vit_huge": vit_huge,
    "vit_giant_xformers": vit_giant_xformers,
    "vit_gigantic_xformers": vit_gigantic_xformers,
    "tiny": vit_tiny,
    "vjepa2_1_vit_base": vjepa2_1_vit_base,
    "vjepa2_1_vit_large": vjepa2_1_vit_large,
    "vjepa2_1_vit_giant": vjepa2_1_vit_giant,
    "vjepa2_1_vit_gigantic": vjepa2_1_vit_gigantic,
    "vjepa2_1_tiny": vjepa2_1_tiny,
}
for _name in list(FACTORIES):
    if _name.startswith("vit_"):
        FACTORIES[_name + "_rope"] = FACTORIES[_name]
    elif _name.startswith("vjepa2_1_vit_"):
        FACTORIES[_name + "_384"] = FACTORIES[_name]  # the hub entry points' names


def count_forward_flops(model: VisionTransformer, frames: int, height: int, width: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass for one clip: matmuls and attention."""
    n = math.prod(model.patch_grid(frames, height, width))
    d, hidden = model.embed_dim, int(model.embed_dim * model.mlp_ratio)
    tubelet = 1 if model.uses_image_path(frames) else model.tubelet_size
    patch = 2 * n * d * 3 * tubelet * model.patch_size**2
    per_block = 2 * n * d * (3 * d + d + 2 * hidden) + 2 * 2 * n * n * d
    return float(patch + model.depth * per_block)
