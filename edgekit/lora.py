"""LoRA files fused into a model before any stage runs (`--lora FILE[:SCALE]`, repeatable).

diffusers (with peft) reads each safetensors LoRA in any format its ``load_lora_weights`` knows (diffusers,
kohya, ...), fuses it into the UNet and the text encoder at its scale, and the fused weights are written as a
model directory beside the user's: a copy of the model (its structure.json, defaults, prompts, tokenizer,
scheduler, VAE as they are) whose UNet and text-encoder weight files hold the fused float32 weights, plus
``lora.json`` naming the base model and each LoRA by sha256 and scale. Every stage then runs on that directory,
so the LoRA is in every image, calibration row and exported graph, in the manifest's ``source_model`` and, as
part of the model's content hash, in every package stage key. The directory is cached by a key over the base
model's hash and the LoRAs' (``$EDGEKIT_CACHE/lora/``, default ``~/.cache/edgekit``): a second command reuses it.

A file that is not safetensors, a LoRA whose tensors do not fit the model's layers, or one whose keys match no
layer of the UNet or text encoder is refused in one line naming ``--lora`` and the file, before anything is
written.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import InputError
from edgekit.modeldir import TEXT_ENCODER, UNET

LORA_JSON = "lora.json"
FUSED_COMPONENTS = (UNET, TEXT_ENCODER)
SCALE_LIMIT = 100.0


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """FILE or FILE:SCALE (a finite number; the last colon separates it, so a path may hold colons)."""
        import math

        path, sep, scale_text = str(text).rpartition(":")
        if sep and path:
            try:
                scale = float(scale_text)
            except ValueError:
                path, scale = str(text), 1.0  # a colon that is part of the file name
            else:
                if not math.isfinite(scale) or abs(scale) > SCALE_LIMIT:
                    raise InputError(f"scale {scale_text}: expected a finite number within +-{SCALE_LIMIT:g}",
                                     param="lora", value=text)
        else:
            path, scale = str(text), 1.0
        return cls(Path(path), scale)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "scale": self.scale}


def _cache_root() -> Path:
    base = os.environ.get("EDGEKIT_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "edgekit") / "lora"


def _check_file(spec: LoraSpec) -> str:
    """The LoRA file's sha256, after checking it is a complete safetensors file."""
    from edgekit.errors import ModelFormatError
    from edgekit.fsutil import sha256_file
    from edgekit.pipeline import check_safetensors

    if not spec.path.is_file():
        raise InputError("no such file (expected a LoRA .safetensors file)", param="lora", value=spec.path)
    try:
        check_safetensors(spec.path)
    except ModelFormatError as exc:
        why = str(exc).split("not a valid safetensors file", 1)[-1].strip(" ()") or str(exc)
        raise InputError(f"not a safetensors file ({why})", param="lora", value=spec.path) from None
    return sha256_file(spec.path)


def _fuse(pipe, spec: LoraSpec, name: str) -> None:
    """Load one LoRA into the pipeline's UNet and text encoder, refuse it when it touches neither or does not
    fit, and fuse it at its scale."""
    import torch

    from diffusers.utils import logging as diffusers_logging

    before = {c: {k: v.clone() for k, v in getattr(pipe, c).state_dict().items()} for c in FUSED_COMPONENTS}
    verbosity = diffusers_logging.get_verbosity()
    try:
        # diffusers logs a failed load before raising: the one line below says it instead
        diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pipe.load_lora_weights(str(spec.path), adapter_name=name)
    except (ValueError, RuntimeError, KeyError, OSError, TypeError, IndexError) as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
        mismatch = next((ln for ln in lines if "size mismatch" in ln), None)
        why = (f"its tensors do not fit this model's layers ({mismatch[:300]})" if mismatch
               else f"diffusers could not load it ({lines[0][:300]})")
        raise InputError(why, param="lora", value=spec.path) from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    adapters = set()
    for component in FUSED_COMPONENTS:
        module = getattr(pipe, component)
        config = getattr(module, "peft_config", None) or {}
        if name in config:
            adapters.add(component)
    if not adapters:
        raise InputError("none of its keys names a layer of the UNet or the text encoder (not a LoRA of this "
                         "model's architecture)", param="lora", value=spec.path)
    pipe.fuse_lora(components=sorted(adapters), lora_scale=spec.scale, adapter_names=[name])
    pipe.unload_lora_weights()
    changed = any(not torch.equal(before[c][k], v) for c in FUSED_COMPONENTS
                  for k, v in getattr(pipe, c).state_dict().items() if k in before[c])
    if not changed and spec.scale != 0:
        raise InputError("fusing it changed no weight (all its up-projections are zero?)", param="lora",
                         value=spec.path)


def _write_fused(pipe, model_dir: Path, stage: Path) -> None:
    """``stage`` (a copy of ``model_dir``): the UNet and text-encoder weight files replaced by the fused weights,
    float32, same tensor names."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from edgekit.pipeline import _weights_file

    shutil.copytree(model_dir, stage, symlinks=False)
    for component in FUSED_COMPONENTS:
        target = _weights_file(stage / component)
        if target is None or target.suffix != ".safetensors":
            raise InputError(f"{model_dir / component}: --lora needs its weights as .safetensors", param="lora")
        with safe_open(str(target), framework="pt") as fh:
            names = list(fh.keys())
        state = getattr(pipe, component).state_dict()
        missing = [n for n in names if n not in state]
        if missing:
            raise InputError(f"{target}: tensors {missing[:3]} are not in the loaded {component}", param="lora")
        target.unlink()
        save_file({n: state[n].detach().to("cpu").float().contiguous() for n in names}, str(target))


def with_loras(model_dir: Path | str | None, loras) -> Path:
    """``model_dir`` itself when no LoRA is given, else the (cached) model directory with every LoRA fused, in the
    order given."""
    from edgekit.fsutil import staged_dir
    from edgekit.modeldir import ModelDir
    from edgekit.pipeline import load_pipeline

    specs = [s if isinstance(s, LoraSpec) else LoraSpec.parse(s) for s in (loras or ())]
    model = ModelDir.of(model_dir)
    model_dir = model.path
    if not specs:
        return model_dir
    files = [{"name": s.path.name, "sha256": _check_file(s), "scale": s.scale} for s in specs]
    base = {"name": model_dir.name, "sha256": model.sha256}
    record = {"base_model": base, "loras": files}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    out = _cache_root() / f"{model_dir.name}+lora-{key}"
    if (out / LORA_JSON).is_file():
        return out
    pipe = load_pipeline(model)
    for i, spec in enumerate(specs):
        _fuse(pipe, spec, f"edgekit_lora_{i}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with staged_dir(out) as stage:
        stage.rmdir()
        _write_fused(pipe, model_dir, stage)
        (stage / LORA_JSON).write_text(json.dumps(record, indent=2) + "\n")
    return out


def lora_record(model_dir: Path) -> dict | None:
    """The base model and LoRAs a fused directory was made from (its lora.json), else None."""
    path = Path(model_dir) / LORA_JSON
    if not path.is_file():
        return None
    from edgekit.pipeline import read_json_object

    return read_json_object(path)

