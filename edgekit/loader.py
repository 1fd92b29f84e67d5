"""Open whatever a stage produced as a runnable pipeline: a diffusers directory (plain, pruned or
slimmable, at a chosen width) or a quantized directory (its components run in ORT or torch INT8).

Commands that run a model (generate, eval, calibrate, bench) call ``open_model`` so that every later
stage's output can be generated from and evaluated the same way."""
from __future__ import annotations

import json
from pathlib import Path

from edgekit.constants import MANIFEST


def artifact_stage(path: Path) -> str | None:
    """The stage that wrote ``path`` (its manifest's "stage"), or None for a plain diffusers directory."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text()).get("stage")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None


def open_model(path: Path | str | None = None, width: float | None = None, flag: str = "--model"):
    from edgekit.pipeline import load_pipeline

    if path is not None and artifact_stage(Path(path)) == "quantize":
        from edgekit.quantize.artifact import load_quantized_pipeline

        return load_quantized_pipeline(path, width=width, flag=flag)
    return load_pipeline(path, flag=flag, width=width)
