"""Step caching (edgekit.step_cache, DeepCache): the shallow UNet fed the feature of the same step is the full
UNet; interval 1 is the plain loop; a cached loop runs the plan and differs from the plain one; bad intervals and
UNets with nowhere to cache are refused naming the parameter."""
import numpy as np
import pytest
import torch

SLIM = "edgekit/zoo/tiny_digits/slim"


@pytest.fixture(scope="module")
def pipe():
    from edgekit.pipeline import load_pipeline

    return load_pipeline(SLIM)


def _inputs(unet, seed=0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    return (torch.randn(batch, unet.config.in_channels, size, size, generator=gen), torch.tensor([900.0, 20.0])[:batch],
            torch.randn(batch, 16, unet.config.cross_attention_dim, generator=gen))


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_shallow_fed_the_same_steps_feature_is_the_full_unet(width):
    from edgekit.pipeline import load_pipeline
    from edgekit.step_cache import ShallowUNet, UNetWithFeature, feature_channels

    unet = load_pipeline(SLIM, width=width).unet.eval()
    x, t, ctx = _inputs(unet)
    with torch.no_grad():
        plain = unet(x, t, ctx, return_dict=False)[0]
        out, feature = UNetWithFeature(unet)(x, t, ctx)
        shallow = ShallowUNet(unet)(x, t, ctx, feature)
        other_feature = UNetWithFeature(unet)(*_inputs(unet, seed=5))[1]
        stale = ShallowUNet(unet)(x, t, ctx, other_feature)
    assert feature.shape[1] == feature_channels(unet) and feature.shape[2:] == x.shape[2:]
    assert torch.equal(out, plain)
    assert torch.allclose(shallow, plain, rtol=1e-5, atol=1e-5), float((shallow - plain).abs().max())
    # the feature matters: another step's feature gives another output
    assert float((stale - plain).abs().max()) > 1e-3


def test_shallow_branch_on_sd15_architecture(sd15_reduced):
    """SD-1.5's block layout (cross-attention in the first level, downsampler there) at reduced width."""
    from edgekit.pipeline import load_pipeline
    from edgekit.step_cache import ShallowUNet, UNetWithFeature

    unet = load_pipeline(sd15_reduced).unet.eval()
    gen = torch.Generator().manual_seed(0)
    s = unet.config.sample_size
    x = torch.randn(1, unet.config.in_channels, s, s, generator=gen)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen)
    t = torch.tensor([500.0])
    with torch.no_grad():
        plain = unet(x, t, ctx, return_dict=False)[0]
        _, feature = UNetWithFeature(unet)(x, t, ctx)
        shallow = ShallowUNet(unet)(x, t, ctx, feature)
    assert torch.allclose(shallow, plain, rtol=1e-4, atol=1e-5), float((shallow - plain).abs().max())


def test_plan():
    from edgekit.step_cache import cache_plan, parse_intervals

    assert cache_plan(1, 4) == ["full"] * 4
    assert cache_plan(2, 5) == ["full", "shallow", "full", "shallow", "full"]
    assert cache_plan(3, 8) == ["full", "shallow", "shallow"] * 2 + ["full", "shallow"]
    assert cache_plan(8, 8) == ["full"] + ["shallow"] * 7
    assert parse_intervals("3,2") == (1, 2, 3)


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "x", "", "2,,3"])
def test_bad_intervals_name_the_parameter(bad):
    from edgekit.errors import InputError
    from edgekit.step_cache import parse_intervals

    with pytest.raises(InputError) as info:
        parse_intervals(bad)
    assert str(info.value).startswith("cache")


def test_interval_past_the_step_count_is_refused():
    from edgekit.errors import InputError
    from edgekit.step_cache import cache_plan

    with pytest.raises(InputError, match=r"^cache 9: is larger than the step count 8"):
        cache_plan(9, 8)


def test_unet_with_one_up_block_is_refused():
    from diffusers import UNet2DConditionModel

    from edgekit.errors import InputError
    from edgekit.step_cache import UNetWithFeature

    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32,),
                                down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                                layers_per_block=1, cross_attention_dim=32, norm_num_groups=8)
    with pytest.raises(InputError, match=r"^cache: the UNet has 1 up block\(s\)"):
        UNetWithFeature(unet)


def test_cached_loop_runs_the_plan_and_interval_1_is_the_plain_loop(pipe):
    from edgekit.pipeline import generate
    from edgekit.step_cache import caching_unet, generate_cached

    prompts, seeds = ["a handwritten digit three", "a handwritten digit seven"], [11, 12]
    plain = generate(pipe, prompts, seeds, 4, 4.0)
    assert np.array_equal(generate_cached(pipe, prompts, seeds, 4, 4.0, 1), plain)
    with caching_unet(pipe, 2, 4) as stand_in:
        cached = generate(pipe, prompts, seeds, 4, 4.0)
        assert stand_in.ran == ["full", "shallow", "full", "shallow"]
    assert pipe.unet is stand_in.inner  # put back
    diff = np.abs(cached - plain)
    assert 0 < diff.mean() < 0.1, diff.mean()  # an approximation of the same image, not another image
