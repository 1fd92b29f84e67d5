"""Tabulated schedules reproduce diffusers' own sampling loop."""
import numpy as np
import pytest
import torch

from edgekit.errors import InputError
from edgekit.schedule import run_table, schedule_table

SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def _fake_model(x, t):
    """A non-linear stand-in for the UNet: the table must not assume anything about it."""
    return np.tanh(0.7 * x + np.sin(np.asarray(t, dtype=np.float64) / 97.0)) + 0.1 * x


def _diffusers_loop(config, steps, x0):
    import diffusers

    sched = getattr(diffusers, config["_class_name"]).from_config(config)
    sched.set_timesteps(steps)
    x = torch.from_numpy(x0).to(torch.float64) * sched.init_noise_sigma
    for t in sched.timesteps:
        inp = sched.scale_model_input(x, t)
        eps = torch.from_numpy(_fake_model(inp.numpy(), float(t)))
        x = sched.step(eps, t, x, return_dict=False)[0].to(torch.float64)
    return x.numpy()


@pytest.mark.parametrize("name,extra", [
    ("DPMSolverMultistepScheduler", {}),
    ("PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1}),
    ("EulerDiscreteScheduler", {}),
    ("DDIMScheduler", {"clip_sample": False}),
])
@pytest.mark.parametrize("steps", [4, 20])
def test_table_matches_diffusers(name, extra, steps):
    import diffusers

    config = dict(getattr(diffusers, name).from_config({**SD_BETAS, **extra}).config)
    config["_class_name"] = name
    x0 = np.random.default_rng(0).standard_normal((2, 4, 8, 8))
    expected = _diffusers_loop(config, steps, x0)
    table = schedule_table(config, steps)
    got = run_table(table, x0, _fake_model)
    assert len(table["timesteps"]) == len(table["sample_coeff"]) == len(table["eps_coeffs"])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_noisy_scheduler_is_refused():
    config = {**SD_BETAS, "_class_name": "EulerAncestralDiscreteScheduler"}
    with pytest.raises(InputError, match="random noise"):
        schedule_table(config, 4)
