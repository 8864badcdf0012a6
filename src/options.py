"""What builds and describes an encoder, as one object: built from a script's arguments in one place
(`EncoderOptions.from_args`) and handed to `ClipEncoder` and both extractors, instead of the same
eleven keyword arguments re-listed at every level."""
from __future__ import annotations

from dataclasses import dataclass, fields

from src import sharding
from src.errors import ConfigError
from src.models.kernel_choice import CPU_LINEAR_MODES
from src.models.weights import DEFAULT_HUB_MODEL
from src.spatial import DEFAULT_MAX_TOKENS, check_spatial_options

DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class EncoderOptions:
    """How to load an encoder and what it stores.

    Args:
        model: model spec (hub id, transformers directory, original .pt, ``random:<arch>``).
        device: "auto", "cpu", "cuda" or "cuda:N".
        dtype: compute dtype: "auto" (bf16 on GPUs with native bf16, else fp16; fp32 on CPU), "fp32",
            "bf16" or "fp16".
        img_size: crop size (default: the model's; 256 for bare .pt files).
        checkpoint_key: entry of an original .pt to load (None: the one Meta's code reads).
        compile: run the forward pass through ``torch.compile`` (see bench/PERFORMANCE.md).
        layers: what is stored: "last", "hierarchical", block indices "2,5,8,11" or a list of them.
        num_heads: head count of an original .pt whose shapes cannot tell it (16-head giants).
        spatial: "center" (the centre crop) or "full" (the whole frame; see src/spatial.py).
        short_side: ``full``: the short side frames are resized to (default: the crop size).
        max_tokens: the most tokens per clip accepted (None: no limit).
        tf32: fp32 matmuls on TF32 tensor cores (CUDA only; `src.device.set_tf32`).
        cpu_linear: CPU fp32 linears: "auto" (the faster of the two on this machine, timed once and
            cached; `src.models.kernel_choice`), "fused" (oneDNN with fused epilogues) or "plain".
    """

    model: str = DEFAULT_HUB_MODEL
    device: str = "auto"
    dtype: str = "auto"
    img_size: int | None = None
    checkpoint_key: str | None = None
    compile: bool = False
    layers: str | tuple[int, ...] = "last"
    num_heads: int | None = None
    spatial: str = "center"
    short_side: int | None = None
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    tf32: bool = False
    cpu_linear: str = "auto"

    def __post_init__(self):
        if not isinstance(self.layers, str):  # a list of blocks: hashable and immutable like the rest
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        if self.dtype not in DTYPE_CHOICES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}")
        if self.cpu_linear not in CPU_LINEAR_MODES:
            raise ConfigError(f"cpu_linear must be one of {', '.join(CPU_LINEAR_MODES)}, got {self.cpu_linear!r}")
        check_spatial_options(self.spatial, self.short_side, self.max_tokens)  # before minutes of model loading

    @classmethod
    def from_args(cls, args) -> "EncoderOptions":
        """From a script's parsed arguments (`src.cli.common_parser` + `spatial_parser`); the device is
        this process's (the local rank's GPU under torchrun / srun)."""
        return cls(model=args.model, device=sharding.local_device(args.device), dtype=args.dtype,
                   img_size=args.img_size, checkpoint_key=args.checkpoint_key, compile=bool(args.compile),
                   layers=args.layers, num_heads=args.num_heads, spatial=getattr(args, "spatial", "center"),
                   short_side=getattr(args, "short_side", None),
                   max_tokens=getattr(args, "max_tokens", DEFAULT_MAX_TOKENS), tf32=bool(getattr(args, "tf32", False)),
                   cpu_linear=getattr(args, "cpu_linear", "auto"))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def dtype_name(dtype: str | None, use_fp16: bool = False) -> str:
    """The compute-dtype name for the seed's classes, which take `use_fp16` beside `dtype`: None →
    "fp16" with `use_fp16`, else "auto". Both given and disagreeing is an error rather than one
    silently winning."""
    if dtype is None:
        return "fp16" if use_fp16 else "auto"
    if use_fp16 and dtype != "fp16":
        raise ConfigError(f"use_fp16=True contradicts dtype={dtype!r}; pass one of them")
    return dtype
