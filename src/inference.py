"""A loaded encoder with its preprocessing, device and dtype: uint8 clips in, fp16 features out.

Both extractors use this, so the crop size, token grid and model description come from one
place (the model actually loaded), never from hard-coded numbers.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np
import torch

from src.device import resolve_device, resolve_dtype, set_tf32
from src.errors import ConfigError
from src.models.compile import CompiledForward
from src.models.kernel_choice import choose_cpu_linear
from src.models.weights import load_encoder, model_info
from src.datasets.utils.video.transforms import normalize_uint8_clips
from src.options import EncoderOptions
from src.spatial import SpatialPlan

logger = logging.getLogger(__name__)


LAYER_CHOICES = ("last", "hierarchical")


class FeatureOverflowError(ConfigError):
    """Features came out inf/NaN (fp16 compute overflows at 65504 inside a deep ViT): the run stops
    before anything of that batch is stored (exit 2: rerun with --dtype bf16 or fp32)."""


def parse_layers(text: str) -> str | list[int]:
    """`--layers` value: "last", "hierarchical" or block indices "2,5,8,11" (negative from the end)."""
    text = str(text).strip()
    if text in LAYER_CHOICES:
        return text
    try:
        layers = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers {text!r}: use 'last', 'hierarchical' or block indices such as 2,5,8,11") from None
    if len(set(layers)) != len(layers):
        raise ValueError(f"--layers {text!r}: a block is listed twice")
    return layers


def stored_layers(info: dict) -> str | list[int]:
    """What a feature file's `model_info` says was stored, for resume checks: "last" (also for
    files from before `--layers`), "hierarchical", or the block indices."""
    output = info.get("output", "last")
    return output if output in LAYER_CHOICES else list(info.get("layers") or [])


def to_device_keep_broadcast(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`x.to(device, dtype, non_blocking=True)`, keeping expanded (stride-0) dimensions expanded;
    uint8 clips are moved as uint8 and normalised on the device (`normalize_uint8_clips`).

    A copy to another device makes its source contiguous first, so an image `expand`ed to 16
    frames would be materialised on the host and sent 16 times (and a dtype cast converts every
    copy). Here only one slice of each broadcast dimension is moved/cast; the result is expanded
    again on the device (same values; the patch embedding materialises it there).
    """
    def move(t: torch.Tensor) -> torch.Tensor:
        if t.dtype == torch.uint8:  # a quarter of the bytes over the bus; the same values as on the CPU
            return normalize_uint8_clips(t.to(device, non_blocking=True), dtype)
        return t.to(device, dtype=dtype, non_blocking=True)

    broadcast = [d for d in range(x.ndim) if x.stride(d) == 0 and x.shape[d] > 1]
    if not broadcast:
        return move(x)
    compact = x
    for d in broadcast:
        compact = compact.narrow(d, 0, 1)
    return move(compact).expand(x.shape)


