"""Settings and builders several test modules share (not a test module: test modules never import each other).

``FAST``: the short settings of a test package run, as flags; ``FAST_CONFIG`` names the same run as a --config file
(conftest's session-wide ``packaged`` fixture is built from it). ``FAMILIES`` / ``build_family``: model families
(SD-2, turbo, LCM, ...) built at reduced size from SD-1.5's builder with random weights."""
import json
from pathlib import Path

import torch

from edgekit.constants import EDGEKIT_DEFAULTS

FAST = ("--steps", "4", "--samples", "4", "--repeats", "1", "--calib-samples", "4", "--calib-steps", "3")
# The same settings as a --config file, with a slim section that differs from the recipe (unused here: the default
# model is slimmable already; recorded all the same)
FAST_CONFIG = """\
targets: [ort-web]
steps: [4]
samples: 4
repeats: 1
calib_samples: 4
calib_steps: 3
slim: {train_steps: 7, lr: 0.001}
"""

BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
FAMILIES = {
    # name: (scheduler class, scheduler options, UNet changes, tokenizer pad token, guidance, steps)
    "turbo": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, {}, None, 0.0, 2),
    "lcm": ("LCMScheduler", {}, {"time_cond_proj_dim": 32}, None, 8.0, 4),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}, {}, None, 7.5, 4),
    "sd2": ("EulerDiscreteScheduler", {"prediction_type": "v_prediction"},
            {"use_linear_projection": True, "attention_head_dim": (2, 4, 8, 8)}, "!", 7.5, 3),
    "bk-sdm": ("DPMSolverMultistepScheduler", {}, {"mid_block_type": None}, None, 7.5, 3),
}


def build_family(base: Path, out: Path, name: str) -> Path:
    """A reduced SD-1.5-architecture pipeline turned into ``name`` (random weights, written locally)."""
    import diffusers
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    sched_name, sched_extra, unet_extra, pad, guidance, steps = FAMILIES[name]
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    if unet_extra:
        torch.manual_seed(1)
        pipe.register_modules(unet=UNet2DConditionModel.from_config({**pipe.unet.config, **unet_extra}))
    pipe.register_modules(scheduler=getattr(diffusers, sched_name)(**BETAS, **sched_extra))
    if pad is not None:
        pipe.register_modules(tokenizer=CLIPTokenizer.from_pretrained(base / "tokenizer", pad_token=pad))
    pipe.save_pretrained(out, safe_serialization=True)
    (out / EDGEKIT_DEFAULTS).write_text(json.dumps({"guidance_scale": guidance, "num_inference_steps": steps,
                                                    "offered_steps": sorted({1, 2, steps})}))
    return out
