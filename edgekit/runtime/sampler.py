"""Generate images from an exported bundle the way a device does: tokenizer.json, text encoder, UNet with
classifier-free guidance looped over the manifest's schedule table (edgekit.schedule.run_table), VAE
decoder. Components run through the bundle's own runtime (edgekit.runtime.runners), never torch."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.errors import InputError


def load_tokenizer(path: Path, max_length: int, pad_token: str = "<|endoftext|>") -> Callable[[list[str]], np.ndarray]:
    """Encode prompts with the `tokenizers` library straight from the bundle's tokenizer.json."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(path))
    pad_id = tok.token_to_id(pad_token)
    if pad_id is None:
        raise InputError(f"{path}: tokenizer has no pad token {pad_token!r}")
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)

    def encode(prompts: list[str]) -> np.ndarray:
        return np.array([e.ids for e in tok.encode_batch(list(prompts))], dtype=np.int64)

    return encode


@dataclass
class Components:
    """The three networks as plain callables over numpy arrays (one bundle width)."""

    text_encoder: Callable[[np.ndarray], np.ndarray]  # input_ids (B, L) int64 -> hidden (B, L, D)
    unet: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # sample, timestep (B,), hidden -> eps
    vae_decoder: Callable[[np.ndarray], np.ndarray]  # latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1]
    unet_batch: int | None = None  # fixed UNet batch size, None when dynamic


@dataclass
class Timing:
    text_encoder_s: float = 0.0
    unet_s: float = 0.0
    vae_s: float = 0.0
    total_s: float = 0.0
    unet_calls: int = 0


def sample(components: Components, encode, table: dict, prompts: list[str], seeds: list[int], guidance: float,
           latent_shape: tuple[int, int, int], scaling_factor: float, on_step=None) -> tuple[np.ndarray, Timing]:
    """Images (N, H, W, 3) in [0, 1] for ``prompts``; one image per prompt, noise from numpy ``seeds``."""
    timing = Timing()
    start = time.perf_counter()
    ids = encode(prompts)
    uncond_ids = encode([""] * len(prompts))
    t0 = time.perf_counter()
    cond = components.text_encoder(ids).astype(np.float32)
    uncond = components.text_encoder(uncond_ids).astype(np.float32)
    timing.text_encoder_s = time.perf_counter() - t0
    x0 = np.stack([np.random.default_rng(s).standard_normal(latent_shape) for s in seeds]).astype(np.float32)
    n = len(prompts)

    def unet(sample_in: np.ndarray, hidden: np.ndarray, t: float) -> np.ndarray:
        batch = components.unet_batch
        if batch is None or batch == len(sample_in):
            timing.unet_calls += 1
            return components.unet(sample_in, np.full((len(sample_in),), t, dtype=np.float32), hidden)
        outs = []
        for k in range(0, len(sample_in), batch):  # a fixed-batch UNet gets the rows in slices
            timing.unet_calls += 1
            outs.append(components.unet(sample_in[k:k + batch], np.full((batch,), t, dtype=np.float32),
                                        hidden[k:k + batch]))
        return np.concatenate(outs)

    step = [0]

    def model(x: np.ndarray, t: float) -> np.ndarray:
        t1 = time.perf_counter()
        x = x.astype(np.float32)
        if guidance == 1.0:
            eps = unet(x, cond, t)
        else:
            both = unet(np.concatenate([x, x]), np.concatenate([uncond, cond]), t)
            eps = both[:n] + guidance * (both[n:] - both[:n])
        timing.unet_s += time.perf_counter() - t1
        step[0] += 1
        if on_step is not None:
            on_step(step[0], len(table["timesteps"]))
        return eps

    from edgekit.schedule import run_table

    latents = run_table(table, x0, model).astype(np.float32)
    t2 = time.perf_counter()
    images = components.vae_decoder(latents / scaling_factor)
    timing.vae_s = time.perf_counter() - t2
    timing.total_s = time.perf_counter() - start
    images = np.clip(np.asarray(images, dtype=np.float32) / 2 + 0.5, 0.0, 1.0)
    return images.transpose(0, 2, 3, 1), timing
