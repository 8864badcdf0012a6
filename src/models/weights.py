"""Model specs → ready encoders and probes; key mapping to and from the transformers layout.

A *model spec* is one of:
  - `random:<arch>[,key=value...]`  seeded random weights (e.g. `random:vit_large`,
    `random:tiny`, `random:vit_giant_xformers,depth=2`): offline smoke runs, tests, benchmarks.
  - a local directory in the transformers layout (`config.json` + `*.safetensors`).
  - an original `.pt`/`.pth`/`.tar` checkpoint, 2.0 or 2.1 (told apart by its keys; the entry
    holding the encoder is chosen as Meta's code does unless `checkpoint_key` names one).
  - a Hugging Face hub id (`facebook/vjepa2-vitl-fpc64-256`), fetched with huggingface_hub so
    its cache and `HF_HUB_OFFLINE` apply.
A *probe spec* is a released probe file or `random:probe[,key=value...]` (seeded random weights;
width and class count from the caller, e.g. the encoder and the class list, unless given).
Loading is strict: missing, unexpected or mis-shaped keys are an error that names them.
"""
from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch

from src.errors import CheckpointError, ModelSpecError
from src.models.attentive_pooler import AttentiveClassifier, PROBE_NORM_EPS
from src.models.vision_transformer import ARCHITECTURES, FACTORIES, V2_1_OPTIONS, VisionTransformer

logger = logging.getLogger(__name__)

DEFAULT_HUB_MODEL = "facebook/vjepa2-vitg-fpc64-384"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt")
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
RANDOM_SEED = 0




