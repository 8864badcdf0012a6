"""State-dict keys between our layout (Meta's original names) and transformers' `VJEPA2*` layout.

One table of (ours, theirs) rules per model, read in both directions: `to_hf` renames ours to
theirs, `from_hf` theirs to ours. A rule with several names on the transformers side is a fused
tensor whose rows are split there ([q | k | v] → query, key, value) and stacked back here.
`{i}` stands for a block index.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from src.errors import CheckpointError
from src.models.weights.loading import key_list

PARAMETER_LEAVES = ("weight", "bias")


@dataclass(frozen=True)
class KeyRule:
    """`ours` ↔ `theirs` (one name, or the names `ours`' rows are split into, in row order).
    `leaves`: the parameters under each name (a bare tensor such as `query_tokens`: ("",))."""
    ours: str
    theirs: tuple[str, ...]
    leaves: tuple[str, ...] = PARAMETER_LEAVES


def _rule(ours: str, *theirs: str, leaves: tuple[str, ...] = PARAMETER_LEAVES) -> KeyRule:
    return KeyRule(ours, theirs, leaves)


# VJEPA2Model's encoder, keys under its `encoder.` prefix (`vjepa2.encoder.` in classifier repos)
ENCODER_RULES = (
    _rule("patch_embed.proj", "embeddings.patch_embeddings.proj"),
    _rule("norm", "layernorm"),
    _rule("blocks.{i}.norm1", "layer.{i}.norm1"),
    _rule("blocks.{i}.attn.qkv", "layer.{i}.attention.query", "layer.{i}.attention.key", "layer.{i}.attention.value"),
    _rule("blocks.{i}.attn.proj", "layer.{i}.attention.proj"),
    _rule("blocks.{i}.norm2", "layer.{i}.norm2"),
    _rule("blocks.{i}.mlp.fc1", "layer.{i}.mlp.fc1"),
    _rule("blocks.{i}.mlp.fc2", "layer.{i}.mlp.fc2"),
)
# Our AttentiveClassifier ↔ VJEPA2ForVideoClassification's pooler and classifier
CLASSIFIER_RULES = (
    _rule("pooler.query_tokens", "pooler.query_tokens", leaves=("",)),
    _rule("pooler.blocks.{i}.norm1", "pooler.self_attention_layers.{i}.layer_norm1"),
    _rule("pooler.blocks.{i}.attn.qkv", "pooler.self_attention_layers.{i}.self_attn.q_proj",
          "pooler.self_attention_layers.{i}.self_attn.k_proj", "pooler.self_attention_layers.{i}.self_attn.v_proj"),
    _rule("pooler.blocks.{i}.attn.proj", "pooler.self_attention_layers.{i}.self_attn.out_proj"),
    _rule("pooler.blocks.{i}.norm2", "pooler.self_attention_layers.{i}.layer_norm2"),
    _rule("pooler.blocks.{i}.mlp.fc1", "pooler.self_attention_layers.{i}.mlp.fc1"),
    _rule("pooler.blocks.{i}.mlp.fc2", "pooler.self_attention_layers.{i}.mlp.fc2"),
    _rule("pooler.cross_attention_block.norm1", "pooler.cross_attention_layer.layer_norm1"),
    _rule("pooler.cross_attention_block.xattn.q", "pooler.cross_attention_layer.cross_attn.q_proj"),
    _rule("pooler.cross_attention_block.xattn.kv", "pooler.cross_attention_layer.cross_attn.k_proj",
          "pooler.cross_attention_layer.cross_attn.v_proj"),
    _rule("pooler.cross_attention_block.norm2", "pooler.cross_attention_layer.layer_norm2"),
    _rule("pooler.cross_attention_block.mlp.fc1", "pooler.cross_attention_layer.mlp.fc1"),
    _rule("pooler.cross_attention_block.mlp.fc2", "pooler.cross_attention_layer.mlp.fc2"),
    _rule("linear", "classifier"),
)


def _key(name: str, leaf: str) -> str:
    return f"{name}.{leaf}" if leaf else name


def _pattern(name: str, leaves: tuple[str, ...]) -> re.Pattern:
    """Regex of the keys of `name` (with `{i}` → a block index group) and its leaves."""
    body = re.escape(name).replace(re.escape("{i}"), r"(?P<i>\d+)")
    tail = "" if leaves == ("",) else r"\.(?P<leaf>" + "|".join(map(re.escape, leaves)) + ")"
    return re.compile(f"^{body}{tail}$")


def convert_keys(state_dict: dict, rules, to_hf: bool, what: str) -> dict:
    """Apply `rules` ours → theirs (`to_hf`) or theirs → ours. Fused tensors are split by rows
    (cloned, so each part owns its storage) or stacked. Every key must be consumed: a key no
    rule covers, or a fused part whose partners are missing, raises naming it."""
    out, consumed = {}, set()
    for rule in rules:
        sources, targets = ((rule.ours,), rule.theirs) if to_hf else (rule.theirs, (rule.ours,))
        pattern = _pattern(sources[0], rule.leaves)
        for key in state_dict:
            match = pattern.match(key)
            if not match:
                continue
            index, leaf = match.groupdict().get("i"), match.groupdict().get("leaf") or ""
            fill = (lambda name: name.replace("{i}", index)) if index is not None else (lambda name: name)
            parts = [_key(fill(name), leaf) for name in sources]
            if not all(p in state_dict for p in parts):
                continue  # left over: reported below
            tensor = torch.cat([state_dict[p] for p in parts], dim=0) if len(parts) > 1 else state_dict[parts[0]]
            pieces = [t.clone() for t in tensor.chunk(len(targets), dim=0)] if len(targets) > 1 else [tensor]
            out.update({_key(fill(name), leaf): piece for name, piece in zip(targets, pieces)})
            consumed.update(parts)
    rest = sorted(set(state_dict) - consumed)
    if rest:
        raise CheckpointError(f"{what}: keys with no counterpart: {key_list(rest)}")
    return out


def encoder_to_hf(state_dict: dict, prefix: str = "encoder.") -> dict:
    """Our encoder state dict → transformers `VJEPA2Model` keys (qkv split into query/key/value)."""
    return {prefix + k: v for k, v in convert_keys(state_dict, ENCODER_RULES, True, "encoder_to_hf").items()}


def encoder_from_hf(state_dict: dict, prefix: str = "encoder.") -> dict:
    """transformers encoder keys (under `prefix`) → ours (query/key/value merged into qkv).

    Keys outside `prefix` (predictor, pooler, classifier) are ignored.
    """
    sd = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    return convert_keys(sd, ENCODER_RULES, False, f"encoder_from_hf (under '{prefix}')")


def classifier_to_hf(state_dict: dict) -> dict:
    """Our `AttentiveClassifier` keys → transformers `VJEPA2ForVideoClassification` pooler/classifier keys."""
    return convert_keys(state_dict, CLASSIFIER_RULES, True, "classifier_to_hf")


def classifier_from_hf(state_dict: dict) -> dict:
    """transformers pooler/classifier keys → our `AttentiveClassifier` keys (encoder keys ignored)."""
    sd = {k: v for k, v in state_dict.items() if k.startswith(("pooler.", "classifier."))}
    return convert_keys(sd, CLASSIFIER_RULES, False, "classifier_from_hf")
