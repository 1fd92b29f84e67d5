"""Load, check and run any local diffusers Stable-Diffusion-style pipeline directory.

A directory is checked before diffusers touches it, so a user gets one line naming the missing or broken
file instead of a traceback: model_index.json, the five components, and every safetensors header.
"""
from __future__ import annotations

import functools
import json
import math
import struct
from contextlib import contextmanager
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.constants import EDGEKIT_DEFAULTS, SAFETENSORS_SUFFIX
from edgekit.errors import InputError, ModelFormatError, NumericError

DIFFUSERS_GUIDANCE_DEFAULT = 7.5
DIFFUSERS_STEPS_DEFAULT = 50


def default_model_dir() -> Path:
    from edgekit.zoo.tiny_digits import PIPELINE_DIR

    return PIPELINE_DIR


SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def check_safetensors(path: Path) -> None:
    """Raise ModelFormatError unless ``path`` is a complete safetensors file (header and data sizes agree)."""
    from edgekit.safe_read import parse_json

    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", head)
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError(f"header length {header_len} exceeds the file size {size}")
            if header_len > SAFETENSORS_MAX_HEADER:
                raise ValueError(f"header length {header_len} is over the format's {SAFETENSORS_MAX_HEADER}-byte limit")
            try:  # bounded like every JSON edgekit reads (depth, integer digits)
                header = parse_json(fh.read(header_len).decode("utf-8"), "its JSON header", "safetensors header")
            except InputError as exc:
                raise ValueError(str(exc)) from None
        if not isinstance(header, dict):
            raise ValueError(f"its JSON header is a {type(header).__name__}, expected an object of tensors")
        ends = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            offsets = info.get("data_offsets") if isinstance(info, dict) else None
            if not isinstance(offsets, list) or len(offsets) != 2:
                raise ValueError(f"tensor '{name}' has no [begin, end] data_offsets")
            ends.append(int(offsets[1]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        raise ModelFormatError(f"{path}: not a valid safetensors file ({exc})") from None
    expected = 8 + header_len + (max(ends) if ends else 0)
    if expected != size:
        raise ModelFormatError(f"{path}: truncated or corrupt safetensors file ({size} bytes, header says {expected})")


def read_json_object(path: Path, error: type[InputError] = ModelFormatError) -> dict:
    """A file that must hold one JSON object (a model's config, a calibration meta.json), or ``error`` naming it
    and what is wrong."""
    from edgekit.safe_read import read_json

    data = read_json(path, error=error)  # bounded: a regular file, its size, depth and numbers
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got a {type(data).__name__}")
    return data


def _weights_file(component_dir: Path) -> Path | None:
    found = sorted(component_dir.glob(f"*{SAFETENSORS_SUFFIX}")) + sorted(component_dir.glob("*.bin"))
    return found[0] if found else None


def check_model_dir(path, param: str = "model_dir") -> Path:
    """The resolved pipeline directory, checked once per process (edgekit.modeldir), or one clear error naming
    what is wrong (``param``: what the caller calls the directory)."""
    from edgekit.modeldir import ModelDir

    return ModelDir.of(path, param).path


@dataclass(frozen=True)
class SamplingDefaults:
    guidance_scale: float
    steps: int
    offered_steps: tuple[int, ...] | None = None  # the step counts a bundle ships (None: the target profile's)


def sampling_defaults(model_dir: Path) -> SamplingDefaults:
    """The model's own sampling defaults, else diffusers' (guidance 7.5, 50 steps).

    A model directory may hold ``edgekit_defaults.json`` (every key optional)::

        {"guidance_scale": 0.0,          # as diffusers' pipeline takes it; <= 1 turns guidance off
         "num_inference_steps": 1,       # the default step count
         "offered_steps": [1, 2, 4]}     # the step counts every bundle ships (replacing the profile's)

    e.g. a turbo-style model: 1-4 steps at guidance 0; an LCM: 2-8 steps, its guidance_scale fed through
    the UNet's guidance embedding. ``export``/``package`` --steps and --guidance override it. Other stages
    read their own keys from the same file (calibration_prompts, quality_evaluators)."""
    from edgekit.modeldir import ModelDir

    model = model_dir if isinstance(model_dir, ModelDir) else ModelDir.unchecked(model_dir)
    return model.sampling_defaults


def parse_sampling_defaults(data: dict, path: Path) -> SamplingDefaults:
    """``sampling_defaults`` from the parsed edgekit_defaults.json ``data`` (``path``: its file, for errors)."""
    guidance = data.get("guidance_scale", DIFFUSERS_GUIDANCE_DEFAULT)
    steps = data.get("num_inference_steps", DIFFUSERS_STEPS_DEFAULT)
    offered = data.get("offered_steps")
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise ModelFormatError(f"{path}: guidance_scale {guidance!r}: expected a finite number")
    from edgekit.limits import MAX_STEPS, check_step_counts

    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 < steps <= MAX_STEPS:
        raise ModelFormatError(f"{path}: num_inference_steps {steps!r}: expected a positive whole number up to "
                               f"{MAX_STEPS:,}")
    if offered is not None and (not isinstance(offered, list) or not offered
                                or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in offered)):
        raise ModelFormatError(f"{path}: offered_steps {offered!r}: expected a non-empty list of positive whole numbers")
    if offered is not None:
        try:
            check_step_counts(offered)
        except InputError as exc:
            raise ModelFormatError(f"{path}: offered_steps: {exc.worded(None)}") from None
    return SamplingDefaults(guidance_scale=float(guidance), steps=steps,
                            offered_steps=tuple(sorted(set(offered))) if offered else None)


def steps_source(explicit: int | None, model_dir: Path) -> str:
    """What to name when a step count is refused: the steps given, or the model's defaults file they came from."""
    return "steps" if explicit is not None else f"{Path(model_dir) / EDGEKIT_DEFAULTS} num_inference_steps"


def scheduler_config(model_dir: Path) -> dict:
    """The model's scheduler configuration with the class diffusers builds (edgekit.modeldir), or a
    ModelFormatError naming the file."""
    from edgekit.modeldir import ModelDir

    model = model_dir if isinstance(model_dir, ModelDir) else ModelDir.unchecked(model_dir)
    return model.scheduler_config


def scheduler_from_config(config: dict):
    import diffusers

    from edgekit.model_checks import check_scheduler_config

    check_scheduler_config(config, "scheduler config")  # its table sizes bounded before diffusers allocates them
    name = config.get("_class_name")
    cls = getattr(diffusers, name, None) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "set_timesteps"):
        raise ModelFormatError(f"scheduler config: _class_name {name!r} is not a diffusers scheduler")
    return cls.from_config(config)


