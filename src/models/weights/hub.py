"""The transformers layout: local directories (`config.json` + safetensors), hub downloads, and
the `VJEPA2Config` describing one of our encoders."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from src.errors import CheckpointError, ModelSpecError
from src.models.vision_transformer import VisionTransformer
from src.models.weights.hf_keys import encoder_from_hf
from src.models.weights.loading import build_architecture, build_with_weights, load_pickle_free

DEFAULT_HUB_MODEL = "facebook/vjepa2-vitg-fpc64-384"


def hf_config_dict(encoder: VisionTransformer) -> dict:
    """transformers `VJEPA2Config` arguments describing our (2.0) encoder."""
    if encoder.generation != "2.0":
        raise ValueError(f"transformers has no V-JEPA {encoder.generation} model: only 2.0 encoders convert")
    return dict(
        patch_size=encoder.patch_size,
        tubelet_size=encoder.tubelet_size,
        crop_size=encoder.img_size,
        frames_per_clip=encoder.num_frames,
        hidden_size=encoder.embed_dim,
        num_hidden_layers=encoder.depth,
        num_attention_heads=encoder.num_heads,
        mlp_ratio=encoder.mlp_ratio,
        layer_norm_eps=encoder.norm_eps,
        qkv_bias=encoder.blocks[0].attn.qkv.bias is not None if len(encoder.blocks) else True,
    )


def _read_safetensors(path: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exc:  # safetensors' own error type: a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None


def _read_hf_weights(directory: Path) -> dict:
    for pattern, load in (("*.safetensors", _read_safetensors), ("pytorch_model*.bin", load_pickle_free)):
        files = sorted(directory.glob(pattern))  # sharded checkpoints: every shard, merged
        if files:
            state_dict = {}
            for f in files:
                state_dict.update(load(f))
            return state_dict
    raise ModelSpecError(f"{directory}: no *.safetensors or pytorch_model*.bin weights next to config.json")


def load_hf_directory(directory: str | Path, img_size: int | None = None, num_frames: int = 16,
                      weights: bool = True) -> VisionTransformer:
    """Encoder from a transformers-layout directory (VJEPA2Model or a classifier repo); `weights=False`:
    the architecture alone, from config.json, on the meta device."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelSpecError(f"{directory}: no config.json (not a transformers model directory)")
    config = json.loads(config_path.read_text())
    patch = config.get("patch_size", 16)
    make_model = partial(
        VisionTransformer,
        img_size=img_size or config.get("crop_size", 256),
        num_frames=num_frames,
        patch_size=patch[0] if isinstance(patch, (list, tuple)) else patch,
        tubelet_size=config.get("tubelet_size", 2),
        in_chans=config.get("in_chans", 3),
        embed_dim=config.get("hidden_size", 1024),
        depth=config.get("num_hidden_layers", 24),
        num_heads=config.get("num_attention_heads", 16),
        mlp_ratio=config.get("mlp_ratio", 4.0),
        qkv_bias=config.get("qkv_bias", True),
        norm_eps=config.get("layer_norm_eps", 1e-6),
    )
    if not weights:
        return build_architecture(make_model)
    hf_state = _read_hf_weights(directory)
    prefix = "vjepa2.encoder." if any(k.startswith("vjepa2.encoder.") for k in hf_state) else "encoder."
    return build_with_weights(make_model, encoder_from_hf(hf_state, prefix=prefix), str(directory))


def download_hub_model(repo_id: str, weights: bool = True) -> Path:
    """Local snapshot of a hub repo (config + safetensors; `weights=False`: the config alone) via
    huggingface_hub, or a clear error."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"] if weights else ["*.json"]))
    except Exception as exc:  # offline, unknown repo, no cache: all end the same way for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSpecError(
            f"cannot get '{repo_id}' from the Hugging Face hub ({type(exc).__name__}: {reason}). "
            "Offline, use a local directory with config.json + *.safetensors (e.g. one saved by "
            "`save_pretrained`), a populated HF cache (HF_HOME / HF_HUB_CACHE), an original .pt "
            "checkpoint, or `random:vit_large` for a smoke run with random weights."
        ) from None
