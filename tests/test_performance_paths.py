"""The fast paths of the encoder and runtime give the same results as the straightforward code.

Small CPU models only; no timing assertions (bench/run.py and bench/ablation.py measure).
"""
import argparse
import logging

import pytest
import torch
import torch.nn.functional as F

from src import cli
from src.inference import ClipEncoder, to_device_keep_broadcast
from src.models.compile import CompiledForward
from src.models import fused_cpu, layers, rope
from src.models import vision_transformer as vt
from tests.helpers import small_encoder


# ----------------------------------------------------------------------------- references
def reference_rope(x, cos, sin):
    """RoPE written the obvious way: rotated companion by stack, products, cat (float64)."""
    r = cos.shape[-1]
    xr = x[..., :r].double()
    pairs = xr.unflatten(-1, (-1, 2))
    companion = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return torch.cat([xr * cos.double() + companion * sin.double(), x[..., r:].double()], dim=-1)


def reference_forward(model: vt.VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The encoder from its weights with F.linear / F.layer_norm / explicit softmax attention."""
    grid = model.patch_grid(*x.shape[2:])
    cos, sin = rope.rope_tables(grid, model.head_dim, dtype=x.dtype)
    h = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    B, N, D = h.shape
    for blk in model.blocks:
        a = F.layer_norm(h, (D,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        qkv = F.linear(a, blk.attn.qkv.weight, blk.attn.qkv.bias).view(B, N, 3, model.num_heads, model.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        q, k = reference_rope(q, cos, sin).to(x.dtype), reference_rope(k, cos, sin).to(x.dtype)
        att = torch.softmax(q @ k.transpose(-1, -2) * model.head_dim**-0.5, dim=-1) @ v
        h = h + F.linear(att.transpose(1, 2).reshape(B, N, D), blk.attn.proj.weight, blk.attn.proj.bias)
        m = F.layer_norm(h, (D,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
        m = F.linear(F.gelu(F.linear(m, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
        h = h + m
    return F.layer_norm(h, (D,), model.norm.weight, model.norm.bias, model.norm.eps)


# ----------------------------------------------------------------------------- RoPE
@pytest.mark.parametrize("head_dim", [64, 80])
def test_apply_rope_matches_reference_on_strided_views(head_dim):
    grid = (2, 3, 5)
    n, heads = 30, 3
    cos, sin = rope.rope_tables(grid, head_dim)
    qkv = torch.randn(2, n, 3, heads, head_dim)
    q = qkv.permute(2, 0, 3, 1, 4)[0]  # the strided view Attention passes in
    out = rope.apply_rope(q, cos, sin)
    assert out.shape == q.shape and out.dtype == q.dtype and out.is_contiguous()
    assert torch.allclose(out.double(), reference_rope(q, cos, sin), atol=1e-5)
    r = cos.shape[-1]
    assert torch.equal(out[..., r:], q[..., r:])  # pass-through channels untouched
    assert torch.equal(q, qkv.permute(2, 0, 3, 1, 4)[0])  # input not modified


def test_apply_rope_float64_uses_float64_tables():
    cos, sin = rope.rope_tables((2, 4, 4), 64, dtype=torch.float64)
    x = torch.randn(1, 2, 32, 64, dtype=torch.float64)
    out = rope.apply_rope(x, cos, sin)
    assert out.dtype == torch.float64
    assert torch.allclose(out, reference_rope(x, cos, sin), atol=1e-12)


def test_rope_cache_keyed_by_grid_device_and_dtype():
    cache = rope.RopeCache(64)
    f32 = cache.get((2, 4, 4), torch.device("cpu"), torch.float32)
    assert f32[0].dtype == torch.float32 and f32[0].shape == (32, 60)
    assert cache.get((2, 4, 4), "cpu", torch.float32)[0] is f32[0]  # built once, device spelled either way
    # half-precision activations get tables in their own dtype (no float32 copy of q and k),
    # made from the float32 angles: exactly the float32 tables rounded once
    bf16, fp16 = cache.get((2, 4, 4), "cpu", torch.bfloat16), cache.get((2, 4, 4), "cpu", torch.float16)
    assert bf16[0].dtype == torch.bfloat16 and torch.equal(bf16[0], f32[0].bfloat16())
    assert fp16[1].dtype == torch.float16 and torch.equal(fp16[1], f32[1].half())
    assert cache.get((2, 4, 4), "cpu", torch.bfloat16)[0] is bf16[0]  # built once
    f64 = cache.get((2, 4, 4), "cpu", torch.float64)
    assert f64[0].dtype == torch.float64 and torch.allclose(f64[0], f32[0].double(), atol=1e-6)
    other = cache.get((1, 4, 4), "cpu")
    assert other[0].shape == (16, 60)
    assert len(cache._tables) == 5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_rope_stays_in_its_dtype_and_close_to_float32(dtype):
    cos, sin = rope.rope_tables((4, 24, 24), 64)
    x = torch.randn(1, 2, 4 * 24 * 24, 64).to(dtype)
    ref = reference_rope(x, cos, sin)  # float64 from the same half inputs
    low = rope.apply_rope(x, cos.to(dtype), sin.to(dtype))
    assert low.dtype == dtype
    # tables and products rounded to the half dtype: a few of its ulps (|x| ≲ 5)
    tol = 8 * torch.finfo(dtype).eps * 5
    assert (low.double() - ref).abs().max().item() < tol
    assert torch.equal(low[..., 60:], x[..., 60:])


def test_model_in_float64_keeps_float64_rope():
    model = small_encoder("tiny", img_size=32, num_frames=4).double()
    x = torch.randn(1, 3, 4, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        ref = reference_forward(model, x)
    assert out.dtype == torch.float64
    assert (out - ref).abs().max().item() < 1e-10


# ----------------------------------------------------------------------------- whole encoder
@pytest.mark.parametrize("arch", ["tiny", "vit_large"])
@pytest.mark.parametrize("fused", [True, False])
def test_encoder_matches_straightforward_reference(arch, fused, monkeypatch):
    monkeypatch.setattr(fused_cpu, "FUSED_CPU_LINEAR", fused)
    model = small_encoder(arch, img_size=32, num_frames=4)
    x = torch.randn(2, 3, 4, 32, 48)
    with torch.inference_mode():
        out = model(x)
    with torch.no_grad():
        ref = reference_forward(model, x)
    assert (out - ref).abs().max().item() <= 1e-5


def test_fused_and_plain_paths_agree_and_layers_too(monkeypatch):
    model = small_encoder("vit_large", img_size=32, num_frames=4)
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.inference_mode():
        fused = model(x, out_layers=[0, 1])
        monkeypatch.setattr(fused_cpu, "FUSED_CPU_LINEAR", False)
        plain = model(x, out_layers=[0, 1])
    for a, b in zip(fused, plain):
        assert (a - b).abs().max().item() <= 1e-5


def test_residual_arguments_mean_residual_plus_branch():
    torch.manual_seed(0)
    attn, mlp = layers.Attention(64, 4), layers.Mlp(64, 256)
    x, r = torch.randn(2, 10, 64), torch.randn(2, 10, 64)
    cos, sin = rope.rope_tables((1, 2, 5), 16)
    with torch.inference_mode():
        assert torch.allclose(attn(x, cos, sin, residual=r), r + attn(x, cos, sin), atol=1e-5)
        assert torch.allclose(mlp(x, residual=r), r + mlp(x), atol=1e-5)


def test_fused_path_only_without_autograd_on_cpu_fp32():
    x = torch.randn(2, 3)
    with torch.inference_mode():
        assert fused_cpu.use_fused_linear(x) == (fused_cpu.ONEDNN_LINEAR is not None)
        assert not fused_cpu.use_fused_linear(x.double())
        assert not fused_cpu.use_fused_linear(x.bfloat16())
    assert not fused_cpu.use_fused_linear(x)  # grad mode on: the plain, differentiable path


def test_gradients_still_flow():
    model = small_encoder("tiny", img_size=32, num_frames=2)
    x = torch.randn(1, 3, 2, 32, 32)
    out = model(x)  # grad mode: out-of-place RoPE, nn.Linear path
    with torch.inference_mode():
        assert (out.detach() - model(x)).abs().max().item() <= 1e-5
    out.square().mean().backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
    assert model.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0


def test_patch_embedding_output_is_contiguous():
    model = small_encoder("tiny", img_size=32, num_frames=4)
    with torch.no_grad():
        tokens = model.patch_embed(torch.randn(1, 3, 4, 32, 32))
    assert tokens.is_contiguous() and tokens.shape == (1, 2 * 2 * 2, 192)


# ----------------------------------------------------------------------------- runtime
def test_compile_is_off_by_default():
    args = argparse.ArgumentParser(parents=[cli.common_parser()]).parse_args([])
    assert args.compile is False
    assert argparse.ArgumentParser(parents=[cli.common_parser()]).parse_args(["--compile"]).compile is True
    enc = ClipEncoder("random:tiny", device="cpu", img_size=32)
    assert enc.compiled is False and enc._forward == enc.model.forward_features  # the eager method itself


def test_compile_flag_wraps_only_the_forward():
    enc = ClipEncoder("random:tiny", device="cpu", img_size=32, compile=True)  # compiles lazily, not here
    assert enc.compiled is True and enc._forward != enc.model.forward_features
    assert isinstance(enc._forward, CompiledForward) and enc._forward.model is enc.model
    assert isinstance(enc.model, vt.VisionTransformer)  # attributes and state_dict keys unchanged
    assert not any(k.startswith("_orig_mod") for k in enc.model.state_dict())


def test_broadcast_dimensions_stay_broadcast():
    frame = torch.randn(2, 3, 1, 8, 8)
    clip = frame.expand(-1, -1, 16, -1, -1)
    moved = to_device_keep_broadcast(clip, torch.device("cpu"), torch.float64)
    assert moved.dtype == torch.float64 and moved.stride(2) == 0  # cast once, not 16 times
    assert torch.equal(moved, clip.contiguous().double())
    plain = torch.randn(1, 3, 4, 8, 8)
    assert to_device_keep_broadcast(plain, torch.device("cpu"), torch.float32) is plain


def test_encode_of_expanded_frames_equals_materialised():
    enc = ClipEncoder("random:tiny", device="cpu", img_size=32)
    frame = torch.randn(2, 3, 1, 32, 32)
    a = enc.encode(frame.expand(-1, -1, 4, -1, -1))
    b = enc.encode(frame.expand(-1, -1, 4, -1, -1).contiguous())
    assert a.dtype == torch.float16 and torch.equal(a, b)


def test_half_precision_overflow_is_reported_once(caplog):
    """fp16 compute can overflow inside the encoder; the features then hold inf/NaN, which `encode`
    says (once) instead of storing them quietly. fp32 is never checked (nothing to overflow)."""
    import logging

    enc = ClipEncoder("random:tiny", device="cpu", dtype="fp16", img_size=32)
    clips = torch.rand(1, 3, 4, 32, 32)
    with caplog.at_level(logging.WARNING, logger="src.inference"):
        ok = enc.encode(clips)
    assert torch.isfinite(ok).all() and "inf/NaN" not in caplog.text
    with torch.no_grad():
        enc.model.patch_embed.proj.weight.mul_(1e7)  # weights and activations beyond fp16's 65504
    with caplog.at_level(logging.WARNING, logger="src.inference"):
        bad = enc.encode(clips)
        enc.encode(clips)
    assert not torch.isfinite(bad).all()
    assert caplog.text.count("features contain inf/NaN with float16 compute (overflow): use --dtype bf16 or fp32") == 1


# ----------------------------------------------------------------------------- torch.compile
def counting_backend(counter: list):
    """A torch.compile backend that runs the captured graph as is and counts compilations."""
    def backend(graph_module, example_inputs):
        counter.append(len(graph_module.graph.nodes))
        return graph_module.forward
    return backend


@pytest.mark.parametrize("arch,frames,layers", [
    ("tiny", 4, "last"), ("tiny", 4, "hierarchical"), ("tiny", 4, (0, 1)),
    ("vjepa2_1_tiny", 4, "hierarchical"), ("vjepa2_1_tiny", 1, "last"),  # 2.1: norms_block, image path
])
def test_encoder_compiles_to_one_graph_without_breaks(arch, frames, layers):
    model = vt.FACTORIES[arch](img_size=32, num_frames=frames).eval()
    compiled = CompiledForward(model, backend="eager")
    x = torch.randn(2, 3, frames, 32, 32)
    cos, sin = model.rope_tables_for(x)  # built outside the compiled region
    with torch.inference_mode():
        explanation = torch._dynamo.explain(compiled.trunk)(x, cos, sin, layers)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons


def test_compiled_forward_never_recompiles_for_calls_or_batch_sizes():
    model = small_encoder("tiny", img_size=32, num_frames=4)
    graphs = []
    compiled = CompiledForward(model, backend=counting_backend(graphs))
    x = torch.randn(3, 3, 4, 32, 32)
    with torch.inference_mode():
        eager = model.forward_features(x, "hierarchical")
        first = compiled(x[:2], "hierarchical")  # compiles for batch 2
        again = compiled(x[:2], "hierarchical")
        partial = compiled(x[:1], "hierarchical")  # padded to 2
        bigger = compiled(x, "hierarchical")  # chunks of 2
        expanded = compiled(x[:2, :, :1].expand(-1, -1, 4, -1, -1), "hierarchical")  # other strides
    normal = torch.randn(2, 3, 4, 32, 32)  # a tensor made outside inference mode (as a DataLoader's)
    with torch.inference_mode():
        plain = compiled(normal, "hierarchical")
    assert len(graphs) == 1 and graphs[0] > 20  # one whole-encoder graph, compiled once
    for got, want in ((first, eager[:2]), (again, eager[:2]), (partial, eager[:1]), (bigger, eager)):
        assert got.shape == want.shape and (got - want).abs().max().item() < 1e-5
    with torch.inference_mode():
        want = model.forward_features(x[:2, :, :1].expand(-1, -1, 4, -1, -1), "hierarchical")
        assert (expanded - want).abs().max().item() < 1e-5
        assert (plain - model.forward_features(normal, "hierarchical")).abs().max().item() < 1e-5


def test_compile_failure_falls_back_to_eager_with_one_warning(caplog):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler here")

    model = small_encoder("tiny", img_size=32, num_frames=4)
    compiled = CompiledForward(model, backend=broken_backend)
    x = torch.randn(2, 3, 4, 32, 32)
    with caplog.at_level(logging.WARNING, logger="src.models.compile"), torch.inference_mode():
        outputs = [compiled(x), compiled(x[:1]), compiled(x)]
        eager = model.forward_features(x)
    warnings_ = [r for r in caplog.records if r.name == "src.models.compile"]
    assert len(warnings_) == 1 and "running the encoder eagerly" in warnings_[0].getMessage()
    assert "no C++ compiler here" in warnings_[0].getMessage() and compiled.failed
    assert torch.equal(outputs[0], eager) and torch.equal(outputs[1], eager[:1]) and torch.equal(outputs[2], eager)
