"""What every bundle holds whatever its target: the tokenizer, the scheduler config, the sampling plan (guidance,
schedule tables, guidance embedding) and the record of where the bundle came from (model and calibration by
content hash)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgekit.errors import InputError
from edgekit.profiles import TargetProfile


def write_tokenizer(pipe, model_dir: Path, stage: Path) -> dict:
    dst = stage / "tokenizer"
    src = model_dir / "tokenizer"
    shutil.copytree(src, dst)
    if not (dst / "tokenizer.json").is_file():  # the web reads tokenizer.json with its own library
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            pipe.tokenizer.save_pretrained(tmp)
            if (Path(tmp) / "tokenizer.json").is_file():
                shutil.copy(Path(tmp) / "tokenizer.json", dst / "tokenizer.json")
    tok = pipe.tokenizer
    files = sorted(p.relative_to(stage).as_posix() for p in dst.rglob("*") if p.is_file())
    return {"files": files, "tokenizer_json": "tokenizer/tokenizer.json" if (dst / "tokenizer.json").is_file() else None,
            "max_length": int(tok.model_max_length), "bos_id": int(tok.bos_token_id), "eos_id": int(tok.eos_token_id),
            "pad_id": int(tok.pad_token_id), "vocab_size": int(len(tok)), "padding": "max_length",
            "lowercase": True}


def write_scheduler(pipe, stage: Path) -> dict:
    config = json.loads(json.dumps(_scheduler_config(pipe), default=list))
    (stage / "scheduler").mkdir()
    (stage / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"config": config, "file": "scheduler/scheduler_config.json"}


def source_model(model_dir: Path, calib_dir: Path | None, model_sha256: str) -> dict:
    """Where the bundle came from, by name and content hash (``model_sha256``: the model directory's
    sha256_tree, computed once by the caller): no path of the packaging host travels with it."""
    from edgekit.fsutil import sha256_file

    calibration = None
    if calib_dir is not None:
        from edgekit.constants import CALIB_META

        calibration = {"name": Path(calib_dir).resolve().name,
                       "meta_sha256": sha256_file(Path(calib_dir) / CALIB_META)}
    from edgekit.lora import lora_record

    lora = lora_record(model_dir)  # a model with LoRAs fused in (--lora): the base model and each LoRA's sha256
    extra = {"base_model": lora["base_model"], "loras": lora["loras"]} if lora else {}
    return {"name": Path(model_dir).resolve().name, "sha256": model_sha256, "calibration": calibration,
            **extra}


def sampling_plan(model_dir, profile: TargetProfile, steps=None, guidance: float | None = None) -> dict:
    """The manifest's "sampling" (less batching) of the model (a ModelDir or its path): guidance scale and mode,
    the guidance embedding an LCM-style UNet takes, the default step count and one schedule table per step count. Reads only small
    files (the scheduler and UNet configs), so an unsupported scheduler or step count is refused before
    any export work. Step counts: ``steps``, else the model's edgekit_defaults.json "offered_steps", else
    the profile's plus the model's default."""
    import math

    from edgekit.modeldir import SCHEDULER, ModelDir
    from edgekit.pipeline import check_scheduler_steps
    from edgekit.schedule import GUIDANCE_EMBEDDING, check_supported, guidance_embedding, guidance_mode, schedule_table

    model = ModelDir.of(model_dir)
    config = dict(model.scheduler_config)
    check_supported(config, f"{model.config_path(SCHEDULER)}")
    defaults = model.sampling_defaults
    if guidance is not None and not (isinstance(guidance, (int, float)) and math.isfinite(guidance)):
        raise InputError("expected a finite number", param="guidance", value=guidance)
    scale = float(defaults.guidance_scale if guidance is None else guidance)
    counts = tuple(steps) if steps else (defaults.offered_steps or tuple(profile.steps) + (defaults.steps,))
    for s in counts:  # a count the scheduler cannot take (NaN latents, beyond its training steps) is named now
        check_scheduler_steps(config, s, "steps")
    counts = sorted(set(counts))
    default_steps = defaults.steps if defaults.steps in counts else max(counts)
    dim = model.guidance_dim
    mode = guidance_mode(scale, dim)
    out = {"guidance_scale": scale, "guidance_mode": mode, "default_steps": default_steps,
           "noise": noise_name(), "schedules": {str(s): schedule_table(config, s) for s in counts}}
    if mode == GUIDANCE_EMBEDDING:
        out["guidance_embedding"] = {"input": "timestep_cond", "dim": int(dim),
                                     "values": [float(v) for v in guidance_embedding(scale, int(dim))]}
    return out


def noise_name() -> str:
    from edgekit.noise import NAME

    return NAME


def _scheduler_config(pipe) -> dict:
    config = dict(pipe.scheduler.config)
    config["_class_name"] = type(pipe.scheduler).__name__
    return config
