"""Builder of edgekit/twin_vectors/step_cache.json, the step-cache vectors the Kotlin and Swift cores run: the
plans of a manifest's sampling.step_cache (edgekit.step_cache.manifest_section) and whole cached loops over a
schedule table (edgekit.schedule.run_table) with fake full and shallow graphs, following the plan exactly as
edgekit.runtime.sampler does (full calls split their output at noise_channels and keep the feature rows, shallow
calls are fed them; guidance applied to the [uncond, cond] rows as diffusers does). A plan holds one role per
UNet call of its table: the 4- and 8-step tables (DPM-Solver) make one call per step, the 5-step one (SD-1.5's
PNDMScheduler, skip_prk_steps) makes 6.

Regenerate after a deliberate change with: .venv/bin/python tests/step_cache_vectors.py --write
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

VECTORS = Path(__file__).resolve().parent.parent / "edgekit" / "twin_vectors"
CHANNELS, HW, FEATURE = 2, 3, 1  # fake latent: 2 channels of 3 pixels; the feature: 1 channel of 3 pixels
MODEL = ("rows [uncond (h=0), cond (h=1)] under classifier-free guidance, else [cond]; per row, x the row's 6 "
         "latent values (channel-major), i = 0..5, k = 0..2: full output = 9 values, eps[i] = 0.3*x[i] + 0.001*t + "
         "0.01*i + 0.05*h then feature[k] = tanh(0.5*x[k] + 0.4*x[3+k]) + 0.002*t + 0.1*h; shallow(x, t, h, feature) "
         "= 0.25*x[i] + 0.001*t + 0.01*i + 0.05*h + 0.2*feature[i % 3]; the plain graph = full's eps; x0 = "
         "normals(seed, 0, 6)")


def full(x, t, h):
    eps = np.array([0.3 * x[i] + 0.001 * t + 0.01 * i + 0.05 * h for i in range(CHANNELS * HW)])
    feat = np.array([np.tanh(0.5 * x[k] + 0.4 * x[HW + k]) + 0.002 * t + 0.1 * h for k in range(HW)])
    return np.concatenate([eps, feat])


def shallow(x, t, h, feature):
    return np.array([0.25 * x[i] + 0.001 * t + 0.01 * i + 0.05 * h + 0.2 * feature[i % HW] for i in range(CHANNELS * HW)])


def cached_loop(table, x0, plan, guidance, cfg: bool):
    from edgekit.schedule import run_table

    heads = [0.0, 1.0] if cfg else [1.0]
    kept = {}
    step = [0]

    def model(x, t):
        if plan and step[0] >= len(plan):
            raise IndexError(f"UNet call {step[0]} past the plan's {len(plan)} roles")
        role = plan[step[0]] if plan else None
        step[0] += 1
        outs = []
        for r, h in enumerate(heads):
            if role == "shallow":
                outs.append(shallow(x, t, h, kept[r]))
            else:
                out = full(x, t, h)
                split = CHANNELS * HW  # noise_channels * pixels: the rest is the feature
                if role == "full":
                    kept[r] = out[split:]
                outs.append(out[:split])
        return outs[0] + guidance * (outs[1] - outs[0]) if cfg else outs[0]

    return run_table(table, x0, model)


def build() -> dict:
    from edgekit.noise import normals
    from edgekit.schedule import schedule_table
    from edgekit.step_cache import manifest_section
    from sampling_vectors import _config, scheduler_cases

    name, config, _, _, _ = scheduler_cases()[0]  # the DPM-Solver scheduler of the digits model
    tables = {str(s): schedule_table(config, s) for s in (4, 8)}
    # SD-1.5's scheduler: PNDM without Runge-Kutta steps calls the UNet steps + 1 times
    tables["5"] = schedule_table(_config("PNDMScheduler", skip_prk_steps=True), 5)
    assert len(tables["5"]["timesteps"]) == 6
    section = manifest_section((1, 2, 3), {int(s): len(t["timesteps"]) for s, t in tables.items()}, CHANNELS)
    cases = []
    for steps, interval, guidance, cfg, seed in [(8, 1, 4.0, True, 3), (8, 2, 4.0, True, 3), (8, 3, 4.0, True, 3),
                                                 (4, 3, 1.0, False, 5), (8, 2, 1.0, False, 5), (5, 1, 7.5, True, 6),
                                                 (5, 2, 7.5, True, 6), (5, 3, 1.0, False, 7)]:
        plan = section["plans"][str(interval)][str(steps)] if interval > 1 else None
        x0 = normals(seed, 0, CHANNELS * HW)
        out = cached_loop(tables[str(steps)], x0, plan, guidance, cfg)
        cases.append({"steps": steps, "interval": interval, "guidance_scale": guidance,
                      "guidance_mode": "classifier-free" if cfg else "conditional", "seed": seed,
                      "plan": plan, "expected": [float(v) for v in out]})
    return {"format": "edgekit-step-cache-vectors/1", "model": MODEL,
            "scheduler": f"{name} (4 and 8 steps); PNDM, skip_prk_steps (5 steps, 6 UNet calls)",
            "latent": {"channels": CHANNELS, "pixels": HW, "feature_channels": FEATURE},
            "sampling": {"schedules": tables, "step_cache": section}, "cases": cases,
            "bad_plans": [{"interval": 5, "steps": 8, "error_contains": "cache 5"},
                          {"interval": 3, "steps": 2, "error_contains": "cache 3"},
                          {"interval": 0, "steps": 8, "error_contains": "cache 0"}]}


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: tests/step_cache_vectors.py --write")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    (VECTORS / "step_cache.json").write_text(json.dumps(build(), indent=1) + "\n")
