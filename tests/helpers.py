"""Shared test helpers: small random models saved in every source format."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model
from transformers.initialization import no_init_weights

from src.models.attentive_pooler import AttentiveClassifier
from src.models.vision_transformer import FACTORIES, VisionTransformer
from src.models.weights import classifier_to_hf, encoder_to_hf, hf_config_dict


def small_encoder(arch: str = "vit_large", img_size: int = 32, num_frames: int = 4, depth: int = 2, seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    model = FACTORIES[arch](img_size=img_size, num_frames=num_frames, depth=depth).eval()
    # Non-trivial LayerNorm affine parameters, so a swapped norm key would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def _uninitialised(model_class, config):
    """``model_class(config)`` with only its predictor initialised: every other weight is overwritten
    by a converted one (load_state_dict(strict=True) checks), and initialising a 1408-wide encoder's
    weights would take seconds."""
    with no_init_weights():
        model = model_class(config)
    predictor = model.predictor if hasattr(model, "predictor") else model.vjepa2.predictor
    for module in predictor.modules():
        model._init_weights(module)
    return model.eval()


def hf_model_from(encoder: VisionTransformer, **config_overrides) -> VJEPA2Model:
    """transformers VJEPA2Model carrying our encoder's weights (through our conversion)."""
    config = VJEPA2Config(**{**hf_config_dict(encoder), "pred_num_hidden_layers": 1, **config_overrides})
    hf = _uninitialised(VJEPA2Model, config)
    state = hf.state_dict()
    converted = encoder_to_hf(encoder.state_dict())
    assert set(converted) <= set(state), sorted(set(converted) - set(state))[:5]
    state.update(converted)
    hf.load_state_dict(state, strict=True)
    return hf


def write_original_checkpoint(path: Path, encoder: VisionTransformer, target: VisionTransformer | None = None) -> Path:
    """An original-format file: `module.backbone.`-prefixed keys, `encoder` and `target_encoder`."""
    def wrap(model):
        return {f"module.backbone.{k}": v.clone() for k, v in model.state_dict().items()}

    torch.save(
        {
            "encoder": wrap(encoder),
            "target_encoder": wrap(target if target is not None else encoder),
            "epoch": 10,
            "opt": {},
        },
        path,
    )
    return path


def small_classifier(embed_dim: int = 64, num_classes: int = 174, seed: int = 1, num_heads: int = 16) -> AttentiveClassifier:
    torch.manual_seed(seed)
    clf = AttentiveClassifier(embed_dim=embed_dim, num_heads=num_heads, num_classes=num_classes).eval()
    with torch.no_grad():
        clf.pooler.query_tokens.normal_(0, 0.5)
        for name, p in clf.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return clf


def write_probe(path: Path, classifier: AttentiveClassifier) -> Path:
    torch.save({"classifiers": [{f"module.{k}": v.clone() for k, v in classifier.state_dict().items()}], "epoch": 20}, path)
    return path


def hf_classifier_from(encoder: VisionTransformer, classifier: AttentiveClassifier) -> VJEPA2ForVideoClassification:
    config = VJEPA2Config(
        **{**hf_config_dict(encoder), "pred_num_hidden_layers": 1, "num_labels": classifier.num_classes,
           "layer_norm_eps": 1e-5}
    )
    hf = _uninitialised(VJEPA2ForVideoClassification, config)
    state = hf.state_dict()
    state.update({f"vjepa2.{k}": v for k, v in encoder_to_hf(encoder.state_dict()).items()})
    state.update(classifier_to_hf(classifier.state_dict()))
    hf.load_state_dict(state, strict=True)
    return hf