@functools.lru_cache(maxsize=64)
def _scheduler_stays_finite(config_json: str, steps: int) -> bool:
    """Run the scheduler alone for ``steps`` steps on a small seeded latent with seeded unit-normal model
    outputs: True when every latent stays finite. Some schedulers accept step counts they cannot take
    (DPMSolverMultistep with 1000 linspace timesteps over 1000 training steps repeats one timestep, and
    the zero step size turns every latent into NaN); this finds that before the model runs."""
    import torch

    with torch.random.fork_rng(devices=[]):  # stochastic schedulers draw from the global generator
        torch.manual_seed(0)
        sched = scheduler_from_config(json.loads(config_json))
        try:
            sched.set_timesteps(steps)
            x = torch.randn(1, 4, 2, 2) * float(sched.init_noise_sigma)
            for t in sched.timesteps:
                model_input = sched.scale_model_input(x, t)
                if not torch.isfinite(model_input).all():
                    return False
                x = sched.step(torch.randn(1, 4, 2, 2), t, x, return_dict=False)[0]
                if not torch.isfinite(x).all():
                    return False
        except (ValueError, IndexError, ZeroDivisionError, RuntimeError):
            return False
    return True


def max_scheduler_steps(config: dict) -> int:
    """The largest step count up to the scheduler's num_train_timesteps that it takes with finite latents
    (the count below the top first: the usual failure is the top count alone repeating a timestep; else
    bisection, as a scheduler that fails does so from some count upwards)."""
    from edgekit.limits import MAX_STEPS

    limit = min(int(scheduler_from_config(config).config.num_train_timesteps), MAX_STEPS)
    text = json.dumps(config, sort_keys=True, default=str)
    for count in (limit, limit - 1):
        if count >= 1 and _scheduler_stays_finite(text, count):
            return count
    good, bad = 0, limit - 1
    while bad - good > 1:
        mid = (good + bad) // 2
        if _scheduler_stays_finite(text, mid):
            good = mid
        else:
            bad = mid
    return good


def check_scheduler_steps(config: dict, steps: int, param: str = "steps") -> int:
    """Refuse a step count the scheduler cannot take, naming its limit, before any model runs."""
    check_steps(steps, param)
    sched = scheduler_from_config(config)
    trained = int(sched.config.num_train_timesteps)
    name = type(sched).__name__
    if steps > trained or not _scheduler_stays_finite(json.dumps(config, sort_keys=True, default=str), steps):
        limit = max_scheduler_steps(config)
        why = (f"more than its {trained} training timesteps" if steps > trained
               else "its latents turn to NaN/Inf at that count")
        raise InputError(f"the model's {name} takes at most {limit} steps ({why})", param=param, value=steps)
    return steps


def check_model_steps(model_dir: Path, steps: int, param: str = "steps") -> int:
    """``check_scheduler_steps`` for the scheduler of a pipeline directory on disk."""
    return check_scheduler_steps(scheduler_config(model_dir), steps, param)


