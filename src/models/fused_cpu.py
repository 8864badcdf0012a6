"""oneDNN linears with a fused epilogue (bias, GELU, residual add) for CPU inference.

These are the kernels torch.compile's CPU backend emits. On CPU, in fp32 and without autograd,
each Linear of a block runs as one oneDNN call instead of bias-copy + GEMM (+ GELU / + residual
add) passes over the output.
"""
from __future__ import annotations

import torch
import torch.nn as nn

# Set to False to get the plain nn.Linear path everywhere (bench/ablation.py does, to measure the
# effect). Per model, `src.models.kernel_choice` picks the path this machine runs faster.
FUSED_CPU_LINEAR = True


def _onednn_linear_ops():
    try:
        return torch.ops.mkldnn._linear_pointwise.default, torch.ops.mkldnn._linear_pointwise.binary
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return None


ONEDNN_LINEAR = _onednn_linear_ops() if torch.backends.mkldnn.is_available() else None


def onednn_available() -> bool:
    """Whether this torch build has the fused oneDNN linears (and they are not switched off)."""
    return FUSED_CPU_LINEAR and ONEDNN_LINEAR is not None


def use_fused_linear(x: torch.Tensor) -> bool:
    """Whether the oneDNN fused path applies to activations `x` (CPU, fp32, no autograd).

    Not under torch.compile: inductor cannot lower these ops given plain weights, and it does
    its own fusion of the nn.Linear path.
    """
    return (FUSED_CPU_LINEAR and ONEDNN_LINEAR is not None and x.device.type == "cpu"
            and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.compiler.is_compiling())


def fused_linear(x: torch.Tensor, linear: nn.Linear, activation: str = "none") -> torch.Tensor:
    """`linear(x)`, then GELU (erf) if `activation == "gelu"`, as one oneDNN call (CPU fp32)."""
    return ONEDNN_LINEAR[0](x, linear.weight, linear.bias, activation, [], "none" if activation == "gelu" else "")


def fused_linear_add(x: torch.Tensor, linear: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """`residual + linear(x)` as one oneDNN call (CPU fp32)."""
    return ONEDNN_LINEAR[1](x, residual, linear.weight, linear.bias, "add")
