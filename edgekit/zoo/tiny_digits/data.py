"""The real digits behind the embedded model: one seeded split of scikit-learn's bundled digits.

Three disjoint parts, fixed forever by a seed so that every stage and every test sees the same rows:
``diffusion`` trains the VAE, text encoder and UNet; ``classifier`` trains the scoring classifier;
``eval`` is never trained on and is the reference set for accuracy and the Frechet distance.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SIZE = 32
SPLIT_SEED = 20261125
SPLIT_FRACTIONS = {"diffusion": 0.5, "classifier": 0.3, "eval": 0.2}

# Phrasings seen in training. The first is the one evaluation asks with.
PROMPT_TEMPLATES = (
    "a handwritten digit {name}",
    "the number {name} written by hand",
    "a drawing of the digit {name}",
    "handwritten {numeral}",
)
EVAL_TEMPLATE = PROMPT_TEMPLATES[0]


def prompt_for(digit: int, template: str = EVAL_TEMPLATE) -> str:
    return template.format(name=DIGIT_NAMES[digit], numeral=str(digit))


def all_prompts(digit: int) -> list[str]:
    return [prompt_for(digit, t) for t in PROMPT_TEMPLATES]


@dataclass(frozen=True)
class DigitSplit:
    images: np.ndarray  # (N, 32, 32) float32 in [0, 1], ink bright on dark
    labels: np.ndarray  # (N,) int64


def to_image_grid(raw: np.ndarray) -> np.ndarray:
    """8x8 scikit-learn digits (0..16) -> (N, 32, 32) float32 in [0, 1], bilinear upsampling."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(raw.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0)
    up = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return up[:, 0].clamp(0, 1).numpy()


def load_splits() -> dict[str, DigitSplit]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(digits.target))
    images = to_image_grid(digits.data[order])
    labels = digits.target[order].astype(np.int64)
    n = len(labels)
    n_diffusion = int(round(n * SPLIT_FRACTIONS["diffusion"]))
    n_classifier = int(round(n * SPLIT_FRACTIONS["classifier"]))
    bounds = {
        "diffusion": (0, n_diffusion),
        "classifier": (n_diffusion, n_diffusion + n_classifier),
        "eval": (n_diffusion + n_classifier, n),
    }
    return {name: DigitSplit(images[a:b], labels[a:b]) for name, (a, b) in bounds.items()}
