"""Reference fidelity, the quality measure that works for every model: the same prompts, seeds and initial
noise go through the float model at full width and its default steps (the reference) and through a
candidate (another width, fewer steps, a quantized directory, an exported bundle on its own runtime);
each candidate image is compared with its reference image (PSNR, SSIM), and the mean over the images is
reported with its 95% interval.

The initial noise of image i is edgekit.noise's for seeds[i], exactly what the bundle sampler
(edgekit.runtime.sampler) and the device runtimes draw, and torch candidates get it as diffusers'
``latents=``, so a difference between two images is the candidate's, never the random number generator's.
(A stochastic scheduler's per-step noise comes from a torch generator seeded per image in torch, and from
edgekit.noise in a bundle: for those schedulers a bundle row also measures that difference.)

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
    """Images (N, H, W, 3) in [0, 1] from a torch pipeline, image i starting from initial_noise(seeds[i])."""
    import torch

    from edgekit.pipeline import check_steps

    check_steps(steps)
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        latents = torch.from_numpy(initial_noise(seeds[chunk], latent_shape))
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[chunk]]  # a stochastic scheduler's draws
        with torch.inference_mode():
            out = pipe(prompt=list(prompts[chunk]), num_inference_steps=steps, guidance_scale=guidance_scale,
                       latents=latents, generator=generators, output_type="np")
        batch = np.asarray(out.images, dtype=np.float32)
        finite = np.isfinite(batch).reshape(len(batch), -1).all(axis=1)
        if not finite.all():
            from edgekit.errors import NumericError

            i = start + int(np.argmin(finite))
            raise NumericError(f"generate: image {i} (prompt {prompts[i]!r}, seed {seeds[i]}) holds NaN/Inf after "
                               f"{steps} steps at guidance {guidance_scale:g}")
        images.append(batch)
        if on_batch is not None:
            on_batch(len(latents))
    return np.concatenate(images, axis=0)


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
                       "noise": "edgekit.noise initial_latents", "torch": torch.__version__,
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
