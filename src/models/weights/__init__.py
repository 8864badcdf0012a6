"""Model specs → ready encoders and probes; key mapping to and from the transformers layout.

Modules: `specs` (spec → encoder, `load_encoder`), `original` (Meta's `.pt` files), `hub`
(transformers directories and the hub), `hf_keys` (key mapping both ways), `probes`
(`load_classifier`), `loading` (strict loading, prefixes, pickle-free reads).


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
from src.errors import CheckpointError, ModelSpecError
from src.models.weights.hf_keys import (
    CLASSIFIER_RULES, ENCODER_RULES, classifier_from_hf, classifier_to_hf, convert_keys, encoder_from_hf,
    encoder_to_hf,
)
from src.models.weights.hub import DEFAULT_HUB_MODEL, download_hub_model, hf_config_dict, load_hf_directory
from src.models.weights.loading import block_indices, load_pickle_free, load_state_dict_strict, strip_prefixes
from src.models.weights.original import (
    ENCODER_KEYS_V2_0, ENCODER_KEYS_V2_1_LARGE, ENCODER_KEYS_V2_1_SMALL, HEADS_BY_WIDTH, V2_1_KEY_MARKERS,
    checkpoint_generation, choose_checkpoint_key, infer_architecture, load_original_checkpoint, pos_embed_grid,
)
from src.models.weights.probes import build_random_classifier, load_classifier
from src.models.weights.specs import (
    CHECKPOINT_SUFFIXES, RANDOM_SEED, build_random_encoder, load_encoder, model_info, resolve_spec_kind,
)

__all__ = [
    "CHECKPOINT_SUFFIXES", "CLASSIFIER_RULES", "CheckpointError", "DEFAULT_HUB_MODEL", "ENCODER_KEYS_V2_0",
    "ENCODER_KEYS_V2_1_LARGE", "ENCODER_KEYS_V2_1_SMALL", "ENCODER_RULES", "HEADS_BY_WIDTH", "ModelSpecError",
    "RANDOM_SEED", "V2_1_KEY_MARKERS", "block_indices", "build_random_classifier", "build_random_encoder",
    "checkpoint_generation", "choose_checkpoint_key", "classifier_from_hf", "classifier_to_hf", "convert_keys",
    "download_hub_model", "encoder_from_hf", "encoder_to_hf", "hf_config_dict", "infer_architecture",
    "load_classifier", "load_encoder", "load_hf_directory", "load_original_checkpoint", "load_pickle_free",
    "load_state_dict_strict", "model_info", "pos_embed_grid", "resolve_spec_kind", "strip_prefixes",
]
