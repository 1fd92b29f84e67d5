"""Every model family's device loop equals diffusers' own pipeline: SD-2-style (v-prediction, linear
projection, per-block heads, "!" padding), turbo-style (Euler trailing, guidance 0), LCM (its noise and
guidance embedding), Euler ancestral (its noise), BK-SDM-style (no mid block). Built at reduced size from
SD-1.5's builder with random weights. diffusers gets the bundle's own noise (the shared counter-based
generator) as its initial latents and, patched into the scheduler's randn_tensor, as each step's draw.
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.constants import EDGEKIT_DEFAULTS
from edgekit.noise import initial_latents, step_noise
from helpers import FAMILIES, build_family

PROMPTS = ["a photo of a cat", "a red painting of the moon"]
SEEDS = [3, 4294967295]


@pytest.fixture(scope="module")
def family(sd15_reduced, tmp_path_factory):
    made = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = build_family(sd15_reduced, tmp_path_factory.mktemp(name) / "pipeline", name)
        return made[name]

    return get


def diffusers_images(model_dir: Path, steps: int, guidance: float) -> np.ndarray:
    """diffusers' StableDiffusionPipeline with the shared generator's noise: initial latents and each step's draw."""
    from edgekit.pipeline import load_pipeline

    pipe = load_pipeline(model_dir)
    module = sys.modules[type(pipe.scheduler).__module__]
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    images, original = [], getattr(module, "randn_tensor", None)
    try:
        for prompt, seed in zip(PROMPTS, SEEDS):
            def draw(*_, **__):
                return torch.from_numpy(step_noise([seed], pipe.scheduler.step_index, shape))
            if original is not None:
                module.randn_tensor = draw
            with torch.inference_mode():
                out = pipe(prompt=[prompt], num_inference_steps=steps, guidance_scale=guidance,
                           latents=torch.from_numpy(initial_latents([seed], shape)), output_type="np")
            images.append(out.images[0])
    finally:
        if original is not None:
            module.randn_tensor = original
    return np.stack(images).astype(np.float32)


def torch_components(pipe):
    """The pipeline's own torch modules as the sampler's numpy callables (the loop alone under test)."""
    from edgekit.runtime.sampler import Components

    @torch.inference_mode()
    def text_encoder(ids):
        return pipe.text_encoder(torch.from_numpy(np.asarray(ids, dtype=np.int64)))[0].numpy()

    @torch.inference_mode()
    def unet(sample, timestep, hidden, timestep_cond=None):
        cond = None if timestep_cond is None else torch.from_numpy(timestep_cond)
        return pipe.unet(torch.from_numpy(sample), torch.from_numpy(timestep), torch.from_numpy(hidden),
                         timestep_cond=cond).sample.numpy()

    @torch.inference_mode()
    def vae_decoder(latents):
        return pipe.vae.decode(torch.from_numpy(latents)).sample.numpy()

    return Components(text_encoder, unet, vae_decoder)


