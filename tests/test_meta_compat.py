"""Drop-in for Meta's code: its factories and keyword arguments, `forward(x, masks)`, absolute
position embeddings (V-JEPA 1 style checkpoints) and head counts that shapes cannot tell."""
import logging
import math
from functools import partial

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.models import layers, rope
from src.models import vision_transformer as vt
from src.models.weights import CheckpointError, ModelSpecError, load_encoder


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_original(path, model, key="encoder"):
    torch.save({key: {f"module.backbone.{k}": v.clone() for k, v in model.state_dict().items()}, "epoch": 1}, path)
    return path


# ----------------------------------------------------------------------------- factories and kwargs
@pytest.mark.parametrize("name,width,depth,heads,hidden", [
    ("vit_tiny", 192, 12, 3, 768),          # the original's vit_tiny (our random:tiny is a separate 2-block arch)
    ("vit_small", 384, 12, 6, 1536),
    ("vit_base", 768, 12, 12, 3072),
    ("vit_giant", 1408, 40, 16, 6144),      # 16 heads, unlike vit_giant_xformers
    ("vit_giant_rope", 1408, 40, 16, 6144),
    ("vit_giant_xformers_rope", 1408, 40, 22, 6144),
])
def test_original_factories(name, width, depth, heads, hidden):
    factory = getattr(vt, name)
    assert vt.ARCHITECTURES[name.removesuffix("_rope")]["depth"] == depth
    model = factory(depth=1)
    assert (model.embed_dim, model.num_heads, model.blocks[0].mlp.fc1.out_features) == (width, heads, hidden)


def test_meta_call_site_keywords_build_and_run():
    # what Meta's hub / eval code passes, by name
    model = vt.vit_large(
        patch_size=16, img_size=(64, 64), num_frames=4, tubelet_size=2, depth=2,
        use_sdpa=True, use_silu=False, wide_silu=True, uniform_power=True, use_rope=True,
        handle_nonsquare_inputs=True, qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), init_std=0.02, use_activation_checkpointing=False,
        out_layers=None,
    ).eval()
    assert model.img_size == 64 and model.norm.eps == 1e-6
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 64, 64)).shape == (1, 2 * 16, 1024)


def test_meta_call_site_loads_an_original_checkpoint(tmp_path):
    """As Meta's eval wrappers do: build with the factory, then load the file's stripped keys strictly."""
    source = perturbed(vt.vit_giant_xformers(img_size=32, num_frames=2, depth=1))
    path = save_original(tmp_path / "vitg.pt", source, key="target_encoder")
    model = vt.vit_giant_xformers_rope(img_size=32, num_frames=2, depth=1, use_sdpa=True, use_silu=False,
                                       wide_silu=True, uniform_power=True, use_rope=True).eval()
    state = torch.load(path, weights_only=True)["target_encoder"]
    model.load_state_dict({k.replace("module.", "").replace("backbone.", ""): v for k, v in state.items()}, strict=True)
    x = torch.randn(1, 3, 2, 32, 48)
    with torch.no_grad():
        assert (model(x) - load_encoder(str(path), checkpoint_key="target_encoder")(x)).abs().max() == 0
        assert (model(x) - source(x)).abs().max() == 0


def test_unimplemented_values_and_misspellings_fail():
    with pytest.raises(ValueError, match=r"use_silu=True .* is not implemented"):
        vt.vit_large(depth=1, use_silu=True)
    with pytest.raises(TypeError):
        vt.vit_large(depth=1, use_rop=True)  # no catch-all: a typo is an error
    with pytest.warns(UserWarning, match="not applied: this encoder is for inference"):
        vt.vit_large(depth=1, drop_path_rate=0.1)


