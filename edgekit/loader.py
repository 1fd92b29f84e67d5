"""Open whatever a stage produced as a runnable pipeline: a diffusers directory (plain, pruned or
slimmable, at a chosen width) or a quantized directory (its components run in ORT or torch INT8).

Commands that run a model (generate, eval, calibrate, bench) call ``open_model`` so that every later
stage's output can be generated from and evaluated the same way. It sits above the stages whose outputs it
opens (the quantize stage among them), in the runtime layer of edgekit's layer table."""
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


def open_model(path: Path | str | None = None, width=None, param: str = "model"):
    """The pipeline at ``path`` (None: the embedded default model) at ``width`` (a Width spelling; None: full);
    ``param``: what the caller calls the directory, named by its errors."""
    from edgekit.pipeline import load_pipeline
    from edgekit.quantize.artifact import is_quantized, load_quantized_pipeline
    from edgekit.width import Width

    if path is not None and is_quantized(Path(path)):
        return load_quantized_pipeline(path, width=width, param=param)
    return load_pipeline(path, param=param, width=None if width is None else Width.parse(width).value)
