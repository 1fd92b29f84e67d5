"""What the embedded digits model is, as its training scripts (scripts/train_tiny_digits*.py) build it and the
tests rebuild parts of it: the component configs, the tokenizer's vocabulary, the noise schedule, the sampling
defaults it declares, and the few-step student's scheduler with its differentiable DDIM steps."""
from __future__ import annotations

import json
from pathlib import Path

from edgekit.constants import EDGEKIT_DEFAULTS
from edgekit.zoo.tiny_digits.data import DIGIT_NAMES, PROMPT_TEMPLATES

MAX_TOKENS = 16
EXTRA_WORDS = "an image picture sketch of ink pen".split()
UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=4,  # diffusers' legacy name: this is the number of heads
    norm_num_groups=8,  # 8 groups keep every width that is a multiple of 8 valid (pruning, slim)
)
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=32,
)
# Measured on the shipped weights with `edgekit eval` (10 per digit, 20 steps): guidance 1 (none) 0.93
# prompt accuracy; 2, 3, 5, 7.5 all 1.00 with Frechet distance 61, 93, 146, 196 (floor 108 +- 28).
DEFAULT_GUIDANCE = 2.0
DEFAULT_STEPS = 20
CALIBRATION_PROMPTS = (
    *(f"a handwritten digit {w}" for w in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                           "nine")),
    "the number zero written by hand", "the number three written by hand", "the number six written by hand",
    "the number nine written by hand", "a drawing of the digit one", "a drawing of the digit four",
    "a drawing of the digit seven", "handwritten 2", "handwritten 5", "handwritten 8",
)
SCHEDULER_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
STUDENT_STEPS = (1, 2, 4)  # the step counts the few-step student offers


def vocabulary() -> list[str]:
    """The words of the model's CLIP tokenizer: every word of every trained phrasing, the digit names and a few
    extra words."""
    words = set(EXTRA_WORDS) | set(DIGIT_NAMES)
    for template in PROMPT_TEMPLATES:
        words |= {w for w in template.replace("{name}", "").replace("{numeral}", "").split()}
    return sorted(words)


def write_sampling_defaults(pipeline_dir: Path) -> None:
    """Sampling defaults, and what the directory declares about itself: its digit evaluator and its own
    calibration prompts (every digit, every trained phrasing), carried by prune/slim/quantize copies."""
    defaults = {"guidance_scale": DEFAULT_GUIDANCE, "num_inference_steps": DEFAULT_STEPS,
                "quality_evaluators": ["digits"], "calibration_prompts": "calibration_prompts.txt"}
    (pipeline_dir / EDGEKIT_DEFAULTS).write_text(json.dumps(defaults, indent=2) + "\n")
    lines = ["# Calibration prompts for the embedded digits model: every digit, every phrasing it was trained on.",
             "# One prompt per line; lines starting with '#' are ignored.", *CALIBRATION_PROMPTS]
    (pipeline_dir / "calibration_prompts.txt").write_text("\n".join(lines) + "\n")


def student_scheduler():
    """The few-step student's scheduler: deterministic DDIM with trailing timesteps on the teacher's betas."""
    from diffusers import DDIMScheduler, DDPMScheduler

    return DDIMScheduler.from_config(DDPMScheduler(**SCHEDULER_BETAS).config, timestep_spacing="trailing",
                                     clip_sample=False, set_alpha_to_one=True)


def ddim_unrolled(unet, x, hidden, steps: int):
    """``steps`` deterministic DDIM steps (eta 0) of the student scheduler, differentiable end to end."""
    import torch

    sched = student_scheduler()
    sched.set_timesteps(steps)
    alphas = sched.alphas_cumprod.to(torch.float32)
    timesteps = [int(t) for t in sched.timesteps]
    for i, t in enumerate(timesteps):
        a_t = alphas[t]
        a_prev = alphas[timesteps[i + 1]] if i + 1 < len(timesteps) else torch.tensor(1.0)
        eps = unet(x, torch.full((len(x),), t, dtype=torch.long), hidden).sample
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    return x