class ClipEncoder:
    """Encoder + eval transform. `encode` takes preprocessed `[B, C, T, H, W]` clips on the CPU: the
    uint8 crops of `transform` (what the DataLoaders carry: a quarter of the bytes of float32 through
    shared memory; normalised on the device) or normalised float32 ones (`preprocess`).

    Args:
        options: an `EncoderOptions` (model spec, device, dtype, crop, layers, spatial, ...), or the
            model spec, with the options' other fields as keywords (`ClipEncoder("random:tiny",
            device="cpu", img_size=32)`; a misspelled field is a TypeError). `layers`: "last" (the
            model's default output), "hierarchical" (the 4 levels concatenated on channels, 4·D:
            2.1's `return_hierarchical`; for 2.0 the same blocks through its one `norm`) or block
            indices (`out_layers` semantics: each normed as the generation does it, concatenated on
            channels in the given order).
    """

    def __init__(self, options: EncoderOptions | str, *, load_weights: bool = True, **fields):
        if isinstance(options, str):
            options = EncoderOptions(model=options, **fields)
        elif fields:
            options = dataclasses.replace(options, **fields)
        self.options = options
        spec, img_size, spatial = options.model, options.img_size, options.spatial
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        if self.device.type == "cpu" and self.dtype != torch.float32:
            logger.warning("%s on CPU is usually slower than fp32 here; use --dtype fp32 for speed", self.dtype)
        self.spec = spec
        if self.device.type == "cuda" and self.device.index is not None:
            # the current device is where DataLoader pin-memory threads and un-indexed CUDA calls
            # land: make it ours, or every shard of a torchrun/srun job also opens a context on GPU 0
            torch.cuda.set_device(self.device)
        set_tf32(options.tf32, self.device)  # opt-in; on a CPU it only warns
        # load_weights=False: the architecture alone until `load_weights()` or the first `encode` (a run
        # whose windows are all finished plans, checks and describes itself without reading a weight)
        self._model = self._load_model(weights=load_weights)
        self.weights_loaded = load_weights
        layers = options.layers
        self.layers = parse_layers(layers) if isinstance(layers, str) else [int(i) for i in layers]
        if self.layers == "hierarchical":
            self.layer_indices = list(self._model.hierarchical_layers)
        elif self.layers == "last":
            self.layer_indices = [self._model.depth - 1]
        else:
            self.layer_indices = self._model.resolve_layers(self.layers)  # raises for blocks the model lacks
        self._warned_nonfinite = False
        self.compiled = bool(options.compile)
        # CPU fp32 eager: fused or plain linears, chosen on the first batch's real token count
        self._cpu_linear_pending = (self.device.type == "cpu" and self.dtype == torch.float32
                                    and not self.compiled)
        if options.cpu_linear != "auto" and not self._cpu_linear_pending:
            logger.warning("--cpu_linear %s is ignored: it applies to eager fp32 runs on the CPU (this one: %s on "
                           "%s%s)", options.cpu_linear, str(self.dtype).removeprefix("torch."), self.device,
                           ", compiled" if self.compiled else "")
        self.cpu_linear: dict | None = None
        # The module itself stays uncompiled (attributes, state_dict keys, model_info unchanged);
        # only the forward used by `encode` goes through the compiler.
        self._forward = self._forward_of(self._model) if load_weights else None
        self.crop = self._model.img_size
        self.spatial = SpatialPlan(spatial, self.crop, self._model.patch_size, self._model.tubelet_size,
                                   options.short_side, options.max_tokens,
                                   image_path_frames=self._model.img_temporal_dim_size)
        self.transform = self.spatial.transform(normalize=False)  # uint8 crops, normalised in `encode`
        self._normalizing_transform = self.spatial.transform()
        coverage = (f"crop {self.crop}" if spatial == "center"
                    else f"whole frame at short side {self.spatial.short_side}")
        logger.info("encoder %s: V-JEPA %s, width %d, depth %d, %d heads, %s, %s on %s; storing %s (%d wide)",
                    spec, self._model.generation, self._model.embed_dim, self._model.depth, self._model.num_heads,
                    coverage, str(self.dtype).removeprefix("torch."), self.device, self.output_kind
                    + ("" if self.layers == "last" else f" blocks {self.layer_indices}"), self.embed_dim)

    def _load_model(self, weights: bool):
        return load_encoder(self.spec, img_size=self.options.img_size, checkpoint_key=self.options.checkpoint_key,
                            device=self.device, dtype=self.dtype, num_heads=self.options.num_heads, weights=weights)

    def _forward_of(self, model):
        return CompiledForward(model) if self.compiled else model.forward_features

    def load_weights(self) -> None:
        """Read (or draw) the weights of an encoder made with `load_weights=False`; nothing if they are
        loaded. The model's architecture is the one already described."""
        if self.weights_loaded:
            return
        start = time.perf_counter()
        self._model = self._load_model(weights=True)
        self._forward = self._forward_of(self._model)
        self.weights_loaded = True
        logger.info("encoder %s: weights loaded in %.1f s", self.spec, time.perf_counter() - start)

    @property
    def model(self):
        """The encoder (`VisionTransformer`), its weights loaded first if they were not."""
        self.load_weights()
        return self._model

    @model.setter
    def model(self, model) -> None:
        self._model, self.weights_loaded = model, True
        self._forward = self._forward_of(model)

    @property
    def architecture(self):
        """The encoder's shapes and settings (`patch_size`, `depth`, `generation`, `is_random`, …)
        without loading its weights: the model itself once they are loaded, else its meta-device twin."""
        return self._model

    @property
    def output_kind(self) -> str:
        return self.layers if isinstance(self.layers, str) else "layers"

    @property
    def embed_dim(self) -> int:
        """Width of the stored features: D, or D × the number of levels stored."""
        return self._model.embed_dim * (1 if self.layers == "last" else len(self.layer_indices))

    def grid(self, num_frames: int, image_hw: tuple[int, int] | None = None) -> tuple[int, int, int]:
        """Token grid (Tp, Hp, Wp) of a clip of `num_frames` frames: at the crop size (`center`), or of
        frames of `image_hw` = (height, width) source pixels (`full`, where it is required)."""
        return self._model.patch_grid(num_frames, *self.spatial.input_hw(*(image_hw or (None, None))))

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 `[T, H, W, 3]` → normalised float32 `[C, T, H', W']` (CPU; crop×crop for `center`)."""
        return self._normalizing_transform(frames)

    def crop_box(self, height: int, width: int) -> dict:
        """The source-pixel region the features cover: the centre crop, or the whole frame (`full`)."""
        return self.spatial.covered_box(height, width)

    @torch.inference_mode()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """`[B, C, T, H, W]` → fp16 `[B, N, D]` on the CPU (cast on the device, before the copy back).
        uint8 clips (`transform`) are normalised on the device, bit-identically to `preprocess`.

        On CUDA the upload is asynchronous when `clips` is in pinned memory (the DataLoaders pin
        their batches), and with `non_blocking` PyTorch casts to the compute dtype on the GPU,
        after the copy. Features are cast to fp16 on the device, so the copy back moves 2 bytes
        per value. Broadcast (stride-0) dimensions, e.g. an image expanded along time, are
        uploaded once and expanded again on the device rather than materialised on the host.
        """
        self.load_weights()
        if self._cpu_linear_pending:
            self._cpu_linear_pending = False
            tokens = clips.shape[0] * math.prod(self._model.patch_grid(*clips.shape[2:]))
            self.cpu_linear = choose_cpu_linear(self._model, tokens, self.options.cpu_linear)
        x = to_device_keep_broadcast(clips, self.device, self.dtype)
        feats = self._forward(x, self.layer_indices if isinstance(self.layers, list) else self.layers).to(torch.float16)
        if self.dtype != torch.float32 and not self._warned_nonfinite and not torch.isfinite(feats).all():
            # fp16 compute can overflow (65504) inside a deep ViT; say so once rather than store inf/NaN quietly
            self._warned_nonfinite = True
            logger.warning("features contain inf/NaN with %s compute (overflow): use --dtype bf16 or fp32",
                           str(self.dtype).removeprefix("torch."))
        return feats.cpu()

    def check_finite(self, features: torch.Tensor, names: list[str]) -> None:
        """Refuse to let inf/NaN features be stored: raises FeatureOverflowError naming the first
        item of `names` (one per row of `features` [B, N, D]) whose features are not finite."""
        finite = torch.isfinite(features).flatten(1).all(1)  # [B]
        if bool(finite.all()):
            return
        bad = [name for name, ok in zip(names, finite.tolist()) if not ok]
        more = f" (and {len(bad) - 1} more in its batch)" if len(bad) > 1 else ""
        dtype = str(self.dtype).removeprefix("torch.")
        hint = "rerun with --dtype bf16 or fp32" if self.dtype == torch.float16 else "check the model and the input"
        raise FeatureOverflowError(f"{bad[0]}: features contain inf/NaN with {dtype} compute{more}; nothing of this "
                                   f"batch was stored: {hint}")

    def describe(self, num_frames: int, image_hw: tuple[int, int] | None = None) -> dict:
        """`model_info` for feature files: the seed's keys plus the loaded model's architecture.
        With `full` the spatial patches depend on the frame: those of `image_hw`, else None."""
        known = image_hw is not None or self.spatial.mode == "center"
        tp, hp, wp = self.grid(num_frames, image_hw or (self.crop, self.crop))  # Tp does not depend on the frame
        return {
            **model_info(self._model),
            "num_input_frames": num_frames,
            "num_output_temporal": tp,
            "spatial_patches": [hp, wp] if known else None,
            "patch_dim": self.embed_dim,
            "output": self.output_kind,
            "layers": self.layer_indices,
            "level_norm": "norms_block" if self._model.has_norms_block else "norm",
            "image_path": self._model.uses_image_path(num_frames),
            "compute_dtype": str(self.dtype).removeprefix("torch."),
            "tf32": bool(self.options.tf32 and self.device.type == "cuda"),
        }
