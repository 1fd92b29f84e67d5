"""The noise every device runtime draws: a counter-based generator that Python, the browser, Kotlin and
Swift implement identically, so the same seed gives the same image on each.

Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) is keyed by
(seed, stream) and run on the counter (block, 0, 0, 0); each block gives four 32-bit words, and each pair
of words (w0, w1) one pair of standard normals by Box-Muller:

    u1 = (w0 + 0.5) / 2**32,  u2 = (w1 + 0.5) / 2**32,  r = sqrt(-2 ln u1)
    z0 = r cos(2 pi u2),      z1 = r sin(2 pi u2)

Stream 0 is an image's initial latent noise; stream i + 1 the fresh noise a stochastic scheduler adds at
step i (edgekit.schedule's ``noise_coeffs``). The integer words are bit-identical on every platform; the
normals agree to the platforms' log/cos/sin (~1e-15). Checked by edgekit/twin_vectors/noise.json.

Torch draws the same: edgekit.pipeline.generate hands diffusers ``latents=initial_latents(...)`` and, inside
``diffusers_noise``, its scheduler's step noise, so one seed is one image in torch and in every bundle.
"""
from __future__ import annotations

import contextlib

import numpy as np

NAME = "philox4x32-10 box-muller"
M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK = 0xFFFFFFFF
ROUNDS = 10
STREAM_INITIAL = 0


def philox4x32(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of every row of ``counters`` (N, 4) uint32 under ``key`` (k0, k1): (N, 4) uint32."""
    c = [np.asarray(counters[:, i], dtype=np.uint64) for i in range(4)]
    k0, k1 = int(key[0]) & MASK, int(key[1]) & MASK
    for r in range(ROUNDS):
        p0 = np.uint64(M0) * c[0]
        p1 = np.uint64(M1) * c[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & np.uint64(MASK)
        hi1, lo1 = p1 >> np.uint64(32), p1 & np.uint64(MASK)
        c = [hi1 ^ c[1] ^ np.uint64(k0), lo1, hi0 ^ c[3] ^ np.uint64(k1), lo0]
        if r < ROUNDS - 1:
            k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
    return np.stack(c, axis=1).astype(np.uint32)


def words(seed: int, stream: int, count: int) -> np.ndarray:
    """The first ``count`` 32-bit words of stream (seed, stream)."""
    if not 0 <= int(seed) <= MASK or not 0 <= int(stream) <= MASK:
        raise ValueError(f"seed {seed} and stream {stream} must be whole numbers in 0..{MASK}")
    blocks = (count + 3) // 4
    counters = np.zeros((blocks, 4), dtype=np.uint32)
    counters[:, 0] = np.arange(blocks, dtype=np.uint32)
    return philox4x32(counters, (seed, stream)).reshape(-1)[:count]


def normals(seed: int, stream: int, count: int) -> np.ndarray:
    """``count`` standard normals (float64) of stream (seed, stream)."""
    w = words(seed, stream, 2 * ((count + 1) // 2)).astype(np.float64)
    u1 = (w[0::2] + 0.5) / 2.0**32
    u2 = (w[1::2] + 0.5) / 2.0**32
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.empty(2 * len(u1))
    z[0::2] = r * np.cos(2.0 * np.pi * u2)
    z[1::2] = r * np.sin(2.0 * np.pi * u2)
    return z[:count]


def initial_latents(seeds, shape) -> np.ndarray:
    """(N, *shape) float32: image i's initial noise from stream 0 of seeds[i]."""
    size = int(np.prod(shape))
    return np.stack([normals(int(s), STREAM_INITIAL, size).reshape(shape) for s in seeds]).astype(np.float32)


def step_noise(seeds, step: int, shape) -> np.ndarray:
    """(N, *shape) float32: the fresh noise of sampling step ``step`` (0-based), stream step + 1."""
    size = int(np.prod(shape))
    return np.stack([normals(int(s), step + 1, size).reshape(shape) for s in seeds]).astype(np.float32)


def latent_shape_of(pipe) -> tuple[int, int, int]:
    """The latent shape a diffusers pipeline samples at its default size: (channels, sample_size, sample_size)."""
    config = pipe.unet.config
    size = config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(config.in_channels), int(h), int(w)


@contextlib.contextmanager
def diffusers_noise(pipe, seeds, shape):
    """While a diffusers pipeline samples ``seeds`` (one image each), its scheduler's fresh noise at step i is
    ``step_noise(seeds, i, shape)``: the draw every bundle runtime makes. Yields the ``callback_on_step_end``
    to hand the pipeline call (it counts the steps). diffusers' schedulers draw through the ``randn_tensor``
    their own module imported, which is replaced for the duration; a deterministic scheduler never calls it.
    The initial latents are the caller's: ``latents=initial_latents(seeds, shape)``."""
    import sys

    import torch

    module = sys.modules[type(pipe.scheduler).__module__]
    original = getattr(module, "randn_tensor", None)
    step = [0]

    def draw(size, generator=None, device=None, dtype=None, layout=None):
        noise = torch.from_numpy(step_noise(seeds, step[0], shape))
        if tuple(size) != tuple(noise.shape):
            raise ValueError(f"the scheduler drew noise of shape {tuple(size)}; edgekit.noise draws {tuple(noise.shape)}")
        return noise.to(device=device or "cpu", dtype=dtype or torch.float32)

    def count_step(_pipe, i, _t, _kwargs):
        step[0] = i + 1
        return {}

    if original is not None:
        module.randn_tensor = draw
    try:
        yield count_step
    finally:
        if original is not None:
            module.randn_tensor = original