def loop_images(model_dir: Path, steps: int, guidance: float) -> tuple[np.ndarray, int]:
    """The device loop (edgekit.runtime.sampler.sample over a schedule table) with the model's torch modules."""
    from edgekit.pipeline import load_pipeline, scheduler_config
    from edgekit.runtime.sampler import Timing, load_tokenizer, sample
    from edgekit.schedule import guidance_embedding, guidance_mode, schedule_table

    pipe = load_pipeline(model_dir)
    pipe.tokenizer.save_pretrained(model_dir.parent / "tok")  # the tokenizer.json a bundle ships
    encode = load_tokenizer(model_dir.parent / "tok" / "tokenizer.json", pipe.tokenizer.model_max_length,
                            pipe.tokenizer.pad_token_id)
    dim = pipe.unet.config.time_cond_proj_dim
    mode = guidance_mode(guidance, dim)
    shape = (pipe.unet.config.in_channels, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    calls = []
    components = torch_components(pipe)
    counting = components.unet

    def unet(*args):
        calls.append(len(args[0]))
        return counting(*args)

    components.unet = unet
    images, _ = sample(components, encode, schedule_table(scheduler_config(model_dir), steps), PROMPTS, SEEDS,
                       guidance, shape, pipe.vae.config.scaling_factor, mode=mode,
                       timestep_cond=guidance_embedding(guidance, dim) if dim else None)
    return images, sum(calls)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_device_loop_equals_diffusers(family, name):
    _, _, _, _, guidance, steps = FAMILIES[name]
    model = family(name)
    expected = diffusers_images(model, steps, guidance)
    got, unet_rows = loop_images(model, steps, guidance)
    err = float(np.abs(got - expected).max())
    print(f"{name}: max abs {err:.2e} over {len(PROMPTS)} images, {steps} steps, guidance {guidance:g}")
    assert err < 1e-4, err
    cfg = guidance > 1 and name != "lcm"
    assert unet_rows == len(PROMPTS) * steps * (2 if cfg else 1)  # no unconditional pass without guidance


def test_turbo_at_guidance_0_uses_the_prompt(family):
    """Guidance 0 is the conditional prediction, as diffusers has it: two prompts give two images."""
    from edgekit.runtime.sampler import sample

    model = family("turbo")
    images, _ = loop_images(model, 1, 0.0)
    assert np.abs(images[0] - images[1]).max() > 1e-3
    assert sample  # the loop under test


def test_sd2_tokenizer_pads_with_bang(family):
    from edgekit.pipeline import load_pipeline

    pipe = load_pipeline(family("sd2"))
    ids = pipe.tokenizer("a cat", padding="max_length", max_length=pipe.tokenizer.model_max_length).input_ids
    assert pipe.tokenizer.pad_token_id == 0 and ids[-1] == 0 != pipe.tokenizer.eos_token_id


@pytest.fixture(scope="module")
def bundle(family, tmp_path_factory):
    """(family, target) -> an exported bundle shipping the family's own step counts."""
    from edgekit.cli import main

    made = {}

    def get(name: str, target: str) -> Path:
        if (name, target) not in made:
            out = tmp_path_factory.mktemp(f"{name}-{target}") / "bundle"
            steps = FAMILIES[name][5]
            assert main(["export", "--model", str(family(name)), "--target", target, "--steps", f"1,{steps}",
                         "--out", str(out)]) == 0
            made[(name, target)] = out
        return made[(name, target)]

    return get


def _bundle_equals_diffusers(bundle_dir: Path, model: Path, name: str):
    from edgekit.bundle import read_manifest
    from edgekit.runtime.sampler import BundleSampler

    _, _, _, _, guidance, steps = FAMILIES[name]
    m = read_manifest(bundle_dir)
    assert sorted(m["sampling"]["schedules"], key=int) == sorted({"1", str(steps)}, key=int)
    images, timing = BundleSampler(bundle_dir).generate(PROMPTS, SEEDS, steps, 1.0)
    expected = diffusers_images(model, steps, guidance)
    err = float(np.abs(images - expected).max())
    print(f"{name} {m['target']} bundle: max abs {err:.2e} ({len(PROMPTS)} images, {steps} steps, guidance {guidance:g})")
    assert err < 1e-4
    return m, timing


def test_lcm_ort_web_bundle_equals_diffusers(bundle, family):
    """The guidance embedding through the ONNX export, the stochastic table through the bundle sampler."""
    m, timing = _bundle_equals_diffusers(bundle("lcm", "ort-web"), family("lcm"), "lcm")
    assert m["sampling"]["guidance_mode"] == "embedding" and m["sampling"]["guidance_embedding"]["dim"] == 32
    unet = m["components"]["unet"]["widths"]["1.00"]
    assert [t["name"] for t in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states", "timestep_cond"]
    assert m["sampling"]["schedules"]["4"]["stochastic"] and timing.unet_calls == 4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["euler-ancestral", "turbo"])
def test_ort_web_bundle_equals_diffusers(bundle, family, name):
    m, timing = _bundle_equals_diffusers(bundle(name, "ort-web"), family(name), name)
    assert m["sampling"]["guidance_mode"] == ("classifier-free" if name == "euler-ancestral" else "conditional")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lcm", "turbo"])
def test_tflite_bundle_equals_diffusers(bundle, family, name):
    """LiteRT: fixed shapes; without classifier-free guidance the UNet is exported at batch 1."""
    m, _ = _bundle_equals_diffusers(bundle(name, "tflite"), family(name), name)
    assert m["components"]["unet"]["widths"]["1.00"]["inputs"][0]["shape"][0] == 1


def test_export_steps_and_guidance_flags_replace_the_defaults(family, tmp_path, run_cli):
    """--steps replaces every default step list; --guidance sets the bundle's guidance and its mode."""
    from edgekit.pipeline import sampling_defaults
    from edgekit.profiles import TargetProfile, profiles_dir
    from edgekit.targets.base import sampling_plan

    model = family("turbo")
    profile = TargetProfile.from_yaml(profiles_dir() / "web-ort.yaml")
    assert sampling_defaults(model).offered_steps == (1, 2)
    plan = sampling_plan(model, profile)
    assert sorted(plan["schedules"], key=int) == ["1", "2"] and plan["guidance_mode"] == "conditional"
    plan = sampling_plan(model, profile, steps=(1, 3), guidance=5.0)
    assert sorted(plan["schedules"], key=int) == ["1", "3"] and plan["guidance_mode"] == "classifier-free"
    assert plan["default_steps"] == 2 or plan["default_steps"] == 3


@pytest.mark.parametrize("command", ["export", "package"])
def test_unsupported_scheduler_is_refused_before_any_work(family, tmp_path, run_cli, command):
    import shutil
    import time

    model = tmp_path / "model"
    shutil.copytree(family("turbo"), model)
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "_class_name": "KDPM2AncestralDiscreteScheduler"}))
    argv = (["export", "--target", "ort-web"] if command == "export" else ["package", "--targets", "ort-web"])
    start = time.perf_counter()
    code, out, err = run_cli(*argv, "--model", model, "--out", tmp_path / "out")
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "KDPM2AncestralDiscreteScheduler" in line and "supported: " in line and "LCMScheduler" in line, err
    assert not (tmp_path / "out").exists() and time.perf_counter() - start < 20


@pytest.mark.parametrize("offered", [[], [0, 2], "1,2", [1.5]])
def test_bad_offered_steps_are_refused_naming_the_file(tmp_path, offered):
    from edgekit.errors import ModelFormatError
    from edgekit.pipeline import sampling_defaults

    (tmp_path / EDGEKIT_DEFAULTS).write_text(json.dumps({"offered_steps": offered}))
    with pytest.raises(ModelFormatError, match=f"{EDGEKIT_DEFAULTS}: offered_steps"):
        sampling_defaults(tmp_path)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_fewstep_student_trains_through_the_scheduler_it_ships(steps):
    """The distillation's differentiable DDIM steps are the student directory's DDIMScheduler (trailing)."""
    from diffusers import UNet2DConditionModel

    from edgekit.zoo.tiny_digits.recipe import ddim_unrolled, student_scheduler

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=4, norm_num_groups=8).eval()
    x, hidden = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 32)
    sched = student_scheduler()
    sched.set_timesteps(steps)
    expected = x.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            expected = sched.step(unet(expected, t, hidden).sample, t, expected).prev_sample
        got = ddim_unrolled(unet, x, hidden, steps)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
