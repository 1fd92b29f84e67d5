"""The quantized directory: write it, and open it as a diffusers pipeline whose components run INT8.

Layout (every stage keeps the diffusers layout so the usual checks and loaders work on it)::

    out/
      model_index.json, unet/, vae/, text_encoder/, ...   the float source directory (hard links, else copies)
      quantized/<component>/model.onnx                    ort-static / nncf: QDQ INT8 ONNX
      quantized/<component>/model_int8.pt, recipe.json    fx: converted INT8 layers + which ones
      manifest.json                                       written last: "stage": "quantize", method,
                                                          options, calibration hash, held-out errors,
                                                          sizes, float units, sensitivity ranking

``load_quantized_pipeline`` loads the float copy, then swaps each quantized component in: ONNX ones
become the component's stand-in (edgekit.components) calling onnxruntime, FX ones get their INT8 layers
rebuilt in place, so ``edgekit eval`` / ``generate`` run through them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from edgekit import __version__
from edgekit.constants import MANIFEST
from edgekit.errors import InputError, ModelFormatError

STAGE = "quantize"
FORMAT_VERSION = 1
QUANTIZED_DIR = "quantized"


def copy_source(model_dir: Path, staging: Path) -> dict:
    """Mirror the float source directory (hidden files and its manifest skipped) into the staging directory:
    hard links where the filesystem allows, copies otherwise (fsutil.link_or_copy_tree). Quantized files are
    new files under quantized/, so nothing here writes into a mirrored source file."""
    from edgekit.fsutil import link_or_copy_tree

    return link_or_copy_tree(model_dir, staging, skip_top=(MANIFEST,))


def build_manifest(model_dir: Path, calib, method: str, quantizer, options, width, results: dict,
                   seconds: float) -> dict:
    from edgekit.fsutil import sha256_file
    from edgekit.modeldir import ModelDir

    calib_meta = Path(calib.directory) / "meta.json"
    return {
        "stage": STAGE,
        "format_version": FORMAT_VERSION,
        "edgekit_version": __version__,
        "method": method,
        "artifact_kind": quantizer.artifact_kind,
        "options": {k: v for k, v in options.to_dict().items() if k in quantizer.uses_options
                    or k in ("holdout", "max_calib_rows", "sensitivity_rows", "seed")},
        "width": 1.0 if width is None else float(width),
        "source_model": {"path": str(Path(model_dir).resolve()), "sha256": ModelDir.of(model_dir).sha256},
        "calibration": {"path": str(calib.directory), "meta_sha256": sha256_file(calib_meta),
                        "model_sha256": calib.meta.get("model", {}).get("sha256")},
        "torch_version": torch.__version__,
        "components": results,
        "seconds": round(seconds, 2),
    }


def write_manifest(staging: Path, manifest: dict) -> None:
    """Last file written: its presence means the stage finished."""
    from edgekit.fsutil import sha256_file

    for info in manifest["components"].values():
        info["sha256"] = {f: sha256_file(staging / f) for f in info["files"]}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(path: Path) -> dict:
    manifest_path = Path(path) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        manifest["components"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{manifest_path}: not a quantize manifest ({exc})") from None
    if manifest.get("stage") != STAGE:
        raise ModelFormatError(f"{manifest_path}: stage is {manifest.get('stage')!r}, expected '{STAGE}'")
    return manifest


def install_onnx_component(pipe, component: str, path: Path) -> None:
    """Run ``component`` of ``pipe`` from the ONNX graph at ``path`` in onnxruntime: the component's own
    stand-in (edgekit.components) takes the pipeline module's place."""
    from edgekit.components import get_component
    from edgekit.onnx_export import ort_session, run_onnx

    session = ort_session(path)
    names = [i.name for i in session.get_inputs()]
    comp = get_component(component)
    comp.install(pipe, comp.standin(pipe, lambda feeds: run_onnx(session, feeds), names, str(path)))


def is_quantized(path: Path) -> bool:
    """Whether ``path`` is a directory this stage wrote (its manifest says "stage": "quantize")."""
    try:
        return json.loads((Path(path) / MANIFEST).read_text()).get("stage") == STAGE
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def load_quantized_pipeline(path: Path | str, width=None, param: str = "model_dir"):
    """The float copy in ``path`` with every quantized component swapped in; checks file hashes."""
    from edgekit.fsutil import sha256_file
    from edgekit.pipeline import load_pipeline
    from edgekit.quantize import fx
    from edgekit.width import Width

    path = Path(path).resolve()
    manifest = read_manifest(path)
    built = Width.parse(manifest.get("width", 1.0))
    if width is not None and Width.parse(width) != built:
        raise InputError(f"width {Width.parse(width)}: {path} was quantized at width {built.value}; quantize that "
                         "width separately")
    pipe = load_pipeline(path, param=param, width=built.value)
    for component, info in manifest["components"].items():
        for rel in info["files"]:
            file = path / rel
            if not file.is_file():
                raise ModelFormatError(f"{path}: {rel} missing (listed in {MANIFEST})")
            expected = info.get("sha256", {}).get(rel)
            if expected and sha256_file(file) != expected:
                raise ModelFormatError(f"{file}: checksum differs from {MANIFEST}")
        if info["kind"] == "onnx":
            install_onnx_component(pipe, component, path / info["files"][0])
        elif info["kind"] == "torch-fx":
            fx.load_component(pipe, component, (path / info["files"][0]).parent)
        else:
            raise ModelFormatError(f"{path / MANIFEST}: unknown artifact kind {info['kind']!r} for {component}")
    pipe.edgekit_model_dir = path
    pipe.edgekit_quantized = manifest["method"]
    return pipe
