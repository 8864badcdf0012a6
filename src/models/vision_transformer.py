"""V-JEPA 2 / 2.1 video encoder: a ViT over 3D patches (tubelets) with 3D rotary position embeddings.

One configurable `VisionTransformer` covers both generations through explicit options, plus
Meta's factory names for the released families (built from `src.models.registry`): 2.0
(`vit_large`, `vit_huge`, `vit_giant_xformers`, `vit_gigantic_xformers` and their `_rope` aliases)
and 2.1 (`vjepa2_1_vit_base` … `_gigantic`). What 2.1 changes (see the README's 2.1 section):
interleaved RoPE frequencies, RoPE positions rescaled onto the 16×16 pre-training grid, modality
embeddings, a 1-frame image patch embedding used when T == 1, and four per-level LayerNorms
(`norms_block`) instead of one `norm`. State-dict keys follow Meta's original checkpoints
(`patch_embed.proj`, `patch_embed_img.proj`, `{video,img}_mod_embed`,
`blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`, `norm` or `norms_block.{0..3}`).

Outputs: `forward(x, masks=None, out_layers=None)` is Meta's call site; `forward_features(x,
layers)` gives the last layer, the 4 hierarchical levels or chosen blocks as one tensor, and
`forward_intermediates(x, layers)` the normed block outputs as a list. Nothing about what the
model returns is changed by setting attributes from outside.

No I/O, no argument parsing: weight loading lives in `src/models/weights/`.
"""
from __future__ import annotations

import math
import warnings
from functools import partial
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from src.models.layers import Block, PatchEmbed3D
from src.models.registry import build_factories
# re-exported: the architecture table is read from this module by code written against it
from src.models.registry import ARCHITECTURES, DEFAULT_IMG_SIZE, V2_1_OPTIONS  # noqa: F401
from src.models.rope import RopeCache

