import math
import re
from pathlib import Path

import pytest
import torch

from src.models import layers as model_layers
from src.models import rope
from src.models import vision_transformer as vt
from src.models.flops import count_forward_flops
from tests.helpers import hf_model_from, small_encoder


@pytest.mark.parametrize("arch,width,heads", [
    ("vit_large", 1024, 16),
    ("vit_huge", 1280, 16),           # head_dim 80: 26+26+26 rotated, 2 passed through
    ("vit_giant_xformers", 1408, 22),
])
@pytest.mark.parametrize("frames", [2, 6])
@pytest.mark.parametrize("size", [32, 48])
def test_matches_transformers(arch, width, heads, frames, size):
    model = small_encoder(arch, img_size=size, num_frames=frames)
    assert (model.embed_dim, model.num_heads) == (width, heads)
    hf = hf_model_from(model)  # crop_size = size, frames_per_clip = frames
    torch.manual_seed(1)
    x = torch.randn(2, 3, frames, size, size)
    with torch.no_grad():
        ours = model(x)
        ref = hf.get_vision_features(x.permute(0, 2, 1, 3, 4))  # HF wants [B, T, C, H, W]
    tokens = (frames // 2) * (size // 16) ** 2
    assert ours.shape == ref.shape == (2, tokens, width)
    assert (ours - ref).abs().max().item() <= 1e-4


def _explicit_rope(vec, t, h, w, head_dim):
    """The facts-sheet formula written out channel by channel, in float64."""
    s = 2 * ((head_dim // 3) // 2)
    out = list(vec)
    for axis, pos in enumerate((t, h, w)):
        base = axis * s
        for k in range(s):
            angle = pos * (1.0 / 10000 ** ((k % (s // 2)) / (s / 2)))
            companion = -vec[base + k + 1] if k % 2 == 0 else vec[base + k - 1]
            out[base + k] = vec[base + k] * math.cos(angle) + companion * math.sin(angle)
    return out


def test_rope_on_non_square_input_uses_real_grid(monkeypatch):
    model = small_encoder("tiny", img_size=256, num_frames=4)  # head_dim 64
    captured = []
    original = model_layers.apply_rope  # what Attention calls

    def spy(x, cos, sin):
        out = original(x, cos, sin)
        captured.append((x.detach().clone(), out.detach().clone()))
        return out

    monkeypatch.setattr(model_layers, "apply_rope", spy)
    x = torch.randn(1, 3, 4, 256, 384)  # grid (2, 16, 24): non-square
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 2 * 16 * 24, 192)
    q_in, q_out = captured[0]  # first block, queries: [B, heads, N, head_dim]
    Hp, Wp = 16, 24
    for t, h, w in [(1, 5, 17), (0, 15, 23), (1, 0, 1)]:
        n = t * Hp * Wp + h * Wp + w
        for head in range(q_in.shape[1]):
            vec = q_in[0, head, n].double().tolist()
            expected = torch.tensor(_explicit_rope(vec, t, h, w, 64), dtype=torch.float64)
            assert torch.allclose(q_out[0, head, n].double(), expected, atol=1e-5), (t, h, w, head)
    # the 4 leftover channels pass through unrotated
    assert torch.equal(q_in[..., 60:], q_out[..., 60:])


def test_rope_angles_float32_for_half_inputs():
    cos, sin = rope.rope_tables((4, 24, 24), 64)
    assert cos.dtype == torch.float32 and cos.shape == (4 * 24 * 24, 60)
    x = torch.randn(1, 2, 4 * 24 * 24, 64)
    x_bf16 = x.bfloat16()
    ref = rope.apply_rope(x_bf16.float(), cos, sin)  # same inputs, rotated in float32
    low = rope.apply_rope(x_bf16, cos, sin)
    assert low.dtype == torch.bfloat16
    # angles and products stay float32: only the final cast rounds (bf16: 2^-9 relative)
    assert torch.equal(low, ref.bfloat16())


def test_head_dim_80_keeps_two_channels():
    assert rope.rope_axis_dim(80) == 26 and rope.rope_axis_dim(64) == 20
    cos, _ = rope.rope_tables((1, 2, 2), 80)
    assert cos.shape[-1] == 78


def test_factories_and_aliases():
    assert vt.vit_giant_xformers_rope is vt.vit_giant_xformers
    g = vt.vit_giant_xformers(img_size=384, num_frames=64, depth=1)
    assert (g.embed_dim, g.num_heads, g.blocks[0].mlp.fc1.out_features) == (1408, 22, 6144)
    big = vt.vit_gigantic_xformers(depth=1)
    assert (big.embed_dim, big.num_heads, big.blocks[0].mlp.fc1.out_features) == (1664, 26, 6656)
    h = vt.vit_huge(depth=1)
    assert h.head_dim == 80
    with pytest.raises(TypeError):
        vt.vit_large(depht=2)  # a misspelled option is an error, not silently ignored


def test_out_layers_and_input_checks():
    model = small_encoder("tiny", depth=3)
    x = torch.randn(1, 3, 2, 32, 32)
    with torch.no_grad():
        last = model(x)
        layers = model(x, out_layers=[0, -1])
    assert len(layers) == 2 and torch.allclose(layers[1], last)
    assert not torch.allclose(layers[0], last)
    with pytest.raises(ValueError, match="does not tile"):
        model(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, C, T, H, W\]"):
        model(torch.randn(3, 2, 32, 32))


def test_forward_features_and_intermediates_give_the_outputs_without_flags():
    model = small_encoder("tiny", depth=4)
    x = torch.randn(2, 3, 2, 32, 48)
    with torch.no_grad():
        last = model(x)
        blocks = model(x, out_layers=[1, -1])
        hier = model.forward_features(x, "hierarchical")
        assert torch.equal(model.forward_features(x), last)  # "last" is forward's default output
        assert torch.equal(model.forward_features(x, [1, 3]), torch.cat(blocks, dim=-1))
        inter = model.forward_intermediates(x, [1, -1])
    assert [tuple(t.shape) for t in inter] == [(2, 6, 192)] * 2
    assert all(torch.equal(a, b) for a, b in zip(inter, blocks))
    # 2.0: the 4 levels are the hierarchical blocks through the one `norm`
    assert model.hierarchical_layers == [0, 1, 2, 3] and hier.shape == (2, 6, 4 * 192)
    assert torch.equal(hier[..., -192:], last)
    with torch.no_grad():
        assert torch.equal(hier, torch.cat(model.forward_intermediates(x, [0, 1, 2, 3]), dim=-1))
    with pytest.raises(ValueError, match="layers must be"):
        model.forward_features(x, "deepest")
    with pytest.raises(AttributeError, match="fixed at construction"):
        model.return_hierarchical = True


def test_no_code_outside_the_model_sets_attributes_on_it():
    """The model returns its outputs: nobody flips a flag on it to change what it returns."""
    repo = Path(__file__).resolve().parents[1]
    assignment = re.compile(r"\b(?:self\.)?(?:model|encoder|_model|enc)\.(return_hierarchical|out_layers)\s*=[^=]")
    offenders = []
    for path in [*repo.glob("*.py"), *(repo / "src").rglob("*.py"), *(repo / "bench").rglob("*.py")]:
        if (repo / "src" / "models") in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if assignment.search(line):
                offenders.append(f"{path.relative_to(repo)}:{number}: {line.strip()}")
    assert not offenders, offenders
    assert assignment.search("        self.model.return_hierarchical = True")  # the pattern finds what it should


def test_flop_count_matches_hand_computation():
    model = vt.vit_large(depth=1)
    n, d = 8 * 16 * 16, 1024
    expected = 2 * n * d * 3 * 2 * 256 + 2 * n * d * (4 * d + 2 * 4096) + 4 * n * n * d
    assert count_forward_flops(model, 16, 256, 256) == expected
