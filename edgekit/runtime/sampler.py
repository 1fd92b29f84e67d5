"""Generate images from an exported bundle the way a device does: tokenizer.json, text encoder, UNet with
guidance as diffusers applies it looped over the manifest's schedule table (edgekit.schedule.run_table) with
the shared seeded noise (edgekit.noise), VAE decoder. Components run through the bundle's own runtime (edgekit.runtime.runners), never torch."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.components import by_role
from edgekit.errors import InputError, NumericError


def load_tokenizer(path: Path, max_length: int, pad_id: int | None = None) -> Callable[[list[str]], np.ndarray]:
    """Encode prompts with the `tokenizers` library straight from the bundle's tokenizer.json; padding with
    ``pad_id`` (CLIP pads with <|endoftext|>, the default) to ``max_length``, as the pipeline does."""
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(str(path))
    pad_id = tok.token_to_id("<|endoftext|>") if pad_id is None else pad_id
    if pad_id is None:
        raise InputError(f"{path}: tokenizer has no <|endoftext|> token to pad with")
    tok.enable_truncation(max_length)
    tok.enable_padding(length=max_length, pad_id=pad_id, pad_token=tok.id_to_token(pad_id))

    def encode(prompts: list[str]) -> np.ndarray:
        return np.array([e.ids for e in tok.encode_batch(list(prompts))], dtype=np.int32)

    return encode


@dataclass
class Components:
    """The three networks as plain callables over numpy arrays (one bundle width), any number of rows."""

    text_encoder: Callable[[np.ndarray], np.ndarray]  # input_ids (B, L) int32 -> hidden (B, L, D)
    # sample, timestep (B,), hidden[, timestep_cond (B, D) where the UNet has a guidance embedding] -> eps
    unet: Callable[..., np.ndarray]
    vae_decoder: Callable[[np.ndarray], np.ndarray]  # latents (B, C, h, w) -> images (B, 3, H, W) in [-1, 1]
    # step caching (the manifest's sampling.step_cache): the full graph (UNet inputs -> noise and feature joined on
    # channels, split at noise_channels) and the shallow one (UNet inputs with the feature after the text)
    unet_full: Callable[..., np.ndarray] | None = None
    unet_shallow: Callable[..., np.ndarray] | None = None
    noise_channels: int = 0


@dataclass
class Timing:
    text_encoder_s: float = 0.0
    unet_s: float = 0.0
    vae_s: float = 0.0
    total_s: float = 0.0
    unet_calls: int = 0


def sample(components: Components, encode, table: dict, prompts: list[str], seeds: list[int], guidance: float,
           latent_shape: tuple[int, int, int], scaling_factor: float, on_step=None, mode: str | None = None,
           timestep_cond: np.ndarray | None = None, plan: list[str] | None = None) -> tuple[np.ndarray, Timing]:
    """Images (N, H, W, 3) in [0, 1] for ``prompts``; one image per prompt, its noise from ``seeds``
    (edgekit.noise: stream 0 the initial latents, stream j + 1 step j's draw of a stochastic table).

    ``mode`` (edgekit.schedule.GUIDANCE_MODES; default from ``guidance`` as diffusers decides) says whether
    the unconditional pass runs; ``timestep_cond`` (D,) is fed to a UNet with a guidance embedding input.
    ``plan`` (a step-cache plan from the manifest, one "full" / "shallow" per UNet call of ``table``, which may
    be more than its steps; None: the plain UNet every call): full calls run ``components.unet_full`` and keep
    its feature rows, shallow ones run ``components.unet_shallow`` fed the kept rows."""
    from edgekit.noise import initial_latents, step_noise
    from edgekit.schedule import GUIDANCE_CFG, guidance_mode, run_table

    mode = mode or guidance_mode(guidance)
    timing = Timing()
    start = time.perf_counter()
    n = len(prompts)
    ids = encode(prompts)
    t0 = time.perf_counter()
    cond = components.text_encoder(ids).astype(np.float32)
    uncond = components.text_encoder(encode([""] * n)).astype(np.float32) if mode == GUIDANCE_CFG else None
    timing.text_encoder_s = time.perf_counter() - t0
    # The shared counter-based generator (edgekit.noise): the browser, Kotlin and Swift draw the same numbers.
    x0 = initial_latents(seeds, latent_shape)

    if plan is not None and (len(plan) != len(table["timesteps"]) or components.unet_full is None
                             or components.unet_shallow is None):
        raise InputError(f"bundle sampler: a step-cache plan of {len(plan)} roles for a table of "
                         f"{len(table['timesteps'])} UNet calls needs one role per call and both cache graphs")
    feature: list = [None]

    def unet(sample_in: np.ndarray, hidden: np.ndarray, t: float, role: str | None = None) -> np.ndarray:
        timing.unet_calls += 1  # the runner slices rows itself when the graph's batch axis is fixed
        extra = () if timestep_cond is None else (np.repeat(np.asarray(timestep_cond, np.float32)[None],
                                                           len(sample_in), axis=0),)
        t_rows = np.full((len(sample_in),), t, dtype=np.float32)
        if role is None:
            return components.unet(sample_in, t_rows, hidden, *extra)
        if role == "full":
            out = np.asarray(components.unet_full(sample_in, t_rows, hidden, *extra))
            feature[0] = out[:, components.noise_channels:]
            return out[:, :components.noise_channels]
        if role == "shallow" and feature[0] is not None:
            return components.unet_shallow(sample_in, t_rows, hidden, feature[0], *extra)
        raise InputError(f"bundle sampler: step-cache role {role!r} at step {step[0]} (a plan starts with 'full' "
                         "and holds 'full' / 'shallow' only)")

    step = [0]

    def model(x: np.ndarray, t: float) -> np.ndarray:
        t1 = time.perf_counter()
        x = x.astype(np.float32)
        role = plan[step[0]] if plan is not None else None
        if mode == GUIDANCE_CFG:
            both = unet(np.concatenate([x, x]), np.concatenate([uncond, cond]), t, role)
            eps = both[:n] + guidance * (both[n:] - both[:n])
        else:
            eps = unet(x, cond, t, role)
        timing.unet_s += time.perf_counter() - t1
        step[0] += 1
        if on_step is not None:
            on_step(step[0], len(table["timesteps"]))
        return eps

    latents = run_table(table, x0, model, lambda j: step_noise(seeds, j, latent_shape)).astype(np.float32)
    _check_finite(latents, "the UNet loop's latents", table, prompts, seeds, guidance)
    t2 = time.perf_counter()
    images = components.vae_decoder(latents / scaling_factor)
    timing.vae_s = time.perf_counter() - t2
    timing.total_s = time.perf_counter() - start
    images = np.asarray(images, dtype=np.float32)
    _check_finite(images, "the VAE decoder's images", table, prompts, seeds, guidance)
    images = np.clip(images / 2 + 0.5, 0.0, 1.0)
    return images.transpose(0, 2, 3, 1), timing


def _check_finite(arrays: np.ndarray, stage: str, table: dict, prompts: list[str], seeds: list[int],
                  guidance: float) -> None:
    """NaN or Inf in a bundle's outputs is an error, never an image (clipping would hide it as black)."""
    finite = np.isfinite(arrays).reshape(len(arrays), -1).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise NumericError(f"bundle sampler: {stage} hold NaN/Inf for image {i} (prompt {prompts[i]!r}, seed "
                           f"{seeds[i]}, {len(table['timesteps'])} steps, guidance {guidance:g}); "
                           f"{int((~finite).sum())} of {len(arrays)} images diverged")


class BundleSampler:
    """An exported bundle opened for generation: tokenizer.json, the text encoder and VAE once, one UNet
    per width on demand, each through the runner its format needs (edgekit.runtime.runners). Every file
    is checked against the manifest (sha256, nothing unlisted) before anything is loaded."""

    def __init__(self, bundle_dir: Path, manifest: dict | None = None, threads: int | None = None) -> None:
        from edgekit.bundle import read_manifest, verify_files

        self.bundle_dir = Path(bundle_dir)
        self.manifest = manifest if manifest is not None else read_manifest(self.bundle_dir)
        verify_files(self.bundle_dir, self.manifest)
        self.threads = threads
        tok = self.manifest["tokenizer"]
        self.encode = load_tokenizer(self.bundle_dir / tok["tokenizer_json"], int(tok["max_length"]), tok.get("pad_id"))
        comps = self.manifest["components"]
        self._text_encoder = self._named(comps[by_role("prompt").name])
        self._vae = self._named(comps[by_role("decode").name])
        self._unets: dict[str, object] = {}
        self.runtime = self._text_encoder.runtime
        geometry = self.manifest["geometry"]
        self.latent_shape = tuple(int(d) for d in geometry["latent_shape"])
        self.scaling_factor = float(geometry["vae_scaling_factor"])

    def _named(self, entry: dict):
        """The runner, called with positional arrays in the manifest's input order, fed by name (a LiteRT
        signature may list its inputs in another order than the graph)."""
        from edgekit.runtime.runners import runner_for

        runner = runner_for(self.bundle_dir, entry, threads=self.threads)
        names = [t["name"] for t in entry["inputs"]]

        def call(*arrays):
            return runner.run(dict(zip(names, arrays)))

        call.runtime = runner.runtime
        return call

    def widths(self) -> list[str]:
        return sorted(self._unet_entries(), key=float, reverse=True)

    def _unet_entries(self) -> dict:
        """The UNet's manifest entry per width key."""
        return self.manifest["components"][by_role("denoise").name]["widths"]

    def steps(self) -> list[int]:
        return sorted(int(s) for s in self.manifest["sampling"]["schedules"])

    def cache_plan(self, cache: int, steps: int) -> list[str] | None:
        """The manifest's step-cache plan for interval ``cache`` at ``steps`` steps (None for 1: the plain loop)."""
        from edgekit.step_cache import check_interval

        cache = check_interval(cache)
        if cache == 1:
            return None
        section = self.manifest["sampling"].get("step_cache")
        offered = [int(k) for k in section["plans"]] if section else []
        if cache not in offered:
            raise InputError(f"the bundle {self.bundle_dir} offers no step-cache plan at this interval (offers: "
                             f"{', '.join(map(str, [1] + offered))}; edgekit export --cache)", param="cache",
                             value=cache)
        plans = section["plans"][str(cache)]
        if str(steps) not in plans:
            raise InputError(f"the bundle has no {steps}-step plan at this interval (an interval larger than the "
                             f"step count caches nothing; plans for {', '.join(sorted(plans, key=int))} steps)",
                             param="cache", value=cache)
        return list(plans[str(steps)])

    def components(self, width, cached: bool = False) -> Components:
        """The runners at ``width`` (any Width spelling); the UNet's is opened on first use; ``cached``: the
        step-cache graphs too (the manifest's sampling.step_cache)."""
        from edgekit.width import Width, WidthError

        entries = self._unet_entries()
        try:
            key = Width.parse(width).key
        except WidthError as exc:
            raise InputError(f"{self.bundle_dir}: {exc}") from None
        if key not in entries:
            raise InputError(f"width {width}: the bundle {self.bundle_dir} has no UNet at width {key} "
                             f"(has: {', '.join(entries)})")
        if key not in self._unets:
            self._unets[key] = self._named(entries[key])
        comps = Components(text_encoder=self._text_encoder, unet=self._unets[key], vae_decoder=self._vae)
        if cached:
            section = self.manifest["sampling"]["step_cache"]
            from edgekit.step_cache import FULL, SHALLOW

            runners = {}
            for role in (FULL, SHALLOW):
                name = section["graphs"][role]
                if (name, key) not in self._unets:
                    self._unets[(name, key)] = self._named(self.manifest["components"][name]["widths"][key])
                runners[role] = self._unets[(name, key)]
            comps.unet_full, comps.unet_shallow = runners[FULL], runners[SHALLOW]
            comps.noise_channels = int(section["full_output"]["noise_channels"])
        return comps

    def table(self, steps: int) -> dict:
        schedules = self.manifest["sampling"]["schedules"]
        if str(steps) not in schedules:
            raise InputError(f"the bundle has no schedule for {steps} steps (has: {', '.join(sorted(schedules, key=int))})",
                             param="steps", value=steps)
        return schedules[str(steps)]

    def guidance(self, guidance: float | None = None) -> tuple[float, str, np.ndarray | None]:
        """(scale, mode, timestep_cond) for ``guidance`` (None: the manifest's), as diffusers applies it."""
        from edgekit.schedule import GUIDANCE_EMBEDDING, guidance_embedding, guidance_mode

        sampling = self.manifest["sampling"]
        g = float(sampling["guidance_scale"]) if guidance is None else float(guidance)
        unet_inputs = next(iter(self._unet_entries().values()))["inputs"]
        cond_input = next((t for t in unet_inputs if t["name"] == "timestep_cond"), None)
        dim = int(cond_input["shape"][-1]) if cond_input else None
        mode = sampling.get("guidance_mode") if guidance is None else None
        mode = mode or guidance_mode(g, dim)
        return g, mode, guidance_embedding(g, dim) if mode == GUIDANCE_EMBEDDING else None

    def generate(self, prompts: list[str], seeds: list[int], steps: int, width: float,
                 guidance: float | None = None, on_step=None, cache: int = 1) -> tuple[np.ndarray, Timing]:
        """``cache``: the step-cache interval (1: the plain loop; else the manifest's plan for it)."""
        table = self.table(steps)
        plan = self.cache_plan(cache, steps)
        g, mode, timestep_cond = self.guidance(guidance)
        return sample(self.components(width, cached=plan is not None), self.encode, table, prompts, seeds, g,
                      self.latent_shape, self.scaling_factor, on_step, mode=mode, timestep_cond=timestep_cond, plan=plan)