LAYER_NORM_EPS = 1e-6

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
        return_hierarchical: `forward(x)` returns the 4 levels concatenated on channels
            `[B, N, 4·D]` (2.1's `return_hierarchical`). Fixed at construction: to get other
            outputs from a built model call `forward_features(x, "hierarchical")` or
            `forward_intermediates(x, layers)`.

    Meta's constructor arguments, accepted by name so its call sites run unchanged:
        use_rope: 3D RoPE (default here, as every released V-JEPA 2 encoder; Meta's own default
            is False). False: a learned absolute `pos_embed` `[1, N, D]` for the nominal grid,
            resized for other grids as the original does (V-JEPA 1 and other non-RoPE models).
        handle_nonsquare_inputs: True (default): RoPE positions from each input's patch grid.
            False: the original's older behaviour, positions read against the nominal square grid.
        qk_scale: attention scale (None: head_dim^-0.5).
        norm_layer: constructor of every LayerNorm (e.g. `partial(nn.LayerNorm, eps=1e-6)`);
            overrides `norm_eps`.
        init_std: initialise weights as the original (truncated normal of this std, output
            projections rescaled by depth); None keeps PyTorch's defaults. Only random models care.
        uniform_power, use_sdpa, wide_silu: accepted; they change nothing here (the sincos
            initial table, the attention kernel, SwiGLU width: not used or equivalent).
        use_silu: only False (the released encoders use GELU); True raises.
        drop_rate, attn_drop_rate, drop_path_rate: accepted; this encoder is for inference,
            where they are identities (a non-zero value warns that training would ignore it).
        use_activation_checkpointing: recompute blocks in the backward pass (saves memory
            when gradients flow through the encoder).
        pos_embed_grid: (Tp, Hp, Wp) the `pos_embed` table was made for (default: the nominal
            grid from num_frames and img_size); set by the loader from a checkpoint's table.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 256,
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
        use_rope: bool = True,
        handle_nonsquare_inputs: bool = True,
        qk_scale: float | None = None,
        norm_layer: Callable[[int], nn.Module] | None = None,
        init_std: float | None = None,
        uniform_power: bool = False,
        use_sdpa: bool = True,
        use_silu: bool = False,
        wide_silu: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        use_activation_checkpointing: bool = False,
        pos_embed_grid: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        if use_silu:
            raise ValueError("use_silu=True (a SiLU/SwiGLU MLP) is not implemented: the released V-JEPA 2 "
                             "encoders use GELU")
        if not use_rope and (rope_layout != "repeat" or interpolate_rope or norms_block or img_temporal_dim_size):
            raise ValueError("use_rope=False cannot be combined with V-JEPA 2.1 options (2.1 encoders use RoPE)")
        if max(drop_rate, attn_drop_rate, drop_path_rate) > 0:
            warnings.warn("drop_rate/attn_drop_rate/drop_path_rate are not applied: this encoder is for inference, "
                          "where they are identities", stacklevel=2)
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.img_size = height if height == width else (height, width)
        self.num_frames = num_frames
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.mlp_ratio = mlp_ratio
        self.out_layers = list(out_layers) if out_layers is not None else None
        self.rope_layout, self.interpolate_rope = rope_layout, bool(interpolate_rope)
        self.img_temporal_dim_size = img_temporal_dim_size
        self._return_hierarchical = bool(return_hierarchical)
        self.use_rope, self.handle_nonsquare_inputs = bool(use_rope), bool(handle_nonsquare_inputs)
        self.qk_scale, self.init_std, self.uniform_power = qk_scale, init_std, uniform_power
        self.use_activation_checkpointing = bool(use_activation_checkpointing)
        if img_temporal_dim_size not in (None, 1):
            raise ValueError(f"img_temporal_dim_size must be None or 1, got {img_temporal_dim_size!r}")
        if interpolate_rope and patch_size not in PRETRAINED_ROPE_GRID:
            raise ValueError(f"interpolate_rope is defined for patch sizes {sorted(PRETRAINED_ROPE_GRID)}, "
                             f"not {patch_size}")
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=norm_eps)
        mlp_hidden_dim = int(embed_dim * mlp_ratio)

        self.patch_embed = PatchEmbed3D(patch_size, tubelet_size, in_chans, embed_dim)
        if img_temporal_dim_size is not None:
            self.patch_embed_img = PatchEmbed3D(patch_size, img_temporal_dim_size, in_chans, embed_dim)
        if modality_embedding:
            self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if not use_rope:  # the stored table is what matters; it starts at zero (load a checkpoint)
            self.pos_embed_grid = tuple(pos_embed_grid or (num_frames // tubelet_size, height // patch_size,
                                                           width // patch_size))
            self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(self.pos_embed_grid), embed_dim),
                                          requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_hidden_dim, qkv_bias, norm_layer, qk_scale=qk_scale) for _ in range(depth)
        )
        if norms_block:
            self.hierarchical_layers = list(hierarchical_layers_for(depth))
            self.norms_block = nn.ModuleList(norm_layer(embed_dim) for _ in range(NUM_LEVELS))
        else:
            self.hierarchical_layers = list(hierarchical_layers_for(depth))  # 2.0: levels normed by `norm`
            self.norm = norm_layer(embed_dim)
        interpolate_to = PRETRAINED_ROPE_GRID[patch_size] if self.interpolate_rope else None
        row_grid = None if handle_nonsquare_inputs else (height // patch_size, height // patch_size)
        self.rope = RopeCache(embed_dim // num_heads, layout=rope_layout, interpolate_to=interpolate_to,
                              row_grid=row_grid)
        if init_std is not None:
            self._init_weights(init_std)

    def _init_weights(self, std: float) -> None:
        """The original's initialisation: truncated-normal weights, zero biases, unit LayerNorms,
        and each block's output projections divided by sqrt(2·layer) (layer from 1)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            for layer, block in enumerate(self.blocks, start=1):
                block.attn.proj.weight.div_(math.sqrt(2.0 * layer))
                block.mlp.fc2.weight.div_(math.sqrt(2.0 * layer))

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
        """"2.1" with every 2.1 option, "2.0" with none, "1" for a `pos_embed` (no RoPE) model such
        as V-JEPA 1's, "custom" for a mix (a hand-built model)."""
        flags = (self.rope_layout == "interleave", self.has_norms_block, self.has_image_path,
                 self.has_modality_embedding, self.interpolate_rope)
        if not self.use_rope:
            return "1"
        return "2.1" if all(flags) else "2.0" if not any(flags) else "custom"

    @property
    def return_hierarchical(self) -> bool:
        return self._return_hierarchical

    @return_hierarchical.setter
    def return_hierarchical(self, value) -> None:
        # Meta's code flips this attribute; here what the model returns is asked for per call
        raise AttributeError("return_hierarchical is fixed at construction; call "
                             "model.forward_features(x, 'hierarchical') for the 4 levels concatenated")

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

    def pos_embed_for(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """The `pos_embed` table for a token grid, as the original resizes it: as stored for its own
        grid; its first frames' rows for fewer frames at the same size; otherwise trilinear
        interpolation over (T, H, W) with scale factors new/stored per axis."""
        nt, nh, nw = self.pos_embed_grid
        tp, hp, wp = grid
        table = self.pos_embed
        if (hp, wp) == (nh, nw) and tp <= nt:
            return table[:, : tp * hp * wp]
        dim = table.shape[-1]
        volume = table.reshape(1, nt, nh, nw, dim).permute(0, 4, 1, 2, 3)  # [1, D, Tn, Hn, Wn]
        volume = F.interpolate(volume, scale_factor=(tp / nt, hp / nh, wp / nw), mode="trilinear")
        if tuple(volume.shape[2:]) != tuple(grid):  # float scale factors can round a size down
            volume = F.interpolate(table.reshape(1, nt, nh, nw, dim).permute(0, 4, 1, 2, 3), size=grid,
                                   mode="trilinear")
        return volume.permute(0, 2, 3, 4, 1).reshape(1, -1, dim)  # [1, N, D]

    def forward(self, x: torch.Tensor, masks: torch.Tensor | Sequence[torch.Tensor] | None = None,
                out_layers: Sequence[int] | None = None):
        """Meta's call site. Features of `x` `[B, C, T, H, W]`: `[B, N, D]`; with `out_layers` (here
        or at construction) a list of the normed outputs of those blocks; built with
        `return_hierarchical=True`, the 4 levels concatenated `[B, N, 4·D]`.

        masks: token indices to KEEP, `[B, K]` or a list of them (the original's semantics): the
            kept tokens are gathered after the patch (and position) embedding and keep their grid
            positions in RoPE; a list of M masks gives a batch of M·B, mask by mask.
        """
        wanted = out_layers if out_layers is not None else self.out_layers
        if wanted is not None:
            return self.forward_intermediates(x, wanted, masks=masks)
        return self.forward_features(x, "hierarchical" if self._return_hierarchical else "last", masks=masks)

    def forward_features(self, x: torch.Tensor, layers: str | Sequence[int] = "last",
                         masks: torch.Tensor | Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """One tensor `[B, N, k·D]`: the normed outputs of `layers` (see `output_levels`)
        concatenated on channels in order; "last" is the default output `[B, N, D]`."""
        outputs = self.forward_intermediates(x, layers, masks=masks)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)

    def forward_intermediates(self, x: torch.Tensor, layers: str | Sequence[int] = "hierarchical",
                              masks: torch.Tensor | Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The normed outputs `[B, N, D]` of `layers` (see `output_levels`), in that order."""
        cos, sin = self.rope_tables_for(x)
        return self.forward_levels(x, cos, sin, self.output_levels(layers), masks)

    def output_levels(self, layers: str | Sequence[int]) -> list[tuple[int, nn.Module]]:
        """(block index, LayerNorm) of each output: "last" the last block through the default
        norm; "hierarchical" the 4 levels, level j through `norms_block[j]` (2.0: `norm`), shallow
        → deep; block indices (negative from the end) each through its `level_norm`."""
        if layers == "last":
            return [(self.depth - 1, self.level_norm(self.depth - 1))]
        if layers == "hierarchical":
            norms = self.norms_block if self.has_norms_block else [self.norm] * NUM_LEVELS
            return list(zip(self.hierarchical_layers, norms))
        if isinstance(layers, str):
            raise ValueError(f"layers must be 'last', 'hierarchical' or block indices, got {layers!r}")
        return [(i, self.level_norm(i)) for i in self.resolve_layers(layers)]

    def rope_tables_for(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """RoPE cos/sin tables for an input `[B, C, T, H, W]` (None, None without RoPE); checks
        the input's shape. Built once per grid, device and dtype (`RopeCache`)."""
        if x.ndim != 5:
            raise ValueError(f"expected input [B, C, T, H, W], got shape {tuple(x.shape)}")
        grid = self.patch_grid(*x.shape[2:])
        return self.rope.get(grid, x.device, x.dtype) if self.use_rope else (None, None)

    def forward_levels(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                       levels: list[tuple[int, nn.Module]],
                       masks: torch.Tensor | Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Embed `x` `[B, C, T, H, W]`, run the blocks with the given RoPE tables (from
        `rope_tables_for`) up to the deepest of `levels` (from `output_levels`); each level's output."""
        if self.uses_image_path(x.shape[2]):
            tokens = self.patch_embed_img(x)  # [B, N, D], one temporal token
            if self.has_modality_embedding:
                tokens = tokens + self.img_mod_embed
        else:
            tokens = self.patch_embed(x)  # [B, N, D]
            if self.has_modality_embedding:
                tokens = tokens + self.video_mod_embed
        if not self.use_rope:
            tokens = tokens + self.pos_embed_for(self.patch_grid(*x.shape[2:])).to(tokens.dtype)
        if masks is not None:
            tokens, cos, sin = self._keep_tokens(tokens, masks, cos, sin)
        return self._run_to_levels(tokens, cos, sin, levels)

    @staticmethod
    def _keep_tokens(x, masks, cos, sin):
        """Gather the kept tokens of each mask (`[B, K]` indices) and their RoPE rows."""
        masks = list(masks) if isinstance(masks, (list, tuple)) else [masks]
        for m in masks:
            if m.ndim != 2 or m.shape[0] != x.shape[0]:
                raise ValueError(f"a mask must be [B, K] token indices with B = {x.shape[0]}, got {tuple(m.shape)}")
        keep = torch.cat([m.to(x.device, torch.long) for m in masks], dim=0)  # [M·B, K]
        x = torch.cat([x.gather(1, m.to(x.device, torch.long)[..., None].expand(-1, -1, x.shape[-1]))
                       for m in masks], dim=0)  # [M·B, K, D]
        if cos is not None:
            cos, sin = cos[keep].unsqueeze(1), sin[keep].unsqueeze(1)  # [M·B, 1, K, 3s]: per-sample positions
        return x, cos, sin

    def _block(self, block: Block, x, cos, sin):
        if self.use_activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, cos, sin, use_reentrant=False)
        return block(x, cos, sin)

    def _run_to_levels(self, x, cos, sin, levels: list[tuple[int, nn.Module]]) -> list[torch.Tensor]:
        """Run the blocks up to the deepest wanted one; each (block, norm) level's normed output."""
        last = max(i for i, _ in levels)
        outputs: list[torch.Tensor | None] = [None] * len(levels)
        for i, block in enumerate(self.blocks[: last + 1]):
            x = self._block(block, x, cos, sin)
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


# ----------------------------------------------------------------------------- Meta's factory names
FACTORIES: dict[str, Callable[..., VisionTransformer]] = build_factories(VisionTransformer)
# 2.0 names. Unlike Meta's, these default to use_rope=True, as every released V-JEPA 2 encoder;
# pass use_rope=False for a pos_embed model. The `_rope` names are the same factories.
vit_tiny, vit_small, vit_base = FACTORIES["vit_tiny"], FACTORIES["vit_small"], FACTORIES["vit_base"]
vit_large, vit_huge, vit_giant = FACTORIES["vit_large"], FACTORIES["vit_huge"], FACTORIES["vit_giant"]
vit_giant_xformers, vit_gigantic = FACTORIES["vit_giant_xformers"], FACTORIES["vit_gigantic"]
vit_gigantic_xformers = FACTORIES["vit_gigantic_xformers"]
vit_large_rope, vit_huge_rope, vit_giant_rope = vit_large, vit_huge, vit_giant
vit_giant_xformers_rope, vit_gigantic_xformers_rope = vit_giant_xformers, vit_gigantic_xformers
# 2.1 (Meta's hub entry-point names; the `_384` names are in FACTORIES)
vjepa2_1_vit_base, vjepa2_1_vit_large = FACTORIES["vjepa2_1_vit_base"], FACTORIES["vjepa2_1_vit_large"]
vjepa2_1_vit_giant, vjepa2_1_vit_gigantic = FACTORIES["vjepa2_1_vit_giant"], FACTORIES["vjepa2_1_vit_gigantic"]
vjepa2_1_tiny, tiny = FACTORIES["vjepa2_1_tiny"], FACTORIES["tiny"]