# ----------------------------------------------------------------------------- key mapping
# (ours, transformers) suffix pairs inside one encoder block; qkv is handled separately.
_BLOCK_KEYS = [
    ("norm1", "norm1"),
    ("attn.proj", "attention.proj"),
    ("norm2", "norm2"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
]
_ENCODER_KEYS = [("patch_embed.proj", "embeddings.patch_embeddings.proj"), ("norm", "layernorm")]
_POOLER_BLOCK_KEYS = [
    ("norm1", "layer_norm1"),
    ("attn.proj", "self_attn.out_proj"),
    ("norm2", "layer_norm2"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
]
_CROSS_BLOCK_KEYS = [
    ("norm1", "layer_norm1"),
    ("xattn.q", "cross_attn.q_proj"),
    ("norm2", "layer_norm2"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
]


def _split_rows(tensor: torch.Tensor, parts: int) -> list[torch.Tensor]:
    return [t.clone() for t in tensor.chunk(parts, dim=0)]


def _rename(state_dict: dict, src_prefix: str, dst_prefix: str, pairs, out: dict, consumed: set) -> None:
    for src, dst in pairs:
        for leaf in ("weight", "bias"):
            key = f"{src_prefix}{src}.{leaf}"
            if key in state_dict:
                out[f"{dst_prefix}{dst}.{leaf}"] = state_dict[key]
                consumed.add(key)


def _split_fused(state_dict: dict, src: str, dst: str, names, out: dict, consumed: set) -> None:
    """`{src}.{weight,bias}` (rows stacked [a | b | …]) → `{dst}{name}.{leaf}` for each name."""
    for leaf in ("weight", "bias"):
        key = f"{src}.{leaf}"
        if key in state_dict:
            for name, part in zip(names, _split_rows(state_dict[key], len(names))):
                out[f"{dst}{name}.{leaf}"] = part
            consumed.add(key)


def _merge_fused(state_dict: dict, src: str, names, dst: str, out: dict, consumed: set) -> None:
    """Inverse of `_split_fused`: `{src}{name}.{leaf}` for each name → rows stacked in `{dst}.{leaf}`."""
    for leaf in ("weight", "bias"):
        parts = [f"{src}{name}.{leaf}" for name in names]
        if all(p in state_dict for p in parts):
            out[f"{dst}.{leaf}"] = torch.cat([state_dict[p] for p in parts], dim=0)
            consumed.update(parts)


def _block_indices(state_dict: dict, prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in state_dict if (m := pattern.match(k))})


def _leftovers(state_dict: dict, consumed: set, what: str) -> None:
    rest = sorted(set(state_dict) - consumed)
    if rest:
        raise CheckpointError(f"{what}: keys with no counterpart: {_key_list(rest)}")


def encoder_to_hf(state_dict: dict, prefix: str = "encoder.") -> dict:
    """Our encoder state dict → transformers `VJEPA2Model` keys (qkv split into query/key/value)."""
    out, consumed = {}, set()
    _rename(state_dict, "", prefix, _ENCODER_KEYS, out, consumed)
    for i in _block_indices(state_dict, "blocks."):
        src, dst = f"blocks.{i}.", f"{prefix}layer.{i}."
        _rename(state_dict, src, dst, _BLOCK_KEYS, out, consumed)
        _split_fused(state_dict, f"{src}attn.qkv", f"{dst}attention.", ("query", "key", "value"), out, consumed)
    _leftovers(state_dict, consumed, "encoder_to_hf")
    return out


def encoder_from_hf(state_dict: dict, prefix: str = "encoder.") -> dict:
    """transformers encoder keys (under `prefix`) → ours (query/key/value merged into qkv).

    Keys outside `prefix` (predictor, pooler, classifier) are ignored.
    """
    sd = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    out, consumed = {}, set()
    _rename(sd, "", "", [(hf, ours) for ours, hf in _ENCODER_KEYS], out, consumed)
    for i in _block_indices(sd, "layer."):
        src, dst = f"layer.{i}.", f"blocks.{i}."
        _rename(sd, src, dst, [(hf, ours) for ours, hf in _BLOCK_KEYS], out, consumed)
        _merge_fused(sd, f"{src}attention.", ("query", "key", "value"), f"{dst}attn.qkv", out, consumed)
    _leftovers(sd, consumed, f"encoder_from_hf (under '{prefix}')")
    return out


def classifier_to_hf(state_dict: dict) -> dict:
    """Our `AttentiveClassifier` keys → transformers `VJEPA2ForVideoClassification` pooler/classifier keys."""
    out, consumed = {}, set()
    if "pooler.query_tokens" in state_dict:
        out["pooler.query_tokens"] = state_dict["pooler.query_tokens"]
        consumed.add("pooler.query_tokens")
    for i in _block_indices(state_dict, "pooler.blocks."):
        src, dst = f"pooler.blocks.{i}.", f"pooler.self_attention_layers.{i}."
        _rename(state_dict, src, dst, _POOLER_BLOCK_KEYS, out, consumed)
        _split_fused(state_dict, f"{src}attn.qkv", f"{dst}self_attn.", ("q_proj", "k_proj", "v_proj"), out, consumed)
    src, dst = "pooler.cross_attention_block.", "pooler.cross_attention_layer."
    _rename(state_dict, src, dst, _CROSS_BLOCK_KEYS, out, consumed)
    _split_fused(state_dict, f"{src}xattn.kv", f"{dst}cross_attn.", ("k_proj", "v_proj"), out, consumed)
    _rename(state_dict, "", "", [("linear", "classifier")], out, consumed)
    _leftovers(state_dict, consumed, "classifier_to_hf")
    return out


def classifier_from_hf(state_dict: dict) -> dict:
    """transformers pooler/classifier keys → our `AttentiveClassifier` keys (encoder keys ignored)."""
    sd = {k: v for k, v in state_dict.items() if k.startswith(("pooler.", "classifier."))}
    out, consumed = {}, set()
    if "pooler.query_tokens" in sd:
        out["pooler.query_tokens"] = sd["pooler.query_tokens"]
        consumed.add("pooler.query_tokens")
    for i in _block_indices(sd, "pooler.self_attention_layers."):
        src, dst = f"pooler.self_attention_layers.{i}.", f"pooler.blocks.{i}."
        _rename(sd, src, dst, [(hf, ours) for ours, hf in _POOLER_BLOCK_KEYS], out, consumed)
        _merge_fused(sd, f"{src}self_attn.", ("q_proj", "k_proj", "v_proj"), f"{dst}attn.qkv", out, consumed)
    src, dst = "pooler.cross_attention_layer.", "pooler.cross_attention_block."
    _rename(sd, src, dst, [(hf, ours) for ours, hf in _CROSS_BLOCK_KEYS], out, consumed)
    _merge_fused(sd, f"{src}cross_attn.", ("k_proj", "v_proj"), f"{dst}xattn.kv", out, consumed)
    _rename(sd, "", "", [("classifier", "linear")], out, consumed)
    _leftovers(sd, consumed, "classifier_from_hf")
    return out


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


# ----------------------------------------------------------------------------- strict loading
def _key_list(keys, limit: int = 12) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_state_dict_strict(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    """Load every key or fail with one message naming the missing, unexpected and mis-shaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_key_list(unexpected)}")
    if mismatched:
        problems.append(f"wrong shapes: {_key_list(mismatched, 6)}")
    if problems:
        raise CheckpointError(f"{source}: checkpoint does not match the model; " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def strip_prefixes(state_dict: dict, prefixes=("module.", "backbone.")) -> dict:
    """Remove wrapper prefixes at the start of keys only (repeatedly, in any order)."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key.removeprefix(p), True
        out[key] = value
    return out


# ----------------------------------------------------------------------------- specs
def _parse_random_spec(spec: str) -> tuple[str, dict]:
    body = spec.removeprefix("random:")
    arch, *options = body.split(",")
    arch = arch.strip() or "tiny"
    arch = arch.removesuffix("_rope").removesuffix("_384")
    if arch not in ARCHITECTURES:
        raise ModelSpecError(f"unknown architecture '{arch}' in '{spec}'; choose from {sorted(ARCHITECTURES)}")
    return arch, _parse_options(options, spec)


def _parse_options(options: list[str], spec: str) -> dict:
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


def build_random_encoder(spec: str, img_size: int | None = None, num_frames: int = 16) -> VisionTransformer:
    """Seeded random encoder for `random:<arch>[,key=value...]`; same spec → same weights."""
    arch, overrides = _parse_random_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        try:
            model = FACTORIES[arch](img_size=img_size, num_frames=num_frames, **overrides)
        except TypeError as exc:
            raise ModelSpecError(f"bad option in '{spec}': {exc}") from None
    logger.warning(
        "RANDOM WEIGHTS (%s): this encoder is untrained; its features are random and mean "
        "nothing. Use it only for tests, benchmarks and offline smoke runs.",
        spec,
    )
    return model


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
            f"no 'patch_embed.proj.weight' among the keys ({_key_list(sorted(state_dict), 6)}): "
            "not a V-JEPA 2 encoder state dict"
        )
    weight = state_dict["patch_embed.proj.weight"]
    if weight.ndim != 5:
        raise CheckpointError(f"patch_embed.proj.weight has shape {tuple(weight.shape)}: a 2-D (image-only) patch "
                              "embedding; only video encoders (Conv3d tubelets) are supported")
    width, in_chans, tubelet, patch, _ = weight.shape
    blocks = _block_indices(state_dict, "blocks.")
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


def _load_pickle_free(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file …
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


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
            f"{_key_list(sorted(map(str, ckpt)))} (name one with --checkpoint_key)")
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
    num_heads: int | None = None,
) -> VisionTransformer:
    """Encoder from an original V-JEPA 2 / 2.1 `.pt` (generation from the keys, architecture
    from tensor shapes). `checkpoint_key` None: the entry Meta's code reads (see
    `choose_checkpoint_key`); a bare encoder state dict also loads."""
    path = Path(path)
    ckpt = _load_pickle_free(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if checkpoint_key is None and any(str(k).endswith("patch_embed.proj.weight") for k in ckpt):
        checkpoint_key, state_dict = "(bare state dict)", ckpt
    else:
        if checkpoint_key is None:
            checkpoint_key = choose_checkpoint_key(ckpt, path)
        if checkpoint_key not in ckpt:
            raise CheckpointError(
                f"{path}: no '{checkpoint_key}' entry; it has {_key_list(sorted(map(str, ckpt)))}"
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
    model = VisionTransformer(img_size=img_size, num_frames=num_frames, **arch)
    load_state_dict_strict(model, state_dict, f"{path} ['{checkpoint_key}'] (V-JEPA {generation})")
    logger.info("loaded %s['%s']: V-JEPA %s, width %d, depth %d, %d heads", path.name, checkpoint_key, generation,
                arch["embed_dim"], arch["depth"], arch["num_heads"])
    return model


def _read_hf_weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if files:
        state_dict = {}
        for f in files:
            state_dict.update(load_file(f))
        return state_dict
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if bins:
        state_dict = {}
        for f in bins:
            state_dict.update(_load_pickle_free(f))
        return state_dict
    raise ModelSpecError(f"{directory}: no *.safetensors or pytorch_model*.bin weights next to config.json")


def load_hf_directory(directory: str | Path, img_size: int | None = None, num_frames: int = 16) -> VisionTransformer:
    """Encoder from a transformers-layout directory (VJEPA2Model or a classifier repo)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ModelSpecError(f"{directory}: no config.json (not a transformers model directory)")
    config = json.loads(config_path.read_text())
    patch = config.get("patch_size", 16)
    model = VisionTransformer(
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
    hf_state = _read_hf_weights(directory)
    prefix = "vjepa2.encoder." if any(k.startswith("vjepa2.encoder.") for k in hf_state) else "encoder."
    load_state_dict_strict(model, encoder_from_hf(hf_state, prefix=prefix), str(directory))
    return model


def download_hub_model(repo_id: str) -> Path:
    """Local snapshot of a hub repo (config + safetensors) via huggingface_hub, or a clear error."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # offline, unknown repo, no cache: all end the same way for the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSpecError(
            f"cannot get '{repo_id}' from the Hugging Face hub ({type(exc).__name__}: {reason}). "
            "Offline, use a local directory with config.json + *.safetensors (e.g. one saved by "
            "`save_pretrained`), a populated HF cache (HF_HOME / HF_HUB_CACHE), an original .pt "
            "checkpoint, or `random:vit_large` for a smoke run with random weights."
        ) from None


def resolve_spec_kind(spec: str) -> str:
    """'random', 'checkpoint', 'hf_dir' or 'hub' for a model spec (raises for nonsense)."""
    if spec.startswith("random:"):
        _parse_random_spec(spec)  # an unknown architecture or option fails here, before any work
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
) -> VisionTransformer:
    """Turn a model spec into an eval-mode encoder on `device` (see the module docstring), cast
    to `dtype` if given (cast and moved in one step, so a bf16 ViT-g never sits on the GPU in fp32).

    The returned model carries `model_spec` (the spec string) and `is_random` attributes.
    """
    kind = resolve_spec_kind(spec)
    if num_heads is not None and kind != "checkpoint":
        raise ModelSpecError(f"num_heads (--num_heads) applies to original .pt checkpoints, whose shapes cannot tell "
                             f"the head count; {spec} records its own (a random: spec takes ',num_heads=N')")
    if kind == "random":
        model = build_random_encoder(spec, img_size=img_size, num_frames=num_frames)
    elif kind == "checkpoint":
        model = load_original_checkpoint(Path(spec).expanduser(), img_size, num_frames, checkpoint_key, num_heads)
    elif kind == "hf_dir":
        model = load_hf_directory(Path(spec).expanduser(), img_size, num_frames)
    else:
        model = load_hf_directory(download_hub_model(spec), img_size, num_frames)
    model.model_spec, model.is_random = spec, kind == "random"
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


# ----------------------------------------------------------------------------- probes
_RANDOM_PROBE_OPTIONS = ("embed_dim", "num_classes", "depth", "num_heads", "mlp_ratio")


def build_random_classifier(spec: str, embed_dim: int | None = None, num_classes: int | None = None,
                            num_heads: int = 16, norm_eps: float = PROBE_NORM_EPS) -> AttentiveClassifier:
    """Seeded random probe for `random:probe[,key=value...]` (keys: embed_dim, num_classes, depth,
    num_heads, mlp_ratio); the spec's values win over the arguments. Same spec → same weights."""
    name, *options = spec.removeprefix("random:").split(",")
    if name.strip() not in ("", "probe"):
        raise ModelSpecError(f"unknown random probe '{spec}': use random:probe[,key=value...]")
    config = {"embed_dim": embed_dim, "num_classes": num_classes, "num_heads": num_heads,
              **_parse_options(options, spec)}
    unknown = sorted(set(config) - set(_RANDOM_PROBE_OPTIONS))
    if unknown:
        raise ModelSpecError(f"unknown option {unknown[0]!r} in '{spec}'; choose from {list(_RANDOM_PROBE_OPTIONS)}")
    missing = [key for key in ("embed_dim", "num_classes") if config[key] is None]
    if missing:
        raise ModelSpecError(f"'{spec}' needs {' and '.join(missing)} (from the encoder and the class list, "
                             "or given in the spec)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        try:
            model = AttentiveClassifier(**config, norm_eps=norm_eps)
        except (AssertionError, ValueError, RuntimeError) as exc:
            raise ModelSpecError(f"'{spec}': {exc or type(exc).__name__}") from None
    logger.warning("RANDOM WEIGHTS (%s): this probe is untrained; its classes are random and mean "
                   "nothing. Use it only for tests and offline smoke runs.", spec)
    return model


def load_classifier(
    path: str | Path,
    num_heads: int = 16,
    norm_eps: float = PROBE_NORM_EPS,
    device: str | torch.device = "cpu",
    embed_dim: int | None = None,
    num_classes: int | None = None,
) -> AttentiveClassifier:
    """`AttentiveClassifier` from a released probe file (`classifiers[0]`, `module.` stripped),
    or a seeded random one for `random:probe[,...]` (see `build_random_classifier`; `embed_dim`
    and `num_classes` are used only there).

    Width, depth, MLP ratio and class count come from tensor shapes; the head count is not in
    the weights: released probes use 16 for every encoder size (also giant), and probes trained
    by vjepa2_probe.py record theirs (`probe_config`), which is used.
    """
    if str(path).startswith("random:"):
        model = build_random_classifier(str(path), embed_dim, num_classes, num_heads, norm_eps)
        return model.to(device).eval()
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"{path}: no such probe file")
    ckpt = _load_pickle_free(path)
    if isinstance(ckpt, dict) and "classifiers" in ckpt:
        classifiers = ckpt["classifiers"]
        state_dict = classifiers[0] if isinstance(classifiers, (list, tuple)) else classifiers
    elif isinstance(ckpt, dict) and any(str(k).endswith("pooler.query_tokens") for k in ckpt):
        state_dict = ckpt
    else:
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else [type(ckpt).__name__]
        raise CheckpointError(f"{path}: no 'classifiers' entry (has {_key_list(keys)}); not a probe file")
    recorded = ckpt.get("probe_config") if isinstance(ckpt, dict) else None
    if isinstance(recorded, dict):
        num_heads, norm_eps = recorded.get("num_heads", num_heads), recorded.get("norm_eps", norm_eps)
    state_dict = strip_prefixes(state_dict, prefixes=("module.",))
    for key in ("pooler.query_tokens", "linear.weight"):
        if key not in state_dict:
            raise CheckpointError(f"{path}: probe lacks '{key}'; has {_key_list(sorted(state_dict))}")
    embed_dim = state_dict["pooler.query_tokens"].shape[-1]
    num_classes = state_dict["linear.weight"].shape[0]
    depth = len(_block_indices(state_dict, "pooler.blocks.")) + 1
    fc1 = state_dict.get("pooler.cross_attention_block.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / embed_dim if fc1 is not None else 4.0
    model = AttentiveClassifier(
        embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, depth=depth,
        num_classes=num_classes, norm_eps=norm_eps,
    )
    load_state_dict_strict(model, state_dict, str(path))
    return model.to(device).eval()
