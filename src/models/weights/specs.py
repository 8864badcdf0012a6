"""Model specs → ready encoders (see the package docstring for what a spec can be)."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from src.errors import ModelSpecError
from src.models.registry import ARCHITECTURES
from src.models.vision_transformer import FACTORIES, VisionTransformer
from src.models.weights.hub import download_hub_model, load_hf_directory
from src.models.weights.loading import build_architecture
from src.models.weights.original import load_original_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt")
RANDOM_SEED = 0


def parse_random_spec(spec: str) -> tuple[str, dict]:
    body = spec.removeprefix("random:")
    arch, *options = body.split(",")
    arch = arch.strip() or "tiny"
    arch = arch.removesuffix("_rope").removesuffix("_384")  # Meta's _rope and the hub's _384 names
    if arch not in ARCHITECTURES:
        raise ModelSpecError(f"unknown architecture '{arch}' in '{spec}'; choose from {sorted(ARCHITECTURES)}")
    return arch, parse_options(options, spec)


def parse_options(options: list[str], spec: str) -> dict:
    overrides = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise ModelSpecError(f"bad option '{option}' in '{spec}' (expected key=value)")
        try:
            overrides[key.strip()] = float(value) if "." in value else int(value)
        except ValueError:
            raise ModelSpecError(f"bad value in '{option}' of '{spec}' (expected a number)") from None
    return overrides


def build_random_encoder(spec: str, img_size: int | None = None, num_frames: int = 16,
                         weights: bool = True) -> VisionTransformer:
    """Seeded random encoder for `random:<arch>[,key=value...]`; same spec → same weights.
    `weights=False`: the architecture alone, on the meta device (nothing drawn)."""
    arch, overrides = parse_random_spec(spec)

    def make_model() -> VisionTransformer:
        return FACTORIES[arch](img_size=img_size, num_frames=num_frames, **overrides)

    try:
        if not weights:
            return build_architecture(make_model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            model = make_model()
    except TypeError as exc:
        raise ModelSpecError(f"bad option in '{spec}': {exc}") from None
    logger.warning(
        "RANDOM WEIGHTS (%s): this encoder is untrained; its features are random and mean "
        "nothing. Use it only for tests, benchmarks and offline smoke runs.",
        spec,
    )
    return model


def resolve_spec_kind(spec: str) -> str:
    """'random', 'checkpoint', 'hf_dir' or 'hub' for a model spec (raises for nonsense)."""
    if spec.startswith("random:"):
        parse_random_spec(spec)  # an unknown architecture or option fails here, before any work
        return "random"
    path = Path(spec).expanduser()
    if path.is_dir():
        return "hf_dir"
    if path.is_file():
        return "checkpoint"
    if path.suffix in CHECKPOINT_SUFFIXES or spec.startswith((".", "/", "~")):
        raise ModelSpecError(f"{spec}: no such checkpoint file or model directory")
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", spec):
        return "hub"
    raise ModelSpecError(
        f"unknown model spec '{spec}': use a hub id (org/name), a local transformers directory, "
        f"an original .pt checkpoint, or random:<arch> with arch in {sorted(ARCHITECTURES)}"
    )


def load_encoder(
    spec: str,
    img_size: int | None = None,
    num_frames: int = 16,
    checkpoint_key: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    num_heads: int | None = None,
    weights: bool = True,
) -> VisionTransformer:
    """Turn a model spec into an eval-mode encoder on `device` (see the module docstring), cast
    to `dtype` if given (cast and moved in one step, so a bf16 ViT-g never sits on the GPU in fp32).

    The returned model carries `model_spec` (the spec string) and `is_random` attributes.
    `weights=False`: its architecture only, on the meta device (shapes and settings, for planning
    and describing a run), read from the spec without drawing or reading any weight (a hub spec
    is still resolved to its local snapshot).
    """
    kind = resolve_spec_kind(spec)
    if num_heads is not None and kind != "checkpoint":
        raise ModelSpecError(f"num_heads (--num_heads) applies to original .pt checkpoints, whose shapes cannot tell "
                             f"the head count; {spec} records its own (a random: spec takes ',num_heads=N')")
    if kind == "random":
        model = build_random_encoder(spec, img_size=img_size, num_frames=num_frames, weights=weights)
    elif kind == "checkpoint":
        model = load_original_checkpoint(Path(spec).expanduser(), img_size, num_frames, checkpoint_key, num_heads,
                                         weights=weights)
    elif kind == "hf_dir":
        model = load_hf_directory(Path(spec).expanduser(), img_size, num_frames, weights=weights)
    else:
        model = load_hf_directory(download_hub_model(spec, weights=weights), img_size, num_frames, weights=weights)
    model.model_spec, model.is_random = spec, kind == "random"
    if not weights:
        return model.to(dtype=dtype).eval()
    return model.to(device=device, dtype=dtype).eval()


def model_info(model: VisionTransformer) -> dict:
    """JSON-able description of a loaded encoder, for feature-file metadata."""
    return dict(
        model_name=getattr(model, "model_spec", "unknown"),
        random_weights=bool(getattr(model, "is_random", False)),
        generation=model.generation,
        embed_dim=model.embed_dim,
        depth=model.depth,
        num_heads=model.num_heads,
        patch_size=model.patch_size,
        tubelet_size=model.tubelet_size,
        img_size=model.img_size,
    )
