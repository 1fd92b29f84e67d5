"""Load, check and run any local diffusers Stable-Diffusion-style pipeline directory.

A directory is checked before diffusers touches it, so a user gets one line naming the missing or broken
file instead of a traceback: model_index.json, the five components, and every safetensors header.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.constants import EDGEKIT_DEFAULTS, MODEL_INDEX, PIPELINE_COMPONENTS, SAFETENSORS_SUFFIX
from edgekit.errors import InputError, ModelFormatError

# Classes each component may have; anything else is not an SD-1.x/2.x-style pipeline.
EXPECTED_CLASSES = {
    "unet": {"UNet2DConditionModel"},
    "vae": {"AutoencoderKL"},
    "text_encoder": {"CLIPTextModel", "CLIPTextModelWithProjection"},
    "tokenizer": {"CLIPTokenizer", "CLIPTokenizerFast"},
}
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder")
DIFFUSERS_GUIDANCE_DEFAULT = 7.5
DIFFUSERS_STEPS_DEFAULT = 50


def default_model_dir() -> Path:
    from edgekit.zoo.tiny_digits import PIPELINE_DIR

    return PIPELINE_DIR


def check_safetensors(path: Path) -> None:
    """Raise ModelFormatError unless ``path`` is a complete safetensors file (header and data sizes agree)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError("shorter than the 8-byte header length")
            (header_len,) = struct.unpack("<Q", head)
            if header_len <= 0 or 8 + header_len > size:
                raise ValueError(f"header length {header_len} exceeds the file size {size}")
            header = json.loads(fh.read(header_len))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: not a valid safetensors file ({exc})") from None
    expected = 8 + header_len + (max(ends) if ends else 0)
    if expected != size:
        raise ModelFormatError(f"{path}: truncated or corrupt safetensors file ({size} bytes, header says {expected})")


def _weights_file(component_dir: Path) -> Path | None:
    found = sorted(component_dir.glob(f"*{SAFETENSORS_SUFFIX}")) + sorted(component_dir.glob("*.bin"))
    return found[0] if found else None


def check_model_dir(path: Path | str | None, flag: str = "--model") -> Path:
    """Return the resolved pipeline directory, or raise one clear error naming what is wrong."""
    if path is None:
        path = default_model_dir()
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise InputError(f"{flag} {path}: no such directory")
    if not path.is_dir():
        raise InputError(f"{flag} {path}: expected a diffusers pipeline directory, got a file")
    index_path = path / MODEL_INDEX
    if not index_path.is_file():
        raise ModelFormatError(f"{flag} {path}: not a diffusers pipeline directory ({MODEL_INDEX} missing)")
    try:
        index = json.loads(index_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{index_path}: not valid JSON ({exc})") from None
    for component in PIPELINE_COMPONENTS:
        entry = index.get(component)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise ModelFormatError(f"{index_path}: component '{component}' missing (an SD-style pipeline needs "
                                   f"{', '.join(PIPELINE_COMPONENTS)})")
        allowed = EXPECTED_CLASSES.get(component)
        if allowed and entry[1] not in allowed:
            raise ModelFormatError(f"{index_path}: '{component}' is {entry[1]}, expected one of {sorted(allowed)}")
        if not (path / component).is_dir():
            raise ModelFormatError(f"{flag} {path}: component folder '{component}/' missing")
    for component in WEIGHT_COMPONENTS:
        weights = _weights_file(path / component)
        if weights is None:
            raise ModelFormatError(f"{path / component}: no weights file (*.safetensors or *.bin)")
        if weights.suffix == SAFETENSORS_SUFFIX:
            check_safetensors(weights)
    return path


@dataclass(frozen=True)
class SamplingDefaults:
    guidance_scale: float
    steps: int


def sampling_defaults(model_dir: Path) -> SamplingDefaults:
    """The model's own guidance/steps defaults (edgekit_defaults.json), else diffusers' defaults."""
    data = {}
    path = Path(model_dir) / EDGEKIT_DEFAULTS
    if path.is_file():
        data = json.loads(path.read_text())
    return SamplingDefaults(
        guidance_scale=float(data.get("guidance_scale", DIFFUSERS_GUIDANCE_DEFAULT)),
        steps=int(data.get("num_inference_steps", DIFFUSERS_STEPS_DEFAULT)),
    )


def load_pipeline(model_dir: Path | str | None = None, flag: str = "--model", width: float | None = None):
    """Check and load a pipeline on CPU in float32 (weights stored as float16 are upcast).

    ``width`` selects a width multiplier of a slimmable model (one with a structure.json); None is full width.
    """
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    path = check_model_dir(model_dir, flag)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # its weight-loading bar would break one-line errors
    from edgekit.structure import Structure, load_structured_unet, select_width

    # A pruned or slimmable model's per-layer widths live in structure.json: the UNet is rebuilt from
    # its base config, sliced to them, and its (smaller) weights loaded strictly.
    structure = Structure.load(path)
    if structure is None and width is not None and float(width) != 1.0:
        raise InputError(f"--width {width}: {path} is not a slimmable model (no structure.json); "
                         "make one with edgekit slim")
    extra = {"unet": load_structured_unet(path / "unet", structure)} if structure is not None else {}
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            path, dtype=torch.float32, local_files_only=True, safety_checker=None,
            requires_safety_checker=False, **extra,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFormatError(f"{flag} {path}: diffusers could not load it ({first})") from None
    pipe.set_progress_bar_config(disable=True)
    if structure is not None and width is not None:
        select_width(pipe.unet, structure, float(width), path)
    pipe.edgekit_model_dir = path
    pipe.edgekit_width = 1.0 if width is None else float(width)
    pipe.edgekit_structure = structure
    return pipe


def check_steps(steps: int, flag: str = "--steps") -> int:
    if not isinstance(steps, int) or steps <= 0:
        raise InputError(f"{flag} {steps}: expected a positive whole number of sampling steps")
    return steps


def generate(pipe, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float,
             batch_size: int = 50, on_batch=None) -> np.ndarray:
    """Run the pipeline; image i uses its own generator seeded with seeds[i], so it does not depend on
    how the prompts are batched. Returns (N, H, W, 3) float32 in [0, 1]."""
    import torch

    check_steps(steps)
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds[chunk]]
        with torch.inference_mode():
            out = pipe(prompt=prompts[chunk], num_inference_steps=steps, guidance_scale=guidance_scale,
                       generator=generators, output_type="np")
        images.append(out.images.astype(np.float32))
        if on_batch is not None:
            on_batch(len(generators))
    return np.concatenate(images, axis=0)
