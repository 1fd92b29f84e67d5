"""Tabulated schedules reproduce diffusers' own sampling loop, stochastic schedulers included (their noise
injected), and the shared noise generator and guidance rules match their references."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.errors import InputError
from edgekit.schedule import (GUIDANCE_CFG, GUIDANCE_COND, GUIDANCE_EMBEDDING, SUPPORTED, TABLE_CHECK_TOL,
                              guidance_embedding, guidance_mode, run_table, schedule_table)

VECTORS = Path(__file__).resolve().parent.parent / "edgekit" / "twin_vectors"
SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
EXTRA = {"PNDMScheduler": {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1},
         "DDIMScheduler": {"clip_sample": False}, "DDPMScheduler": {"clip_sample": False}}


def _fake_model(x, t):
    """A non-linear stand-in for the UNet: the table must not assume anything about it."""
    return np.tanh(0.7 * x + np.sin(np.asarray(t, dtype=np.float64) / 97.0)) + 0.1 * x


def _config(name, **extra):
    import diffusers

    config = dict(getattr(diffusers, name).from_config({**SD_BETAS, **EXTRA.get(name, {}), **extra}).config)
    config["_class_name"] = name
    return config


def _diffusers_loop(config, steps, x0, noise, monkeypatch):
    """diffusers' loop with step i's randn_tensor draw replaced by noise[i] (patched in the scheduler's module)."""
    import sys

    import diffusers

    sched = getattr(diffusers, config["_class_name"]).from_config(config)
    sched.set_timesteps(steps)
    module = sys.modules[type(sched).__module__]
    current = [0]
    if hasattr(module, "randn_tensor"):
        monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: torch.from_numpy(noise[current[0]]))
    x = torch.from_numpy(x0).to(torch.float64) * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        current[0] = i
        inp = sched.scale_model_input(x, t)
        eps = torch.from_numpy(_fake_model(inp.numpy(), float(t)))
        x = sched.step(eps, t, x, return_dict=False)[0].to(torch.float64)
    return x.numpy()


