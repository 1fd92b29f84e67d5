"""Reference fidelity, the quality measure that works for every model: the same prompts, seeds and initial
noise go through the float model at full width and its default steps (the reference) and through a
candidate (another width, fewer steps, a quantized directory, an exported bundle on its own runtime);
each candidate image is compared with its reference image (PSNR, SSIM), and the mean over the images is
reported with its 95% interval.

The noise of image i is edgekit.noise's for seeds[i] (initial latents and a stochastic scheduler's step
noise), exactly what the bundle sampler (edgekit.runtime.sampler) and the device runtimes draw; torch
candidates get it through edgekit.pipeline.generate, so a difference between two images is the candidate's,
never the random number generator's.

References are computed once and cached on disk by a key over everything they depend on."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

NAME = "reference-fidelity"
METRIC = "psnr_db"
CACHE_ENV = "EDGEKIT_CACHE"


def initial_noise(seeds, latent_shape) -> np.ndarray:
    """(N, C, h, w) float32 initial latents: the shared seeded noise every bundle runtime draws (edgekit.noise)."""
    from edgekit.noise import initial_latents

    return np.asarray(initial_latents([int(s) for s in seeds], tuple(latent_shape)), dtype=np.float32)


def latent_shape_of(pipe) -> tuple[int, int, int]:
    """The latent shape a pipeline samples at its default size: (channels, sample_size, sample_size)."""
    config = pipe.unet.config
    size = config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(config.in_channels), int(h), int(w)


def generate_with_noise(pipe, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float,
                        latent_shape, batch_size: int = 50, on_batch=None) -> np.ndarray:
    """Images (N, H, W, 3) in [0, 1] from a torch pipeline, image i drawing edgekit.noise's noise for seeds[i]
    (edgekit.pipeline.generate: initial latents and a stochastic scheduler's step noise)."""
    from edgekit.pipeline import check_steps, generate

    check_steps(steps)
    return generate(pipe, list(prompts), list(seeds), steps, guidance_scale, batch_size=batch_size,
                    on_batch=on_batch, latent_shape=tuple(latent_shape))


def default_cache_root() -> Path:
    """$EDGEKIT_CACHE/references, else ~/.cache/edgekit/references."""
    base = os.environ.get(CACHE_ENV)
    return (Path(base) if base else Path.home() / ".cache" / "edgekit") / "references"


def reference_key(model_sha256: str, steps: int, guidance_scale: float, prompts, seeds, latent_shape) -> str:
    import torch

    from edgekit import __version__

    text = json.dumps({"what": "float reference images, full width", "model": model_sha256, "steps": int(steps),
                       "guidance_scale": float(guidance_scale), "prompts": list(prompts),
                       "seeds": [int(s) for s in seeds], "latent_shape": [int(d) for d in latent_shape],
                       "noise": "edgekit.noise initial_latents + step_noise", "torch": torch.__version__,
                       "edgekit": __version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cached_reference(root: Path, key: str, make) -> np.ndarray:
    """The images stored under ``key`` in ``root``, else ``make()``'s, stored there atomically first."""
    from edgekit.fsutil import staged_file

    path = Path(root) / f"{key}.npy"
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError):
            path.unlink(missing_ok=True)  # a damaged cache entry is recomputed, never trusted
    images = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    with staged_file(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, images)
    return images


def fidelity(images: np.ndarray, references: np.ndarray, reference_label: str) -> dict:
    """The row's "quality" (mean PSNR in dB, capped at 100, with its 95% interval) and "ssim"."""
    from edgekit.quality.metrics import PSNR_CAP_DB, psnr_per_image, ssim_per_image, summary

    psnr = summary(psnr_per_image(images, references), digits=3, high=PSNR_CAP_DB)
    return {"quality": {"evaluator": NAME, "metric": METRIC, **psnr, "reference": reference_label},
            "ssim": summary(ssim_per_image(images, references), digits=4, low=-1.0, high=1.0)}
