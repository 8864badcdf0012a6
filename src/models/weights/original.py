"""Original V-JEPA 2 / 2.1 (and V-JEPA 1 style `pos_embed`) `.pt` checkpoints: which entry holds
the encoder, the architecture from tensor shapes, strict loading."""
from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path

import torch

from src.errors import CheckpointError
from src.models.registry import V2_1_OPTIONS
from src.models.vision_transformer import VisionTransformer
from src.models.weights.loading import (block_indices, build_architecture, build_with_weights, key_list,
                                        load_pickle_free, strip_prefixes)

logger = logging.getLogger(__name__)

# Released widths → heads. Width alone cannot tell 16 from 22 heads for giant: the table can.
HEADS_BY_WIDTH = {768: 12, 1024: 16, 1280: 16, 1408: 22, 1664: 26, 192: 3}
# Entries of an original .pt that may hold the encoder, in the order tried when none is named:
# 2.0 files are read from `encoder` (as Meta's demo does); 2.1's hub reads `ema_encoder` for the
# distilled B/L (width ≤ 1024) and `target_encoder` for g/G.
ENCODER_KEYS_V2_0 = ("encoder", "target_encoder", "ema_encoder")
ENCODER_KEYS_V2_1_SMALL = ("ema_encoder", "target_encoder", "encoder")
ENCODER_KEYS_V2_1_LARGE = ("target_encoder", "ema_encoder", "encoder")
# Keys only a 2.1 encoder has (after prefix stripping).
V2_1_KEY_MARKERS = ("norms_block.", "patch_embed_img.", "video_mod_embed", "img_mod_embed")


def checkpoint_generation(state_dict: dict) -> str:
    """"2.1" if any key only a 2.1 encoder has is present (then every 2.1 key must be), else "2.0"."""
    return "2.1" if any(k.startswith(V2_1_KEY_MARKERS) for k in state_dict) else "2.0"