@pytest.mark.parametrize("name", SUPPORTED)
@pytest.mark.parametrize("steps,spacing", [(1, "trailing"), (4, "leading"), (4, "trailing"), (20, "leading")])
def test_table_matches_diffusers(name, steps, spacing, monkeypatch):
    config = _config(name, timestep_spacing=spacing)
    rng = np.random.default_rng(steps)
    x0 = rng.standard_normal((2, 4, 8, 8))
    noise = rng.standard_normal((2 * steps + 1, 2, 4, 8, 8))  # Heun/KDPM2 take two timesteps per step
    table = schedule_table(config, steps)
    expected = _diffusers_loop(config, steps, x0, noise, monkeypatch)
    got = run_table(table, x0, _fake_model, lambda j: noise[j])
    assert len(table["timesteps"]) == len(table["sample_coeff"]) == len(table["eps_coeffs"]) == len(table["noise_coeffs"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    stochastic = name in ("EulerAncestralDiscreteScheduler", "LCMScheduler", "DDPMScheduler", "TCDScheduler")
    if not stochastic or steps > 1:  # one LCM/TCD step ends on the x0 prediction: no noise left to add
        assert table["stochastic"] == stochastic, table["noise_coeffs"]


def test_stochastic_tables_add_the_given_noise_and_need_it():
    table = schedule_table(_config("EulerAncestralDiscreteScheduler"), 4)
    x0 = np.ones((1, 4))
    a = run_table(table, x0, _fake_model, lambda j: np.zeros((1, 4)))
    b = run_table(table, x0, _fake_model, lambda j: np.full((1, 4), float(j + 1)))
    assert not np.allclose(a, b)
    with pytest.raises(InputError, match="needs noise"):
        run_table(table, x0, _fake_model)


def test_unsupported_scheduler_is_refused_naming_the_supported_ones():
    config = {**SD_BETAS, "_class_name": "KDPM2AncestralDiscreteScheduler"}
    with pytest.raises(InputError, match="KDPM2AncestralDiscreteScheduler.*supported: DDIMScheduler.*LCMScheduler"):
        schedule_table(config, 4)


def test_clipping_and_impossible_step_counts_are_refused():
    with pytest.raises(InputError, match="clip_sample=true"):
        schedule_table({**_config("DDIMScheduler"), "clip_sample": True}, 4)
    with pytest.raises(InputError, match="PNDMScheduler: cannot take 1 steps"):
        schedule_table(_config("PNDMScheduler", skip_prk_steps=False), 1)


@pytest.mark.parametrize("g,dim,mode", [(0.0, None, GUIDANCE_COND), (1.0, None, GUIDANCE_COND),
                                        (1.0001, None, GUIDANCE_CFG), (7.5, None, GUIDANCE_CFG),
                                        (8.0, 256, GUIDANCE_EMBEDDING), (1.0, 256, GUIDANCE_EMBEDDING)])
def test_guidance_mode_is_diffusers_rule(g, dim, mode):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.__new__(StableDiffusionPipeline)
    pipe._guidance_scale = g
    pipe.unet = type("U", (), {"config": type("C", (), {"time_cond_proj_dim": dim})()})()
    assert guidance_mode(g, dim) == mode
    assert pipe.do_classifier_free_guidance == (mode == GUIDANCE_CFG)


@pytest.mark.parametrize("g,dim", [(8.0, 256), (1.5, 64), (0.0, 33)])
def test_guidance_embedding_matches_diffusers(g, dim):
    from diffusers import StableDiffusionPipeline

    expected = StableDiffusionPipeline.get_guidance_scale_embedding(None, torch.tensor([g - 1.0]), embedding_dim=dim)
    np.testing.assert_allclose(guidance_embedding(g, dim), expected[0].numpy(), rtol=1e-6, atol=1e-6)


def test_noise_vectors_are_the_generator_and_random123s_answers():
    from sampling_vectors import build_noise_vectors

    assert json.loads((VECTORS / "noise.json").read_text()) == json.loads(json.dumps(build_noise_vectors()))


def test_noise_streams_are_standard_normal_and_independent():
    from edgekit.noise import normals, step_noise

    z = normals(3, 0, 200_000)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert abs(np.corrcoef(normals(3, 1, 100_000), normals(3, 2, 100_000))[0, 1]) < 0.01
    assert abs(np.corrcoef(normals(3, 1, 100_000), normals(4, 1, 100_000))[0, 1]) < 0.01
    np.testing.assert_array_equal(step_noise([3], 0, (4, 2, 2))[0].reshape(-1), normals(3, 1, 16).astype(np.float32))


def test_scheduler_vectors_match_edgekit_schedule():
    from sampling_vectors import build_scheduler_vectors

    stored = json.loads((VECTORS / "scheduler.json").read_text())
    fresh = build_scheduler_vectors()
    assert [c["name"] for c in stored["cases"]] == [c["name"] for c in fresh["cases"]]
    for a, b in zip(stored["cases"], fresh["cases"]):
        assert (a["guidance_mode"], a["cond_calls"], a["uncond_calls"]) == (b["guidance_mode"], b["cond_calls"], b["uncond_calls"])
        # the tables come from diffusers' schedulers, which compute in float32 torch: another CPU (other SIMD
        # paths) differs in the last float32 place, measured up to 2.3e-7 in a coefficient and 8.9e-7 at -12
        # in a trajectory; edgekit.schedule checks its tables against diffusers at TABLE_CHECK_TOL as well
        np.testing.assert_allclose(a["expected"], b["expected"], rtol=TABLE_CHECK_TOL, atol=1e-6)
        for key in ("sample_coeff", "input_scale", "timesteps"):
            np.testing.assert_allclose(a["table"][key], b["table"][key], rtol=TABLE_CHECK_TOL, atol=1e-9)
    modes = {(c["guidance_mode"], c["table"]["stochastic"]) for c in stored["cases"]}
    assert {(GUIDANCE_CFG, False), (GUIDANCE_COND, False), (GUIDANCE_CFG, True), (GUIDANCE_EMBEDDING, True)} <= modes
    assert {c["sampling"]["guidance_scale"] for c in stored["cases"]} >= {0.0, 1.0, 7.5}