def test_qk_scale_norm_layer_and_init_std_are_honoured():
    torch.manual_seed(0)
    attn = layers.Attention(64, 2, scale=0.05)
    x = torch.randn(1, 5, 64)
    q, k, v = attn.qkv(x).view(1, 5, 3, 2, 32).permute(2, 0, 3, 1, 4)
    by_hand = ((q @ k.transpose(-1, -2)) * 0.05).softmax(-1) @ v  # [B, heads, N, hd]
    expected = attn.proj(by_hand.transpose(1, 2).reshape(1, 5, 64))
    with torch.no_grad():
        assert (attn(x) - expected).abs().max() < 1e-5
    model = vt.vit_small(depth=2, norm_layer=partial(nn.LayerNorm, eps=1e-3), init_std=0.02)
    assert model.norm.eps == 1e-3 and model.blocks[1].norm1.eps == 1e-3
    assert abs(model.blocks[0].mlp.fc1.weight.std().item() - 0.02) < 0.001  # truncated at ±2 (absolute, as the original)
    assert model.blocks[0].mlp.fc1.bias.abs().max() == 0
    ratio = model.blocks[1].attn.proj.weight.std() / model.blocks[0].attn.proj.weight.std()
    assert abs(ratio.item() - math.sqrt(2 / 4)) < 0.02  # output projections divided by sqrt(2·layer)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = vt.vit_small(img_size=32, num_frames=2, depth=2)
    ckpt = vt.vit_small(img_size=32, num_frames=2, depth=2, use_activation_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 2, 32, 32)
    plain(x).square().sum().backward()
    ckpt(x).square().sum().backward()
    assert torch.allclose(plain.blocks[0].attn.qkv.weight.grad, ckpt.blocks[0].attn.qkv.weight.grad, atol=1e-5)


# ----------------------------------------------------------------------------- masks
@pytest.fixture(scope="module")
def small():
    return perturbed(vt.vit_small(img_size=32, num_frames=4, depth=2))


def test_masks_keep_token_indices_with_their_positions(small):
    x = torch.randn(2, 3, 4, 32, 48)  # grid (2, 2, 3): 12 tokens, non-square
    with torch.no_grad():
        full = small(x)
        everything = small(x, masks=torch.arange(12).expand(2, -1))
        perm = torch.stack([torch.randperm(12), torch.randperm(12)])
        permuted = small(x, perm)  # positional second argument = masks, as the original
        subset = small(x, masks=perm[:, :5])
        two = small(x, masks=[perm[:, :5], perm[:, 5:10]])
    assert (everything - full).abs().max() < 1e-5
    # a permutation of all tokens: each token keeps its own grid position, so its feature is unchanged
    assert (permuted - full.gather(1, perm[..., None].expand(-1, -1, full.shape[-1]))).abs().max() < 1e-4
    assert subset.shape == (2, 5, 384)
    assert (subset - full.gather(1, perm[:, :5, None].expand(-1, -1, 384))).abs().max() > 1e-2  # attends to 5 only
    assert two.shape == (4, 5, 384) and (two[:2] - subset).abs().max() < 1e-5


def test_mask_shape_is_checked(small):
    with pytest.raises(ValueError, match=r"a mask must be \[B, K\] token indices with B = 1"):
        small(torch.randn(1, 3, 4, 32, 32), masks=torch.arange(4))


