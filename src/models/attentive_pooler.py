"""Attentive probe of V-JEPA 2: self-attention blocks, then one learned query cross-attends.

Semantics and state-dict keys follow the original release (`pooler.query_tokens`,
`pooler.blocks.N.*`, `pooler.cross_attention_block.{norm1,xattn.q,xattn.kv,norm2,mlp.*}`,
`linear`). Released probes: 16 heads, depth 4, mlp ratio 4, LayerNorm eps 1e-5.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models.layers import Block, Mlp

PROBE_NORM_EPS = 1e-5


class CrossAttention(nn.Module):
    """Queries attend to tokens; no output projection (as in the original probe)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, n, D = q.shape
        N = x.shape[1]
        q = self.q(q).view(B, n, self.num_heads, self.head_dim).transpose(1, 2)  # [B, heads, n, hd]
        k, v = self.kv(x).view(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, n, hd]
        return out.transpose(1, 2).reshape(B, n, D)


class CrossAttentionBlock(nn.Module):
    """q = q + xattn(q, norm1(x)); q = q + mlp(norm2(q)). Only keys/values are normalised."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.xattn = CrossAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


class AttentivePooler(nn.Module):
    """`depth - 1` self-attention blocks over the tokens, then a cross-attention block.

    Args:
        num_queries: learned query tokens (pooled outputs).
        embed_dim: token width.
        num_heads: attention heads (16 in every released probe, also for giant encoders).
        mlp_ratio: MLP hidden width ratio.
        depth: total blocks including the cross-attention block.
        qkv_bias: bias on q/k/v projections.
        norm_eps: LayerNorm epsilon (1e-5 in the released probes).
    """

    def __init__(
        self,
        num_queries: int = 1,
        embed_dim: int = 1024,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        depth: int = 4,
        qkv_bias: bool = True,
        norm_eps: float = PROBE_NORM_EPS,
    ):
        super().__init__()
        self.query_tokens = nn.Parameter(torch.zeros(1, num_queries, embed_dim))
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, int(embed_dim * mlp_ratio), qkv_bias, norm_layer) for _ in range(depth - 1)
        )
        self.cross_attention_block = CrossAttentionBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)  # no RoPE in the probe
        q = self.query_tokens.expand(x.shape[0], -1, -1)
        return self.cross_attention_block(q, x)  # [B, num_queries, D]


class AttentiveClassifier(nn.Module):
    """Attentive pooler with one query, then a linear layer: tokens `[B, N, D]` → logits `[B, C]`."""

    def __init__(
        self,
        embed_dim: int = 1024,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        depth: int = 4,
        num_classes: int = 174,
        qkv_bias: bool = True,
        norm_eps: float = PROBE_NORM_EPS,
    ):
        super().__init__()
        self.embed_dim, self.num_classes = embed_dim, num_classes
        self.pooler = AttentivePooler(
            num_queries=1,
            embed_dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            depth=depth,
            qkv_bias=qkv_bias,
            norm_eps=norm_eps,
        )
        self.linear = nn.Linear(embed_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pooler(x).squeeze(1))