def load_pipeline(model_dir=None, param: str = "model_dir", width: float | None = None):
    """Check and load a pipeline on CPU in float32 (weights stored as float16 are upcast). ``model_dir``: a path
    or an edgekit.modeldir.ModelDir (None: the embedded default model); ``param``: what the caller calls the
    directory, named by its errors.

    ``width`` selects a width multiplier of a slimmable model (one with a structure.json); None is full width.
    """
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from edgekit.modeldir import UNET, ModelDir

    model = ModelDir.of(model_dir, param)
    path = model.path
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its weight-loading bar would break one-line errors
    from edgekit.structure import load_structured_unet, select_width

    # A pruned or slimmable model's per-layer widths live in structure.json: the UNet is rebuilt from
    # its base config, sliced to them, and its (smaller) weights loaded strictly.
    structure = model.structure
    if structure is None and width is not None and float(width) != 1.0:
        raise InputError(f"{path} is not a slimmable model (no structure.json); make one with edgekit slim",
                         param="width", value=width)
    extra = ({UNET: load_structured_unet(model.config_path(UNET).parent, structure, model.unet_config)}
             if structure is not None else {})
    model.scheduler_config  # a broken one would otherwise reach diffusers' hub fallback
    try:
        # a library deprecation notice, or diffusers' logged error before its fallback, would break the
        # one-line error raised below
        with warnings.catch_warnings(), _diffusers_log_level(diffusers_logging.CRITICAL):
            warnings.simplefilter("ignore")
            pipe = StableDiffusionPipeline.from_pretrained(
                path, dtype=torch.float32, local_files_only=True, safety_checker=None,
                requires_safety_checker=False, **extra,
            )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFormatError(f"diffusers could not load it ({first})", param=param, value=path) from None
    pipe.set_progress_bar_config(disable=True)
    if structure is not None and width is not None:
        select_width(pipe.unet, structure, float(width), path)
    pipe.edgekit_model_dir = path
    pipe.edgekit_width = 1.0 if width is None else float(width)
    pipe.edgekit_structure = structure
    return pipe


@contextmanager
def _diffusers_log_level(level: int):
    from diffusers.utils import logging as diffusers_logging

    before = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(level)
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before)


def check_steps(steps: int, param: str = "steps") -> int:
    from edgekit.limits import MAX_STEPS, check_at_most

    if not isinstance(steps, int) or steps <= 0:
        raise InputError("expected a positive whole number of sampling steps", param=param, value=steps)
    return check_at_most(steps, MAX_STEPS, param, "sampling steps")


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float,
             batch_size: int = 50, on_batch=None, latent_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Run the pipeline; image i draws its noise from edgekit.noise for seeds[i] (initial latents, and a
    stochastic scheduler's step noise), the generator every bundle runtime uses, so one seed is one image in
    torch and on every device, however the prompts are batched. ``latent_shape``: (C, h, w), default the
    UNet's sample size. Returns (N, H, W, 3) float32 in [0, 1].

    A step count the scheduler cannot take is refused first (InputError); an image holding NaN or Inf
    raises NumericError naming it, never returned (it would be saved as a black picture)."""
    import torch

    from edgekit.noise import diffusers_noise, initial_latents, latent_shape_of

    check_scheduler_steps({**pipe.scheduler.config, "_class_name": type(pipe.scheduler).__name__}, steps)
    if not math.isfinite(guidance_scale):
        raise InputError("expected a finite number", param="guidance", value=guidance_scale)
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    shape = tuple(latent_shape) if latent_shape is not None else latent_shape_of(pipe)
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk_seeds = [int(s) for s in seeds[start:start + batch_size]]
        latents = torch.from_numpy(initial_latents(chunk_seeds, shape))
        with torch.inference_mode(), diffusers_noise(pipe, chunk_seeds, shape) as count_step:
            out = pipe(prompt=list(prompts[start:start + batch_size]), num_inference_steps=steps,
                       guidance_scale=guidance_scale, latents=latents, callback_on_step_end=count_step,
                       output_type="np")
        batch = np.asarray(out.images, dtype=np.float32)
        finite = np.isfinite(batch).reshape(len(batch), -1).all(axis=1)
        if not finite.all():
            i = start + int(np.argmin(finite))
            raise NumericError(f"generate: image {i} (prompt {prompts[i]!r}, seed {seeds[i]}) holds NaN/Inf after "
                               f"{steps} steps at guidance {guidance_scale:g}; {int((~finite).sum())} of "
                               f"{len(batch)} images in its batch diverged")
        images.append(batch)
        if on_batch is not None:
            on_batch(len(chunk_seeds))
    return np.concatenate(images, axis=0)