# ----------------------------------------------------------------------------- absolute position embeddings
def hand_forward(state: dict, x: torch.Tensor, heads: int, pos: torch.Tensor) -> torch.Tensor:
    """A non-RoPE ViT written out from the formula: tubelet conv, + pos, pre-norm blocks, norm."""
    w = state["patch_embed.proj.weight"]
    h = F.conv3d(x, w, state["patch_embed.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2) + pos
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    ln = lambda t, p: F.layer_norm(t, t.shape[-1:], state[f"{p}.weight"], state[f"{p}.bias"], eps=1e-6)
    B, N, D = h.shape
    for i in range(depth):
        p = f"blocks.{i}."
        qkv = F.linear(ln(h, p + "norm1"), state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.view(B, N, 3, heads, D // heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-1, -2)) / math.sqrt(D // heads)).softmax(-1) @ v
        h = h + F.linear(a.transpose(1, 2).reshape(B, N, D), state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        m = F.gelu(F.linear(ln(h, p + "norm2"), state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]))
        h = h + F.linear(m, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
    return ln(h, "norm")


@pytest.fixture(scope="module")
def vjepa1_file(tmp_path_factory):
    """A V-JEPA 1 style encoder (no RoPE, a stored pos_embed for 16 frames at 64 px) in the original layout."""
    model = perturbed(vt.vit_small(img_size=64, num_frames=16, depth=2, use_rope=False), seed=3)
    with torch.no_grad():
        model.pos_embed.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("v1") / "vjepa1_small.pt"
    save_original(path, model, key="target_encoder")
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def test_pos_embed_checkpoint_at_its_own_grid(vjepa1_file):
    path, state = vjepa1_file
    model = load_encoder(str(path))
    assert model.generation == "1" and model.img_size == 64 and model.pos_embed_grid == (8, 4, 4)
    x = torch.randn(1, 3, 16, 64, 64)
    with torch.no_grad():
        ours = model(x)
    expected = hand_forward(state, x, heads=6, pos=state["pos_embed"])
    assert (ours - expected).abs().max() < 1e-4
    # without its positions the features are far off: dropping pos_embed was silently wrong
    assert (hand_forward(state, x, heads=6, pos=0) - expected).abs().max() > 0.1


@pytest.mark.parametrize("frames,height,width", [(8, 96, 64), (4, 64, 64), (16, 32, 80)])
def test_pos_embed_resized_for_another_grid(vjepa1_file, frames, height, width):
    path, state = vjepa1_file
    model = load_encoder(str(path))
    x = torch.randn(1, 3, frames, height, width)
    table = state["pos_embed"]
    grid = (frames // 2, height // 16, width // 16)
    if grid[1:] == (4, 4):  # same size, fewer frames: the first frames' rows
        pos = table[:, : math.prod(grid)]
    else:  # trilinear over (T, H, W), scale factors new/stored
        volume = table.reshape(1, 8, 4, 4, -1).permute(0, 4, 1, 2, 3)
        pos = F.interpolate(volume, size=grid, mode="trilinear", align_corners=False)
        pos = pos.permute(0, 2, 3, 4, 1).reshape(1, -1, table.shape[-1])
    with torch.no_grad():
        ours = model(x)
    assert (ours - hand_forward(state, x, heads=6, pos=pos)).abs().max() < 1e-4


def test_giant_head_count_is_chosen_and_said(tmp_path, caplog):
    source = perturbed(vt.vit_giant(img_size=32, num_frames=2, depth=1))  # 16 heads, 1408 wide
    path = save_original(tmp_path / "giant16.pt", source)
    x = torch.randn(1, 3, 2, 32, 32)
    with caplog.at_level(logging.INFO, logger="src.models.weights"):
        default = load_encoder(str(path), img_size=32)
    assert default.num_heads == 22
    assert "width 1408: 22 heads, those of the released encoder of this width" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.models.weights"):
        sixteen = load_encoder(str(path), img_size=32, num_heads=16)
    assert sixteen.num_heads == 16 and "width 1408: 16 heads, as given" in caplog.text
    with torch.no_grad():
        assert (sixteen(x) - source(x)).abs().max() < 1e-4
        assert (default(x) - source(x)).abs().max() > 1e-2  # same shapes, wrong features
    with pytest.raises(CheckpointError, match="num_heads 15 does not divide the width 1408"):
        load_encoder(str(path), num_heads=15)
    with pytest.raises(ModelSpecError, match="applies to original .pt checkpoints"):
        load_encoder("random:tiny", num_heads=3)


def test_handle_nonsquare_inputs_false_reads_positions_on_the_nominal_grid():
    pos = rope.grid_positions((1, 2, 3), row_grid=(2, 2))
    # 6 tokens read against a 2×2 frame: (t, h, w) from the flat index
    assert pos.tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1]]
    torch.manual_seed(0)
    new = vt.vit_small(img_size=32, num_frames=2, depth=1).eval()
    old = vt.vit_small(img_size=32, num_frames=2, depth=1, handle_nonsquare_inputs=False).eval()
    old.load_state_dict(new.state_dict())
    with torch.no_grad():
        square = torch.randn(1, 3, 2, 32, 32)
        assert (old(square) - new(square)).abs().max() < 1e-5  # the same at the nominal size
        wide = torch.randn(1, 3, 2, 32, 48)
        assert (old(wide) - new(wide)).abs().max() > 1e-3
