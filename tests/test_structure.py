"""structure.json: config round trip, slicing plans (real smaller tensors, attributes diffusers reads),
GroupNorm validity, replay on the base architecture and mismatch errors."""
import json

import pytest
import torch

from edgekit.errors import InputError, ModelFormatError
from edgekit.structure import Structure, record, replay, unet_macs
from edgekit.unet_slicing import apply_plan, build_plan, plan_for_width, sliced_unet


def _digits_unet(seed=0):
    from diffusers import UNet2DConditionModel

    from edgekit.zoo.tiny_digits.recipe import UNET_CONFIG

    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIG).eval()


def _sd15_unet():
    from diffusers import UNet2DConditionModel

    from edgekit.zoo.sd15 import REDUCED, SD15_UNET

    torch.manual_seed(0)
    return UNet2DConditionModel(**{**SD15_UNET, **REDUCED["unet"]}).eval()


def _inputs(unet, batch=2):
    gen = torch.Generator().manual_seed(1)
    c = unet.config
    return (torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, generator=gen),
            torch.tensor([900.0, 15.0][:batch]), torch.randn(batch, 16, c.cross_attention_dim, generator=gen))


def test_structure_round_trip_and_strict_keys():
    s = record(_digits_unet(), widths=(1.0, 0.5), provenance={"command": "slim"})
    again = Structure.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s and again.widths == (0.5, 1.0) and again.slimmable
    with pytest.raises(ModelFormatError, match="did you mean 'resnets'"):
        Structure.from_dict({**s.to_dict(), "resnet": {}})
    with pytest.raises(ModelFormatError, match="include 1.0"):
        Structure.from_dict({**s.to_dict(), "widths": [0.5]})
    with pytest.raises(ModelFormatError, match=r"width 0.0: expected a multiplier in \(0, 1\]"):
        Structure.from_dict({**s.to_dict(), "widths": [0.0, 1.0]})


def test_pruning_plan_slices_real_tensors_and_attention_attributes():
    unet = _digits_unet()
    x = _inputs(unet)

    def inner(kind, path, size):
        return torch.arange(1) if kind == "attention_heads" else torch.arange(size // 2)

    small = sliced_unet(unet, build_plan(unet, inner))
    attn = small.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert (attn.heads, attn.inner_dim, tuple(attn.to_q.weight.shape)) == (1, 16, (16, 64))
    assert tuple(small.down_blocks[0].resnets[0].conv1.weight.shape) == (32, 64, 3, 3)
    ff = small.down_blocks[0].attentions[0].transformer_blocks[0].ff
    assert tuple(ff.net[0].proj.weight.shape) == (256, 64) and tuple(ff.net[2].weight.shape) == (64, 128)
    # the residual stream keeps its width, so block outputs and skips are untouched
    assert small.down_blocks[0].resnets[0].conv2.out_channels == 64
    with torch.no_grad():
        assert small(*x).sample.shape == unet(*x).sample.shape
    assert unet_macs(small) < 0.7 * unet_macs(unet)
    assert unet.down_blocks[0].resnets[0].conv1.out_channels == 64  # the source is not modified


def test_width_plan_meets_the_macs_goal_and_runs():
    unet = _digits_unet()
    full = unet_macs(unet)
    half = sliced_unet(unet, plan_for_width(unet, 0.5))
    assert half.conv_in.out_channels == 32 and half.up_blocks[-1].resnets[-1].conv2.out_channels == 32
    assert half.mid_block.attentions[0].transformer_blocks[0].attn2.heads == 2
    assert unet_macs(half) <= 0.35 * full
    with torch.no_grad():
        assert half(*_inputs(unet)).sample.shape == (2, 4, 8, 8)


def test_groupnorm_groups_are_respected():
    unet = _sd15_unet()  # 32 GroupNorm groups: its 32-channel stream cannot halve
    with pytest.raises(InputError, match="GroupNorm"):
        plan_for_width(unet, 0.5)
    three_quarters = sliced_unet(unet, plan_for_width(unet, 0.75))
    for m in three_quarters.modules():
        if isinstance(m, torch.nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0
    with torch.no_grad():
        three_quarters(*_inputs(unet))


def test_replay_then_strict_load_and_mismatch_error(tmp_path):
    from safetensors.torch import save_file

    from edgekit.structure import load_structured_unet

    unet = _digits_unet()

    def inner(kind, path, size):
        return torch.arange(max(1, size // 2)) if kind != "resnets" else torch.arange(size - 8)

    small = sliced_unet(unet, build_plan(unet, inner))
    structure = record(small)
    (tmp_path / "unet").mkdir()
    unet.save_config(tmp_path / "unet")
    save_file({k: v.contiguous() for k, v in small.state_dict().items()},
              str(tmp_path / "unet" / "diffusion_pytorch_model.safetensors"))
    again = load_structured_unet(tmp_path / "unet", structure)
    x = _inputs(unet)
    with torch.no_grad():
        assert torch.allclose(again(*x).sample, small(*x).sample, atol=1e-5)
    wrong = Structure.from_dict({**structure.to_dict(), "resnets": {**structure.resnets, "down_blocks.0.resnets.0": 48}})
    with pytest.raises(ModelFormatError, match="does not match the UNet weights"):
        load_structured_unet(tmp_path / "unet", wrong)
    bad = Structure.from_dict({**structure.to_dict(), "resnets": {"down_blocks.9.resnets.0": 8}})
    with pytest.raises(ModelFormatError, match="not layers of this UNet"):
        replay(_digits_unet(), bad)
    odd = Structure.from_dict({**structure.to_dict(), "resnets": {"down_blocks.0.resnets.0": 60}})
    with pytest.raises(ModelFormatError, match="multiple of 8"):
        replay(_digits_unet(), odd)
