"""The digit classifier of the embedded digits model: its network, training, and what it measures on
generations (prompt accuracy, Frechet distance on its features against real digits).

Only the digits evaluator (edgekit.quality.digits) and the digits model's training script import this
module; every other quality number comes from evaluators that work for any model.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

CLASSIFIER_WEIGHTS = "model.safetensors"
CLASSIFIER_CONFIG = "config.json"


class DigitClassifierNet(nn.Module):
    """Small CNN on 32x32 grey images; the 64-d penultimate activation is the feature space for FD."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, self.feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return self.head(features), features


def to_grey_batch(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) or (N, H, W, C) images in [0, 1] -> (N, 1, 32, 32) float tensor."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 4:
        x = x.mean(axis=-1)
    t = torch.from_numpy(x).unsqueeze(1)
    if t.shape[-1] != 32 or t.shape[-2] != 32:
        t = torch.nn.functional.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False)
    return t


class DigitScorer:
    """The shipped classifier with the operations quality needs: labels and features of images."""

    def __init__(self, net: DigitClassifierNet, info: dict | None = None) -> None:
        self.net = net.eval()
        self.info = info or {}

    @classmethod
    def load(cls, directory: Path | None = None) -> "DigitScorer":
        from safetensors.torch import load_file

        from edgekit.zoo.tiny_digits import CLASSIFIER_DIR

        directory = Path(directory or CLASSIFIER_DIR)
        net = DigitClassifierNet()
        net.load_state_dict(load_file(directory / CLASSIFIER_WEIGHTS))
        info = json.loads((directory / CLASSIFIER_CONFIG).read_text())
        return cls(net, info)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, directory / CLASSIFIER_WEIGHTS)
        (directory / CLASSIFIER_CONFIG).write_text(json.dumps(self.info, indent=2) + "\n")

    @torch.no_grad()
    def logits_and_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, features = self.net(to_grey_batch(images))
        return logits.numpy(), features.numpy().astype(np.float64)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.logits_and_features(images)[0].argmax(axis=1)

    def features(self, images: np.ndarray) -> np.ndarray:
        return self.logits_and_features(images)[1]


def train_classifier(train_split, eval_split, epochs: int, seed: int, progress=None) -> tuple[DigitScorer, dict]:
    """Train on real digits only (never on the diffusion split); report held-out accuracy."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = DigitClassifierNet()
    x = to_grey_batch(train_split.images)
    y = torch.from_numpy(train_split.labels)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    task = progress.add_task("classifier", total=epochs, info="") if progress else None
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), 64):
            idx = order[start:start + 64]
            xb = _augment(x[idx], gen)
            loss = nn.functional.cross_entropy(net(xb)[0], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        if task is not None:
            progress.update(task, advance=1, info=f"loss {loss.item():.3f}")
    scorer = DigitScorer(net)
    accuracy = float((scorer.predict(eval_split.images) == eval_split.labels).mean())
    scorer.info = {"heldout_accuracy": accuracy, "train_size": len(y), "eval_size": len(eval_split.labels),
                   "feature_dim": DigitClassifierNet.feature_dim, "input": "32x32 grey in [0,1], ink bright"}
    return scorer, {"heldout_accuracy": accuracy}


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels and mild contrast change: generations are never pixel-aligned."""
    shifts = torch.randint(-2, 3, (2,), generator=gen).tolist()
    x = torch.roll(x, shifts=shifts, dims=(2, 3))
    gain = 0.8 + 0.4 * torch.rand((x.shape[0], 1, 1, 1), generator=gen)
    return (x * gain).clamp(0, 1)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID formula)."""
    from scipy import linalg

    mu_a, mu_b = features_a.mean(axis=0), features_b.mean(axis=0)
    cov_a = np.cov(features_a, rowvar=False)
    cov_b = np.cov(features_b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer samples than dimensions: singular covariances are expected
        covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        eps = np.eye(cov_a.shape[0]) * 1e-6
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))


FLOOR_DRAWS = 10


@dataclass(frozen=True)
class QualityReport:
    prompt_accuracy: float
    frechet_distance: float
    frechet_floor: float  # mean over FLOOR_DRAWS equally sized sets of real digits
    frechet_floor_std: float
    n_images: int
    per_digit_accuracy: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def frechet_floor(scorer: "DigitScorer", n: int, reference: np.ndarray, draws: int = FLOOR_DRAWS) -> tuple[float, float]:
    """Frechet distance of n real digits to the reference set: what a perfect generator scores at this n.

    Real digits come from the diffusion split, which the classifier never saw (its own training split
    gives it atypical, over-confident features). With ~100 samples in 64 dimensions the estimate is
    noisy, so the floor is a mean (and spread) over seeded draws."""
    from edgekit.zoo.tiny_digits.data import load_splits

    pool = load_splits()["diffusion"].images
    rng = np.random.default_rng(0)
    values = [frechet_distance(scorer.features(pool[rng.choice(len(pool), min(n, len(pool)), replace=False)]),
                               reference) for _ in range(draws)]
    return float(np.mean(values)), float(np.std(values))


def score_generations(images: np.ndarray, asked: np.ndarray, scorer: DigitScorer | None = None) -> QualityReport:
    """Prompt accuracy and Frechet distance of generations vs the held-out real digits (eval split)."""
    from edgekit.zoo.tiny_digits.data import load_splits

    scorer = scorer or DigitScorer.load()
    logits, features = scorer.logits_and_features(images)
    predicted = logits.argmax(axis=1)
    asked = np.asarray(asked)
    reference = scorer.features(load_splits()["eval"].images)
    floor, floor_std = frechet_floor(scorer, len(images), reference)
    per_digit = [float((predicted[asked == d] == d).mean()) if (asked == d).any() else float("nan")
                 for d in range(10)]
    return QualityReport(
        prompt_accuracy=float((predicted == asked).mean()),
        frechet_distance=frechet_distance(features, reference),
        frechet_floor=floor,
        frechet_floor_std=floor_std,
        n_images=len(images),
        per_digit_accuracy=per_digit,
    )


def digit_prompts(samples_per_digit: int, seed: int) -> tuple[list[str], list[int], np.ndarray]:
    """The evaluation grid: every digit asked with the evaluation phrasing, seeds seed..seed+K-1."""
    from edgekit.zoo.tiny_digits.data import prompt_for

    prompts, seeds, asked = [], [], []
    for digit in range(10):
        for k in range(samples_per_digit):
            prompts.append(prompt_for(digit))
            seeds.append(seed + k)
            asked.append(digit)
    return prompts, seeds, np.asarray(asked)


def evaluate_digits(pipe, steps: int, samples_per_digit: int, seed: int, guidance_scale: float,
                    progress=None) -> QualityReport:
    """Generate the evaluation grid with ``pipe`` and score it."""
    from edgekit.pipeline import generate

    if samples_per_digit <= 0:
        raise ValueError("samples_per_digit must be positive")
    prompts, seeds, asked = digit_prompts(samples_per_digit, seed)
    task = progress.add_task("eval", total=len(prompts)) if progress else None
    images = generate(pipe, prompts, seeds, steps, guidance_scale,
                      on_batch=(lambda k: progress.update(task, advance=k)) if progress else None)
    return score_generations(images, asked)
