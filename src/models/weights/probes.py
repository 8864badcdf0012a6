"""Attentive probes: released probe files (`classifiers[0]`) and seeded random ones."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from src.errors import CheckpointError, ModelSpecError
from src.models.attentive_pooler import AttentiveClassifier, PROBE_NORM_EPS
from src.models.weights.loading import block_indices, key_list, load_pickle_free, load_state_dict_strict, strip_prefixes
from src.models.weights.specs import RANDOM_SEED, parse_options

logger = logging.getLogger(__name__)

_RANDOM_PROBE_OPTIONS = ("embed_dim", "num_classes", "depth", "num_heads", "mlp_ratio")


def build_random_classifier(spec: str, embed_dim: int | None = None, num_classes: int | None = None,
                            num_heads: int = 16, norm_eps: float = PROBE_NORM_EPS) -> AttentiveClassifier:
    """Seeded random probe for `random:probe[,key=value...]` (keys: embed_dim, num_classes, depth,
    num_heads, mlp_ratio); the spec's values win over the arguments. Same spec → same weights."""
    name, *options = spec.removeprefix("random:").split(",")
    if name.strip() not in ("", "probe"):
        raise ModelSpecError(f"unknown random probe '{spec}': use random:probe[,key=value...]")
    config = {"embed_dim": embed_dim, "num_classes": num_classes, "num_heads": num_heads,
              **parse_options(options, spec)}
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
    ckpt = load_pickle_free(path)
    if isinstance(ckpt, dict) and "classifiers" in ckpt:
        classifiers = ckpt["classifiers"]
        state_dict = classifiers[0] if isinstance(classifiers, (list, tuple)) else classifiers
    elif isinstance(ckpt, dict) and any(str(k).endswith("pooler.query_tokens") for k in ckpt):
        state_dict = ckpt
    else:
        keys = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else [type(ckpt).__name__]
        raise CheckpointError(f"{path}: no 'classifiers' entry (has {key_list(keys)}); not a probe file")
    recorded = ckpt.get("probe_config") if isinstance(ckpt, dict) else None
    if isinstance(recorded, dict):
        num_heads, norm_eps = recorded.get("num_heads", num_heads), recorded.get("norm_eps", norm_eps)
    state_dict = strip_prefixes(state_dict, prefixes=("module.",))
    for key in ("pooler.query_tokens", "linear.weight"):
        if key not in state_dict:
            raise CheckpointError(f"{path}: probe lacks '{key}'; has {key_list(sorted(state_dict))}")
    embed_dim = state_dict["pooler.query_tokens"].shape[-1]
    num_classes = state_dict["linear.weight"].shape[0]
    depth = len(block_indices(state_dict, "pooler.blocks.")) + 1
    fc1 = state_dict.get("pooler.cross_attention_block.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / embed_dim if fc1 is not None else 4.0
    model = AttentiveClassifier(
        embed_dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, depth=depth,
        num_classes=num_classes, norm_eps=norm_eps,
    )
    load_state_dict_strict(model, state_dict, str(path))
    return model.to(device).eval()
