"""The embedded default: a plain diffusers StableDiffusionPipeline with the structure later stages need."""
import json

import numpy as np
import pytest
import torch

from edgekit.pipeline import generate, sampling_defaults


@pytest.mark.parametrize("which", ["pipeline", "slim"])
def test_loads_and_runs_with_plain_diffusers(which):
    """The shipped directories run with the plain call any hub checkpoint gets (no dtype argument), and draw
    what edgekit's own loader draws for the same noise (edgekit.noise's latents for the seed)."""
    from diffusers import StableDiffusionPipeline

    from edgekit.pipeline import load_pipeline
    from edgekit.zoo.tiny_digits import CLASSIFIER_DIR

    model = CLASSIFIER_DIR.parent / which
    pipe = StableDiffusionPipeline.from_pretrained(model)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"
    assert type(pipe.vae).__name__ == "AutoencoderKL"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel"
    assert type(pipe.tokenizer).__name__ == "CLIPTokenizer"
    assert "Multistep" in type(pipe.scheduler).__name__
    assert {pipe.text_encoder.dtype, pipe.unet.dtype, pipe.vae.dtype} == {torch.float32}
    pipe.set_progress_bar_config(disable=True)
    from edgekit.noise import initial_latents

    size = pipe.unet.config.sample_size
    plain = pipe("a handwritten digit seven", num_inference_steps=4, guidance_scale=2.0,
                 latents=torch.from_numpy(initial_latents([0], (pipe.unet.config.in_channels, size, size))),
                 output_type="np").images
    ours = generate(load_pipeline(model), ["a handwritten digit seven"], [0], steps=4, guidance_scale=2.0)
    assert np.isfinite(plain).all()
    np.testing.assert_allclose(plain, ours, atol=1e-5)


def test_structure_later_issues_need(default_pipe):
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.resnet import ResnetBlock2D

    unet = default_pipe.unet
    cross_levels = [b for b in unet.down_blocks if getattr(b, "has_cross_attention", False)]
    assert len(cross_levels) >= 2
    attentions = [m for m in unet.modules() if isinstance(m, Attention)]
    assert attentions and all(a.heads >= 2 for a in attentions)
    assert any(a.is_cross_attention for a in attentions)
    resnets = [m for m in unet.modules() if isinstance(m, ResnetBlock2D)]
    assert resnets and all(isinstance(r.norm1, torch.nn.GroupNorm) for r in resnets)
    assert all(r.conv1.out_channels % 8 == 0 for r in resnets)
    feed_forwards = [m for m in unet.modules() if isinstance(m, FeedForward)]
    assert len(feed_forwards) == len([a for a in attentions if not a.is_cross_attention])


def test_shipped_weights_fit_the_budget(default_model):
    total = sum(p.stat().st_size for p in default_model.rglob("*") if p.is_file())
    assert total <= 20 * 1024 * 1024, total


def test_ships_its_sampling_defaults(default_model):
    defaults = sampling_defaults(default_model)
    assert defaults.steps == 20
    assert 1.0 < defaults.guidance_scale < 10.0
    recorded = json.loads((default_model.parent / "training.json").read_text())
    assert recorded["classifier"]["heldout_accuracy"] >= 0.97


def test_generation_is_deterministic_per_seed_and_batch_independent(default_pipe):
    prompts = ["a handwritten digit three", "a handwritten digit five"]
    both = generate(default_pipe, prompts, [7, 8], steps=4, guidance_scale=4.0)
    alone = generate(default_pipe, prompts[1:], [8], steps=4, guidance_scale=4.0)
    again = generate(default_pipe, prompts[1:], [8], steps=4, guidance_scale=4.0)
    other_seed = generate(default_pipe, prompts[1:], [9], steps=4, guidance_scale=4.0)
    assert both.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(alone, again)
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)
    assert np.abs(other_seed - alone).mean() > 1e-3


def test_generate_cli_writes_a_png(run_cli, tmp_path):
    from PIL import Image

    out = tmp_path / "sub" / "seven.png"
    code, stdout, err = run_cli("generate", "--prompt", "a handwritten digit seven", "--steps", "8", "--seed", "3",
                                "--out", out, "--scale", "4", "--json")
    assert code == 0, err
    payload = json.loads(stdout)
    assert payload["steps"] == 8 and payload["seed"] == 3
    assert Image.open(out).size == (128, 128)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    first = out.read_bytes()
    code, _, err = run_cli("generate", "--prompt", "a handwritten digit seven", "--steps", "8", "--seed", "4",
                           "--out", out, "--force")
    assert code == 0, err
    assert out.read_bytes() != first  # an existing image is replaced with --force (refused without it)
    code, _, err = run_cli("generate", "--prompt", "x", "--out", tmp_path)
    assert code == 2 and "--out" in err and "not a file" in err
