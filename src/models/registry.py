"""The architectures of the released encoders (and Meta's other factory names), as data.

Each entry is a dict of `VisionTransformer` arguments; `build_factories(cls)` turns the table
into Meta's factory functions (`vit_large(img_size=…, num_frames=…, **overrides)`): the
architecture's arguments, then the caller's (any constructor argument by name; a misspelled
one raises, there is no catch-all). `src.models.vision_transformer` builds them with its class,
so Meta's import path `from src.models.vision_transformer import vit_large` works.
"""
from __future__ import annotations

from typing import Callable

# The options that make a 2.1 encoder, as Meta's hub builds the released ones.
V2_1_OPTIONS = dict(rope_layout="interleave", interpolate_rope=True, modality_embedding=True,
                    img_temporal_dim_size=1, norms_block=True)

ARCHITECTURES: dict[str, dict] = {
    "vit_large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0),
    "vit_huge": dict(embed_dim=1280, depth=32, num_heads=16, mlp_ratio=4.0),
    # V-JEPA 2 giant: 22 heads. A 16-head variant loads the same weights but computes wrong features.
    "vit_giant_xformers": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11),
    # The reference factory misspells its mlp-ratio keyword, so the released model uses ratio 4.
    "vit_gigantic_xformers": dict(embed_dim=1664, depth=48, num_heads=26, mlp_ratio=4.0),
    # The original's other factories (no released V-JEPA 2 encoder uses them; note 16-head giants).
    "vit_tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "vit_small": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0),
    "vit_base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    "vit_giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11),
    "vit_gigantic": dict(embed_dim=1664, depth=48, num_heads=16, mlp_ratio=4.0),
    # Not a released model: a few-MB encoder for tests and offline smoke runs (`random:tiny`).
    "tiny": dict(embed_dim=192, depth=2, num_heads=3, mlp_ratio=4.0),
    # V-JEPA 2.1 (all released at 384 px). Gigantic's MLP is 8192 wide here (the 2.0 typo is fixed).
    "vjepa2_1_vit_base": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0, **V2_1_OPTIONS),
    "vjepa2_1_vit_large": dict(embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0, **V2_1_OPTIONS),
    "vjepa2_1_vit_giant": dict(embed_dim=1408, depth=40, num_heads=22, mlp_ratio=48 / 11, **V2_1_OPTIONS),
    "vjepa2_1_vit_gigantic": dict(embed_dim=1664, depth=48, num_heads=26, mlp_ratio=64 / 13, **V2_1_OPTIONS),
    "vjepa2_1_tiny": dict(embed_dim=192, depth=4, num_heads=3, mlp_ratio=4.0, **V2_1_OPTIONS),
}
# Nominal crop of each family's released checkpoints (2.1 files are all `_384`).
DEFAULT_IMG_SIZE = {name: 384 if name.startswith("vjepa2_1_") else 256 for name in ARCHITECTURES}
# Names that build the same model as another: Meta's `_rope` variants only set use_rope=True
# (our default), and 2.1's hub entry points carry a `_384` suffix.
ALIASES = {**{f"{name}_rope": name for name in ARCHITECTURES if name.startswith("vit_")},
           **{f"{name}_384": name for name in ARCHITECTURES if name.startswith("vjepa2_1_vit_")}}


def _factory(cls: type, arch: str) -> Callable:
    """`arch(img_size=…, num_frames=16, **overrides)`: the architecture's arguments, then the
    caller's (any `cls` argument by name, Meta's included; a misspelled one raises)."""
    def factory(img_size: int | tuple[int, int] = DEFAULT_IMG_SIZE[arch], num_frames: int = 16, **overrides):
        return cls(**{"img_size": img_size or DEFAULT_IMG_SIZE[arch], "num_frames": num_frames,
                      **ARCHITECTURES[arch], **overrides})

    factory.__name__ = factory.__qualname__ = arch
    factory.__doc__ = f"{arch}: {ARCHITECTURES[arch]}."
    return factory


def build_factories(cls: type) -> dict[str, Callable]:
    """One factory per architecture and alias name, building `cls`."""
    factories = {name: _factory(cls, name) for name in ARCHITECTURES}
    return {**factories, **{alias: factories[name] for alias, name in ALIASES.items()}}


def architecture_name(name: str) -> str:
    """The `ARCHITECTURES` key of a factory or alias name (`vit_large_rope` → `vit_large`)."""
    return ALIASES.get(name, name)
