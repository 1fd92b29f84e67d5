"""Tabulate a diffusers scheduler as plain multiply-add coefficients for device runtimes.

A supported diffusers scheduler's update is linear in the current latents, the model outputs seen so far
and the fresh noise it draws. Running it once on symbolic inputs (one basis vector for the initial
noise, one per model output, one per step's noise) yields, for every step i:

    model_input = input_scale[i] * x_i
    x_{i+1}     = sample_coeff[i] * x_i + sum_j eps_coeffs[i][j] * eps_j + sum_j noise_coeffs[i][j] * z_j

(j <= i; z_j is the standard normal noise of step j from edgekit.noise, stream j + 1 of the image's seed),
so the browser, Kotlin and Swift loops are the same few lines and only this module is tested against
diffusers. Every table is checked once more against the scheduler itself on random numbers before it is
returned. ``schedule_table`` is the one entry point that (re)computes a table from a scheduler config.

Guidance follows diffusers' StableDiffusionPipeline: classifier-free guidance (two UNet passes) only for
guidance_scale > 1 on a UNet without a guidance embedding; otherwise the conditional prediction alone,
with the guidance embedding fed as ``timestep_cond`` where the UNet has ``time_cond_proj_dim`` (LCM).
"""
from __future__ import annotations

import contextlib
import sys

import numpy as np

from edgekit.errors import InputError

FORMAT = "edgekit-linear-schedule/2"
# Schedulers whose tables are tested against diffusers (tests/test_schedule.py); the device twins run
# any table, so this list is what the tables reproduce, not what the twins know.
SUPPORTED = ("DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler", "DPMSolverMultistepScheduler",
             "DPMSolverSinglestepScheduler", "EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
             "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "LCMScheduler", "LMSDiscreteScheduler",
             "PNDMScheduler", "TCDScheduler", "UniPCMultistepScheduler")
NON_LINEAR_OPTIONS = ("clip_sample", "thresholding")  # they clip the x0 prediction: no multiply-add form
GUIDANCE_CFG = "classifier-free"  # uncond + g * (cond - uncond): two UNet passes
GUIDANCE_COND = "conditional"  # the conditional prediction only (guidance_scale <= 1)
GUIDANCE_EMBEDDING = "embedding"  # conditional only, guidance fed as the UNet's timestep_cond (LCM)
GUIDANCE_MODES = (GUIDANCE_CFG, GUIDANCE_COND, GUIDANCE_EMBEDDING)
TABLE_CHECK_TOL = 1e-5  # relative, table vs the diffusers loop (schedulers keep float32 sigmas internally)


def guidance_mode(guidance_scale: float, time_cond_proj_dim: int | None = None) -> str:
    """How a device applies ``guidance_scale``, as diffusers' StableDiffusionPipeline does."""
    if time_cond_proj_dim:
        return GUIDANCE_EMBEDDING
    return GUIDANCE_CFG if guidance_scale > 1.0 else GUIDANCE_COND


def guidance_embedding(guidance_scale: float, dim: int) -> np.ndarray:
    """The w-embedding an LCM-style UNet takes as ``timestep_cond``: diffusers' own
    get_guidance_scale_embedding of w = guidance_scale - 1 (float32; its sines of w * 1000 are sensitive to
    the last bit, so devices read these values from the manifest instead of recomputing them): (dim,)."""
    import torch
    from diffusers import StableDiffusionPipeline

    w = torch.tensor([float(guidance_scale) - 1.0])
    return StableDiffusionPipeline.get_guidance_scale_embedding(None, w, embedding_dim=int(dim))[0].numpy()


def check_supported(config: dict, where: str = "scheduler") -> str:
    """The scheduler's class name, or InputError naming it and the supported list."""
    name = config.get("_class_name") if isinstance(config, dict) else None
    if name not in SUPPORTED:
        raise InputError(f"{where}: {name!r} has no device schedule table; supported: {', '.join(SUPPORTED)}")
    on = [k for k in NON_LINEAR_OPTIONS if config.get(k)]
    if on:
        raise InputError(f"{where}: {name} with {' and '.join(f'{k}=true' for k in on)} clips its x0 prediction, "
                         "which a multiply-add table cannot carry; set it to false")
    return name


def _scheduler(config: dict):
    import diffusers

    class_name = config.get("_class_name")
    cls = getattr(diffusers, class_name, None) if class_name else None
    if cls is None:
        raise InputError(f"scheduler config names no known diffusers scheduler class ({class_name!r})")
    return cls.from_config(config)


@contextlib.contextmanager
def _injected_noise(sched, draw):
    """Make the scheduler's ``randn_tensor`` return ``draw(k)`` for its k-th draw (diffusers' schedulers
    take their step noise from the randn_tensor their own module imported)."""
    module = sys.modules[type(sched).__module__]
    original = getattr(module, "randn_tensor", None)
    calls = [0]

    def fake(shape, generator=None, device=None, dtype=None, layout=None):
        calls[0] += 1
        return draw(calls[0] - 1)

    if original is not None:
        module.randn_tensor = fake
    try:
        yield calls
    finally:
        if original is not None:
            module.randn_tensor = original


def schedule_table(config: dict, steps: int) -> dict:
    """Coefficients for ``steps`` sampling steps of the scheduler described by ``config``."""
    import torch

    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise InputError(f"steps {steps}: expected a positive whole number")
    name = check_supported(config)
    sched = _scheduler(config)
    try:
        sched.set_timesteps(steps)
        table = _tabulate(sched, name, steps)
        _check_against_scheduler(config, table)
    except (ValueError, IndexError, ZeroDivisionError, RuntimeError) as exc:
        raise InputError(f"{name}: cannot take {steps} steps (diffusers: {exc})") from None
    return table


