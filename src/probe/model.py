"""The probe itself: architecture, initialisation, and the probe file (original format plus
the label map and the encoder record)."""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from src.errors import ConfigError, UsageError
from src.features import save_object
from src.models.attentive_pooler import PROBE_NORM_EPS, AttentiveClassifier
from src.models.weights import load_classifier
from src.probe.data import describe_difference, encoder_identity

logger = logging.getLogger(__name__)

PROBE_FORMAT = "vjepa2-probe"


@dataclass
class ProbeConfig:
    """Architecture (the released one by default: 16 heads, depth 4, one query)."""

    embed_dim: int
    num_classes: int
    depth: int = 4
    num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_eps: float = PROBE_NORM_EPS


def build_probe(config: ProbeConfig) -> AttentiveClassifier:
    """A freshly initialised probe: truncated-normal (std 0.02) weights and query, zero biases."""
    if config.embed_dim % config.num_heads:
        raise UsageError(f"--num_heads {config.num_heads} does not divide the feature width {config.embed_dim}")
    model = AttentiveClassifier(embed_dim=config.embed_dim, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                                depth=config.depth, num_classes=config.num_classes, norm_eps=config.norm_eps)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
    nn.init.trunc_normal_(model.pooler.query_tokens, std=0.02)
    return model


def forward_batch(model: nn.Module, batch) -> torch.Tensor:
    """Logits `[B, C]` for a stacked batch, or for a list of views of differing token counts."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    return torch.cat([model(f.unsqueeze(0)) for f in batch])


def save_probe(path, model: AttentiveClassifier, config: ProbeConfig, classes: list[str], encoder_info: dict,
               extraction: dict, training: dict) -> Path:
    """The original format (`{"classifiers": [state_dict]}`, `module.` keys as released) plus our
    label map, the encoder the features came from and how the probe was trained."""
    state = {f"module.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return save_object({
        "classifiers": [state],
        "format": PROBE_FORMAT,
        "classes": list(classes),
        "probe_config": asdict(config),
        "encoder": encoder_info,
        "extraction": extraction,
        "training": training,
    }, path)


@dataclass
class LoadedProbe:
    model: AttentiveClassifier
    classes: list[str]
    encoder: dict
    extraction: dict
    training: dict
    path: Path


def load_probe(path: str | os.PathLike, device: torch.device | str = "cpu") -> LoadedProbe:
    """A probe saved by `save_probe` (released probes lack the label map and encoder: refused here)."""
    path = Path(path)
    model = load_classifier(path, device=device)
    meta = torch.load(path, map_location="cpu", weights_only=True)
    if meta.get("format") != PROBE_FORMAT or "classes" not in meta:
        raise UsageError(f"{path}: a probe without a label map or encoder record (not trained by vjepa2_probe.py "
                         "train); run released probes with vjepa2_demo.py --probe")
    classes = meta["classes"]
    if not isinstance(classes, list) or len(classes) != model.num_classes:
        count = len(classes) if isinstance(classes, list) else type(classes).__name__
        raise ConfigError(f"{path}: records {count} class names but its head has {model.num_classes} outputs "
                          "(a damaged or hand-edited probe file); train it again")
    return LoadedProbe(model.eval(), classes, meta.get("encoder") or {}, meta.get("extraction") or {},
                       meta.get("training") or {}, path)


def recorded_classes(probe_path: str | os.PathLike) -> list[str] | None:
    """The class names a probe trained by vjepa2_probe.py records (None for released probes)."""
    try:
        meta = torch.load(probe_path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a torch file: loading the probe itself says so, in one line
        return None
    if isinstance(meta, dict) and meta.get("format") == PROBE_FORMAT and isinstance(meta.get("classes"), list):
        return list(meta["classes"])
    return None


def check_encoder_record(probe_path: str | os.PathLike, info: dict) -> None:
    """For the demo: refuse an encoder other than the one a probe trained by vjepa2_probe.py
    records (the fields both describe; not the crop, nor the name: the demo may load the same
    weights from another place); released probes record none and pass."""
    meta = torch.load(probe_path, map_location="cpu", weights_only=True)
    recorded = encoder_identity(meta.get("encoder") or {}) if isinstance(meta, dict) else {}
    shared = {k: info[k] for k in recorded if k in info and k != "model_name"}
    if shared != {k: recorded[k] for k in shared}:
        raise UsageError(f"{probe_path}: trained on features of another encoder: "
                         f"{describe_difference({k: recorded[k] for k in shared}, shared)}")


def check_features_match(probe: LoadedProbe, identity: dict, settings: dict, where: str) -> None:
    """Refuse features from another encoder than the probe's; warn on other extraction settings."""
    expected = encoder_identity(probe.encoder)
    if identity != expected:
        raise UsageError(f"{where}: features from another encoder than the probe {probe.path.name} was trained on: "
                         f"{describe_difference(expected, identity)}")
    settings = {k: v for k, v in settings.items() if k != "frame_step"}
    trained = {k: probe.extraction.get(k) for k in settings}
    if settings != trained:
        logger.warning("%s: extracted with %s; the probe was trained on %s", where, settings, trained)

