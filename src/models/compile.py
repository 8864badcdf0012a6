"""`VisionTransformer.forward_features` through `torch.compile`: one graph, compiled once per run.

- The RoPE tables are looked up eagerly (`model.rope_tables_for`, a dict cache) and passed into
  the graph as inputs: the compiled region holds no Python cache for Dynamo to guard on.
- The whole encoder is one graph (`fullgraph=True`: a graph break is an error, not a silent
  split; RoPE takes its out-of-place formula under compilation, see `rope.apply_rope`).
- The batch size of the first call is the compiled one: a smaller batch (a run's last, partial
  one) is padded with zeros and the padding rows dropped, a bigger one runs in chunks, so a run
  never recompiles for its batch size. Samples are encoded independently (attention and
  LayerNorm never mix two clips), so padding changes no real row.
- If compiling or running the graph fails, one warning is logged and every later call runs
  eagerly: `--compile` never costs a run.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch

from src.models.vision_transformer import VisionTransformer

logger = logging.getLogger(__name__)


class CompiledForward:
    """Called like `model.forward_features(x, layers)`; the module itself stays uncompiled
    (its attributes and state_dict keys unchanged).

    Args:
        model: the encoder.
        backend: torch.compile backend ("inductor"; tests pass a counting or failing one).
        mode: torch.compile mode (None: the default).
    """

    def __init__(self, model: VisionTransformer, backend="inductor", mode: str | None = None):
        self.model = model
        self.batch_size: int | None = None  # fixed by the first call
        self.failed = False
        self.graph_fn = torch.compile(self.trunk, backend=backend, mode=mode, fullgraph=True, dynamic=False)

    def trunk(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
              layers: str | tuple[int, ...]) -> torch.Tensor:
        """What is compiled: embedding, blocks and level norms for given RoPE tables `[N, 3s]`."""
        outputs = self.model.forward_levels(x, cos, sin, self.model.output_levels(layers))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)  # [B, N, k·D]

    def __call__(self, x: torch.Tensor, layers: str | Sequence[int] = "last") -> torch.Tensor:
        if self.failed:
            return self.model.forward_features(x, layers)
        layers = layers if isinstance(layers, str) else tuple(layers)
        cos, sin = self.model.rope_tables_for(x)  # eager; raises for a bad input shape
        if self.batch_size is None:
            self.batch_size = x.shape[0]
        if not x.is_contiguous() or x.is_inference() != torch.is_inference_mode_enabled():
            # one kind of input tensor for the graph's guards (strides; inference tensor or not,
            # as padding and chunks made here will be): a copy of the clip, small next to the encoder
            x = x.clone(memory_format=torch.contiguous_format)
        try:
            return self._run(x, cos, sin, layers)
        except Exception as exc:  # inductor/compiler failures of every kind: run eagerly instead
            self.failed = True
            root = getattr(exc, "inner_exception", None) or exc.__cause__ or exc  # Dynamo wraps the backend's error
            reason = (str(root).strip().splitlines() or [""])[0][:300]
            logger.warning("torch.compile failed (%s%s: %s); running the encoder eagerly from here on",
                           type(exc).__name__, f" from {type(root).__name__}" if root is not exc else "", reason)
            return self.model.forward_features(x, layers)

    def _run(self, x, cos, sin, layers):
        size, batch = x.shape[0], self.batch_size
        if size == batch:
            return self.graph_fn(x, cos, sin, layers)
        if size < batch:  # [batch, C, T, H, W]: zero rows after the real ones
            padded = torch.cat([x, x.new_zeros((batch - size, *x.shape[1:]))], dim=0)
            return self.graph_fn(padded, cos, sin, layers)[:size]
        return torch.cat([self._run(chunk, cos, sin, layers) for chunk in x.split(batch)], dim=0)