def _tabulate(sched, name: str, steps: int) -> dict:
    import torch

    timesteps = [float(t) for t in sched.timesteps]
    n = len(timesteps)
    dim = 1 + 2 * n  # basis: initial latents x_0, one model output per call, one noise draw per call

    def basis(k: int) -> torch.Tensor:
        v = torch.zeros(1, dim, 1, 1, dtype=torch.float64)
        v[0, k] = 1.0
        return v

    step_of_draw: list[int] = []
    x = basis(0)
    rows = {"input_scale": [], "sample_coeff": [], "eps_coeffs": [], "noise_coeffs": []}
    with _injected_noise(sched, lambda k: basis(1 + n + step_of_draw[k])) as draws:
        for i, t in enumerate(sched.timesteps):
            scaled = sched.scale_model_input(torch.ones(1, 1, 1, 1, dtype=torch.float64), t)
            rows["input_scale"].append(float(scaled.reshape(-1)[0]))
            step_of_draw.append(i)
            before = draws[0]
            out = sched.step(basis(1 + i), t, x, return_dict=False)[0].to(torch.float64)
            if draws[0] - before > 1:
                raise InputError(f"{name}: draws noise {draws[0] - before} times in one step; a device table "
                                 "carries one draw per step")
            prev, new = x.reshape(-1), out.reshape(-1)
            a = float(new[0] / prev[0])
            rest = (new - a * prev).numpy()
            rows["sample_coeff"].append(a)
            rows["eps_coeffs"].append([float(v) for v in rest[1:2 + i]])
            rows["noise_coeffs"].append([float(v) for v in rest[1 + n:2 + n + i]])
            x = out
    table = {"format": FORMAT, "scheduler": name, "steps": steps, "timesteps": timesteps,
             "init_noise_sigma": float(sched.init_noise_sigma), **rows,
             "stochastic": any(c != 0.0 for row in rows["noise_coeffs"] for c in row)}
    return table


def _fake_model(x: np.ndarray, t: float) -> np.ndarray:
    """A non-linear stand-in for the UNet: a table must not assume anything about the model."""
    return np.tanh(0.7 * x + np.sin(t / 97.0)) + 0.1 * x


def scheduler_loop(config: dict, steps: int, x0: np.ndarray, model, noise=None) -> np.ndarray:
    """diffusers' own sampling loop (float64) for ``model(input, t) -> eps``, step i's noise draw being
    ``noise(i)`` (any array of x0's shape) instead of a random draw. The reference the tables match."""
    import torch

    sched = _scheduler(config)
    sched.set_timesteps(steps)
    x = torch.from_numpy(np.asarray(x0, dtype=np.float64)) * sched.init_noise_sigma
    step = [0]

    def draw(_k):
        if noise is None:
            raise InputError(f"{config.get('_class_name')}: draws noise; pass noise(step)")
        return torch.from_numpy(np.asarray(noise(step[0]), dtype=np.float64))

    with _injected_noise(sched, draw):
        for i, t in enumerate(sched.timesteps):
            step[0] = i
            inp = sched.scale_model_input(x, t)
            eps = torch.from_numpy(np.asarray(model(inp.numpy(), float(t)), dtype=np.float64))
            x = sched.step(eps, t, x, return_dict=False)[0].to(torch.float64)
    return x.numpy()


def _check_against_scheduler(config: dict, table: dict) -> None:
    """The table must reproduce the scheduler on random numbers; schedulers with a non-linear step
    (clip_sample, thresholding) do not, and are refused here with their option named."""
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((2, 3))
    draws = rng.standard_normal((len(table["timesteps"]), 2, 3))
    expected = scheduler_loop(config, table["steps"], x0, _fake_model, lambda i: draws[i])
    got = run_table(table, x0, _fake_model, lambda i: draws[i])
    err = float(np.max(np.abs(got - expected)) / max(1.0, float(np.max(np.abs(expected)))))
    if not err <= TABLE_CHECK_TOL:
        raise InputError(f"{table['scheduler']}: its {table['steps']}-step table differs from the scheduler by "
                         f"{err:.3g} (tolerance {TABLE_CHECK_TOL:g}): the step is not a multiply-add")


def run_table(table: dict, x0: np.ndarray, model, noise=None) -> np.ndarray:
    """The device loop, in numpy: ``model(model_input, timestep) -> eps`` (guidance already applied);
    ``noise(j)`` gives step j's standard normal noise (same shape as x0; needed by stochastic tables)."""
    x = x0 * table["init_noise_sigma"]
    history: list[np.ndarray] = []
    drawn: dict[int, np.ndarray] = {}
    noise_rows = table.get("noise_coeffs") or [[] for _ in table["timesteps"]]
    for i, t in enumerate(table["timesteps"]):
        history.append(model(x * table["input_scale"][i], t))
        x = table["sample_coeff"][i] * x + sum(c * e for c, e in zip(table["eps_coeffs"][i], history) if c != 0.0)
        for j, c in enumerate(noise_rows[i]):
            if c != 0.0:
                if noise is None:
                    raise InputError(f"{table.get('scheduler')}: a stochastic table needs noise(step)")
                if j not in drawn:
                    drawn[j] = np.asarray(noise(j))
                x = x + c * drawn[j]
    return x
