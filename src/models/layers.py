"""The encoder's building blocks: tubelet patch embedding, attention with 3-D RoPE, MLP, block.

State-dict keys follow Meta's originals (`proj`, `qkv`, `fc1`, `fc2`, `norm1`, `norm2`).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models.fused_cpu import fused_linear, fused_linear_add, use_fused_linear
from src.models.rope import apply_rope


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

    cpu_fused = True  # the oneDNN fused linears where they apply (see src.models.kernel_choice)

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, scale: float | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = scale  # None: head_dim^-0.5 (the original's qk_scale=None)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                residual: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of `x` `[B, N, D]`; with `residual`, returns `residual + attention` (fused on CPU)."""
        B, N, D = x.shape
        fused = self.cpu_fused and use_fused_linear(x)
        qkv = fused_linear(x, self.qkv) if fused else self.qkv(x)
        # views, no copies: q, k, v keep qkv's memory ([B, N, 3, heads, head_dim] permuted)
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)  # new, contiguous q and k
        if x.device.type == "cpu":
            # the CPU flash kernel reads contiguous q, k, v 10-15 % faster than views into qkv (61 against
            # 68 ms with a strided v, 70 with all three strided, at 16 × 2048 × 64); a copy costs ~1 ms
            # (none for q and k after RoPE) and the outputs are identical
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # [B, heads, N, hd]
        x = x.transpose(1, 2).reshape(B, N, D)  # [B, heads, N, hd] → [B, N, D]: the one copy
        if residual is None:
            return self.proj(x)
        return fused_linear_add(x, self.proj, residual) if fused else residual + self.proj(x)


class Mlp(nn.Module):
    cpu_fused = True  # as Attention.cpu_fused

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """MLP of `x`; with `residual`, returns `residual + mlp(x)` (fused on CPU)."""
        if self.cpu_fused and use_fused_linear(x) and isinstance(self.act, nn.GELU) and self.act.approximate == "none":
            h = fused_linear(x, self.fc1, "gelu")
            return self.fc2(h) if residual is None else fused_linear_add(h, self.fc2, residual)
        out = self.fc2(self.act(self.fc1(x)))
        return out if residual is None else residual + out


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int, qkv_bias: bool, norm_layer: Callable,
                 qk_scale: float | None = None):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, scale=qk_scale)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, mlp_hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn(self.norm1(x), cos, sin, residual=x)  # x + attn(norm1(x))
        return self.mlp(self.norm2(x), residual=x)  # x + mlp(norm2(x))
