"""Tabulate a diffusers scheduler as plain multiply-add coefficients for device runtimes.

A deterministic diffusers scheduler's update is linear in the current latents and the model outputs
seen so far. Running it once on symbolic inputs (one basis vector for the initial noise, one per model
output) yields, for every step i:

    model_input = input_scale[i] * x_i
    x_{i+1}     = sample_coeff[i] * x_i + sum_j eps_coeffs[i][j] * eps_j      (j <= i)

so the browser, Kotlin and Swift loops are the same few lines, and only this module is tested against
diffusers. Schedulers that add fresh noise per step (DDPM, ancestral) are not tabulable and are refused.
"""
from __future__ import annotations

import numpy as np

from edgekit.errors import InputError

FORMAT = "edgekit-linear-schedule/1"


def _scheduler(config: dict):
    import diffusers

    class_name = config.get("_class_name")
    cls = getattr(diffusers, class_name, None) if class_name else None
    if cls is None:
        raise InputError(f"scheduler config names no known diffusers scheduler class ({class_name!r})")
    return cls.from_config(config)


def schedule_table(config: dict, steps: int) -> dict:
    """Coefficients for ``steps`` sampling steps of the scheduler described by ``config``."""
    import torch

    if steps <= 0:
        raise InputError(f"steps {steps}: expected a positive whole number")
    sched = _scheduler(config)
    sched.set_timesteps(steps)
    timesteps = [float(t) for t in sched.timesteps]
    n = len(timesteps)
    dim = 1 + n  # basis: initial latents x_0, then one model output per call

    def basis(k: int) -> torch.Tensor:
        v = torch.zeros(1, dim, 1, 1, dtype=torch.float64)
        v[0, k] = 1.0
        return v

    x = basis(0)
    rows = {"input_scale": [], "sample_coeff": [], "eps_coeffs": []}
    for i, t in enumerate(sched.timesteps):
        scaled = sched.scale_model_input(torch.ones(1, 1, 1, 1, dtype=torch.float64), t)
        rows["input_scale"].append(float(scaled.reshape(-1)[0]))
        out = sched.step(basis(1 + i), t, x, return_dict=False)[0].to(torch.float64)
        again = _replay_step(config, steps, i)
        if again is not None and not torch.allclose(again, out, atol=1e-6):
            raise InputError(f"{config.get('_class_name')}: adds random noise at each step; pick a deterministic "
                             "scheduler (DPMSolverMultistep, DDIM, PNDM, Euler) for device bundles")
        prev, new = x.reshape(-1), out.reshape(-1)
        a = float(new[0] / prev[0])
        b = (new[1:] - a * prev[1:]).numpy()
        rows["sample_coeff"].append(a)
        rows["eps_coeffs"].append([float(v) for v in b[: i + 1]])
        x = out
    return {"format": FORMAT, "scheduler": config.get("_class_name"), "steps": steps, "timesteps": timesteps,
            "init_noise_sigma": float(sched.init_noise_sigma), **rows}


def _replay_step(config: dict, steps: int, upto: int):
    """Step ``upto`` again from a fresh scheduler with another random state: differs iff the step is noisy."""
    if upto > 0:
        return None  # one check at the first step suffices: noise injection happens at every step
    import torch

    sched = _scheduler(config)
    sched.set_timesteps(steps)
    dim = 1 + len(sched.timesteps)
    x = torch.zeros(1, dim, 1, 1, dtype=torch.float64)
    x[0, 0] = 1.0
    eps = torch.zeros_like(x)
    eps[0, 1] = 1.0
    t = sched.timesteps[0]
    sched.scale_model_input(torch.ones(1, 1, 1, 1, dtype=torch.float64), t)
    gen = torch.Generator().manual_seed(12345)
    try:
        return sched.step(eps, t, x, generator=gen, return_dict=False)[0].to(torch.float64)
    except TypeError:
        return sched.step(eps, t, x, return_dict=False)[0].to(torch.float64)


def run_table(table: dict, x0: np.ndarray, model) -> np.ndarray:
    """The device loop, in numpy: ``model(model_input, timestep) -> eps`` (guidance already applied)."""
    x = x0 * table["init_noise_sigma"]
    history: list[np.ndarray] = []
    for i, t in enumerate(table["timesteps"]):
        history.append(model(x * table["input_scale"][i], t))
        x = table["sample_coeff"][i] * x + sum(c * e for c, e in zip(table["eps_coeffs"][i], history) if c != 0.0)
    return x