def infer_architecture(state_dict: dict, num_heads: int | None = None) -> dict:
    """Architecture arguments from tensor shapes of an (unprefixed) original encoder state dict.

    The generation comes from the keys (`checkpoint_generation`); a 2.1 file gets all of 2.1's
    options, so a file missing some 2.1 keys fails the strict load naming them, never loads
    as 2.0 (and a 2.0 file never as 2.1). Heads are not in the weights: `num_heads` if given,
    else the released model of that width (1408 → 22, the V-JEPA 2 giant; a 16-head `vit_giant`
    has the same shapes), else 64-channel heads; the log says which and why.
    """
    if "patch_embed.proj.weight" not in state_dict:
        raise CheckpointError(
            f"no 'patch_embed.proj.weight' among the keys ({key_list(sorted(state_dict), 6)}): "
            "not a V-JEPA 2 encoder state dict"
        )
    weight = state_dict["patch_embed.proj.weight"]
    if weight.ndim != 5:
        raise CheckpointError(f"patch_embed.proj.weight has shape {tuple(weight.shape)}: a 2-D (image-only) patch "
                              "embedding; only video encoders (Conv3d tubelets) are supported")
    width, in_chans, tubelet, patch, _ = weight.shape
    blocks = block_indices(state_dict, "blocks.")
    if not blocks:
        raise CheckpointError("no 'blocks.N.*' keys: not a V-JEPA 2 encoder state dict")
    fc1 = state_dict.get(f"blocks.{blocks[0]}.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / width if fc1 is not None else 4.0
    if num_heads is not None:
        if num_heads < 1 or width % num_heads:
            raise CheckpointError(f"num_heads {num_heads} does not divide the width {width}")
        heads = num_heads
        logger.info("width %d: %d heads, as given (num_heads / --num_heads)", width, heads)
    elif width in HEADS_BY_WIDTH:
        heads = HEADS_BY_WIDTH[width]
        logger.info("width %d: %d heads, those of the released encoder of this width (shapes cannot tell the "
                    "head count; pass --num_heads for another, e.g. 16 for a vit_giant)", width, heads)
    else:
        heads = max(1, width // 64)
        logger.warning("width %d is not a released V-JEPA 2 width; assuming %d heads of 64 (--num_heads to set)",
                       width, heads)
    qkv_bias = f"blocks.{blocks[0]}.attn.qkv.bias" in state_dict
    arch = dict(
        embed_dim=width, depth=blocks[-1] + 1, num_heads=heads, mlp_ratio=mlp_ratio,
        patch_size=patch, tubelet_size=tubelet, in_chans=in_chans, qkv_bias=qkv_bias,
    )
    if checkpoint_generation(state_dict) == "2.1":
        arch.update(V2_1_OPTIONS)
    if "pos_embed" in state_dict:
        arch["use_rope"] = False
    return arch


def pos_embed_grid(table: torch.Tensor, tubelet: int, num_frames: int) -> tuple:
    """(Tn, Hn, Wn) of a stored square `pos_embed` `[1, N, D]`: N = Tn·Hn·Hn, with Tn the
    requested frames' tubelets if that fits, else the first of 8, 16, 32, 4, 2, 1 that does."""
    if table.ndim != 3 or table.shape[0] != 1:
        raise CheckpointError(f"pos_embed has shape {tuple(table.shape)}, expected [1, N, D]")
    n = table.shape[1]
    candidates = [num_frames // tubelet] if num_frames >= tubelet else []
    candidates += [8, 16, 32, 4, 2, 1]
    for nt in candidates:
        side = math.isqrt(n // nt) if n % nt == 0 else 0
        if side and nt * side * side == n:
            return nt, side, side
    raise CheckpointError(f"pos_embed of {n} positions is not T×H×H for any frame count tried")


def _peek_encoder(entry) -> tuple[str, int] | None:
    """(generation, width) of an encoder state dict held in a checkpoint entry, else None."""
    if not isinstance(entry, dict):
        return None
    keys = strip_prefixes(dict.fromkeys(map(str, entry)))
    weight = next((v for k, v in entry.items() if str(k).endswith("patch_embed.proj.weight")), None)
    if weight is None or not hasattr(weight, "shape"):
        return None
    return checkpoint_generation(keys), int(weight.shape[0])


def choose_checkpoint_key(ckpt: dict, path: Path) -> str:
    """The entry of an original checkpoint to read when none is named, as Meta's code reads it:
    `encoder` for 2.0; `ema_encoder` for 2.1 B/L, `target_encoder` for 2.1 g/G; falling back
    to whichever of these the file holds."""
    present = {k: info for k in dict.fromkeys((*ENCODER_KEYS_V2_0, *ENCODER_KEYS_V2_1_SMALL))
               if k in ckpt and (info := _peek_encoder(ckpt[k])) is not None}
    if not present:
        raise CheckpointError(
            f"{path}: no encoder entry (looked for {', '.join(ENCODER_KEYS_V2_0)}); it has "
            f"{key_list(sorted(map(str, ckpt)))} (name one with --checkpoint_key)")
    generation, width = next(iter(present.values()))
    order = (ENCODER_KEYS_V2_0 if generation == "2.0"
             else ENCODER_KEYS_V2_1_SMALL if width <= 1024 else ENCODER_KEYS_V2_1_LARGE)
    key = next(k for k in order if k in present)
    logger.info("%s: V-JEPA %s encoder %d wide; reading '%s' (the entry Meta's code uses%s; "
                "--checkpoint_key chooses another)", path.name, generation, width, key,
                "" if key == order[0] else f" is '{order[0]}', absent here")
    return key


def load_original_checkpoint(
    path: str | Path, img_size: int | None = None, num_frames: int = 16, checkpoint_key: str | None = None,
    num_heads: int | None = None, weights: bool = True,
) -> VisionTransformer:
    """Encoder from an original V-JEPA 2 / 2.1 `.pt` (generation from the keys, architecture
    from tensor shapes). `checkpoint_key` None: the entry Meta's code reads (see
    `choose_checkpoint_key`); a bare encoder state dict also loads. `weights=False`: the
    architecture alone, on the meta device (the file is mapped, its tensors never read)."""
    path = Path(path)
    ckpt = load_pickle_free(path, mmap=not weights)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if checkpoint_key is None and any(str(k).endswith("patch_embed.proj.weight") for k in ckpt):
        checkpoint_key, state_dict = "(bare state dict)", ckpt
    else:
        if checkpoint_key is None:
            checkpoint_key = choose_checkpoint_key(ckpt, path)
        if checkpoint_key not in ckpt:
            raise CheckpointError(
                f"{path}: no '{checkpoint_key}' entry; it has {key_list(sorted(map(str, ckpt)))}"
                " (choose one with --checkpoint_key, or leave it out to pick the encoder entry automatically)"
            )
        state_dict = ckpt[checkpoint_key]
        if not isinstance(state_dict, dict):
            raise CheckpointError(f"{path}: entry '{checkpoint_key}' is a {type(state_dict).__name__}, "
                                  "not an encoder state dict")
    state_dict = strip_prefixes(state_dict)
    arch = infer_architecture(state_dict, num_heads=num_heads)
    generation = "2.1" if arch.get("norms_block") else "2.0" if arch.get("use_rope", True) else "1 (pos_embed)"
    if not arch.get("use_rope", True):
        # V-JEPA 1 and other non-RoPE encoders: their stored table is used, resized per input
        grid = pos_embed_grid(state_dict["pos_embed"], arch["tubelet_size"], num_frames)
        arch["pos_embed_grid"] = grid
        native = grid[1] * arch["patch_size"]
        logger.info("%s: absolute position embeddings for %d frames at %d px (%d×%d×%d tokens); other inputs "
                    "get them resized as the original does", path.name, grid[0] * arch["tubelet_size"], native, *grid)
        if img_size is None:
            img_size = native
    if img_size is None:
        img_size = 384 if generation == "2.1" else 256
        logger.info("%s: no crop size given; using %d (%s)", path.name, img_size,
                    "all released 2.1 encoders are 384 px" if generation == "2.1"
                    else "pass img_size=384 for 384 px checkpoints")
    make_model = partial(VisionTransformer, img_size=img_size, num_frames=num_frames, **arch)
    if not weights:
        return build_architecture(make_model)
    model = build_with_weights(make_model, state_dict, f"{path} ['{checkpoint_key}'] (V-JEPA {generation})")
    logger.info("loaded %s['%s']: V-JEPA %s, width %d, depth %d, %d heads", path.name, checkpoint_key, generation,
                arch["embed_dim"], arch["depth"], arch["num_heads"])
    return model
