"""`random:` specs draw torch's default initialisation with one seeded generator per tensor:
the same weights whatever the thread count, the distribution torch's own `reset_parameters` gives,
and a resumed run refuses windows whose random weights were drawn another way."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from src.features import load_features, save_features
from src.models.vision_transformer import FACTORIES
from src.models.weights import RANDOM_DRAW, build_random_encoder, load_encoder, model_info
from src.models.weights.specs import draw_random_weights, parse_random_spec
from src.models.weights.loading import build_architecture
from vjepa2_sequential_extractor import SequentialVJEPA2Extractor

SPECS = ["random:tiny", "random:vjepa2_1_tiny", "random:vit_small,depth=2", "random:vjepa2_1_vit_base,depth=1"]


def torch_default(spec: str) -> nn.Module:
    """The same architecture built on the CPU, initialised by torch's own `reset_parameters`."""
    arch, overrides = parse_random_spec(spec)
    torch.manual_seed(0)
    return FACTORIES[arch](img_size=32, num_frames=16, **overrides)


@pytest.mark.parametrize("spec", SPECS)
def test_random_weights_have_torch_default_initialisation(spec):
    ours, reference = build_random_encoder(spec, img_size=32), torch_default(spec)
    owners = {name: module for module_name, module in reference.named_modules()
              for name, _ in module.named_parameters(prefix=module_name, recurse=False)}
    expected = dict(reference.named_parameters())
    drawn = dict(ours.named_parameters())
    assert drawn.keys() == expected.keys()
    uniform = 0
    for name, ref in expected.items():
        got = drawn[name].detach()
        assert got.shape == ref.shape and got.dtype == ref.dtype and got.device.type == "cpu"
        module = owners[name]
        if isinstance(module, (nn.Linear, nn.Conv3d)):
            bound = 1.0 / math.sqrt(module.weight[0].numel())
            assert ref.abs().max() <= bound  # the bound is torch's own
            assert got.abs().max() <= bound and got.abs().max() > 0.9 * bound
            if got.numel() >= 4096:  # a uniform's std is bound/sqrt(3)
                assert got.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
                assert abs(got.mean().item()) < 0.05 * bound
            uniform += 1
        else:  # LayerNorms and the constructors' zeros: constants, equal to torch's
            assert torch.equal(got, ref.detach()), name
    assert uniform > 0


def test_the_same_weights_on_any_thread_count_and_each_tensor_its_own_draw():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = build_random_encoder("random:tiny", img_size=32).state_dict()
        torch.set_num_threads(max(2, threads))
        two = build_random_encoder("random:tiny", img_size=32).state_dict()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(one[k], two[k]) for k in one)
    first, second = one["blocks.0.mlp.fc1.weight"], one["blocks.1.mlp.fc1.weight"]
    assert first.shape == second.shape and not torch.equal(first, second)
    other_seed = draw_random_weights(build_architecture(lambda: FACTORIES["tiny"](img_size=32)), seed=1)
    assert not torch.equal(other_seed.state_dict()["blocks.0.mlp.fc1.weight"], first)


def test_model_info_names_the_draw_of_random_weights_only(tmp_path):
    assert model_info(load_encoder("random:tiny", img_size=32))["random_draw"] == RANDOM_DRAW
    real = torch_default("random:tiny")
    assert model_info(real)["random_draw"] is None


def test_windows_of_random_weights_drawn_another_way_are_refused_not_mixed(bikes_every_2nd_frame, tmp_path):
    """Windows written before random weights were drawn per tensor carry no `random_draw`: a rerun
    would mix two different random encoders in one folder, so it stops and says why."""
    from src.cli import UsageError

    extractor = SequentialVJEPA2Extractor("random:tiny", device="cpu", img_size=32, num_workers=0)
    assert extractor.process_frame_directory(bikes_every_2nd_frame, tmp_path, last_frame=31)["ok"] == 2
    again = extractor.process_frame_directory(bikes_every_2nd_frame, tmp_path, last_frame=31)
    assert (again["ok"], again["skipped"]) == (0, 2)  # same draw: kept

    window = tmp_path / "window_00000.pt"
    record = load_features(window)
    assert record["model_info"]["random_draw"] == RANDOM_DRAW
    del record["model_info"]["random_draw"]  # as an older version wrote it
    save_features(record, window)
    with pytest.raises(UsageError, match=r"window_00000.pt: written by another run: random_draw None "
                                         rf"\(now '{RANDOM_DRAW}'\)"):
        extractor.process_frame_directory(bikes_every_2nd_frame, tmp_path, last_frame=31)
