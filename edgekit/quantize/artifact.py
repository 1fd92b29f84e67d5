"""The quantized directory: write it, and open it as a diffusers pipeline whose components run INT8.

Layout (every stage keeps the diffusers layout so the usual checks and loaders work on it)::

    out/
      model_index.json, unet/, vae/, text_encoder/, ...   a full copy of the float source directory
      quantized/<component>/model.onnx                    ort-static / nncf: QDQ INT8 ONNX
      quantized/<component>/model_int8.pt, recipe.json    fx: converted INT8 layers + which ones
      manifest.json                                       written last: "stage": "quantize", method,
                                                          options, calibration hash, held-out errors,
                                                          sizes, float units, sensitivity ranking

``load_quantized_pipeline`` loads the float copy, then swaps each quantized component in: ONNX ones
become torch modules that call onnxruntime (``OrtUNet``, ``OrtTextEncoder``, ``OrtVaeDecoder``), FX
ones get their INT8 layers rebuilt in place, so ``edgekit eval`` / ``generate`` run through them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit import __version__
from edgekit.constants import MANIFEST
from edgekit.errors import InputError, ModelFormatError

STAGE = "quantize"
FORMAT_VERSION = 1
QUANTIZED_DIR = "quantized"


def copy_source(model_dir: Path, staging: Path) -> None:
    """Copy the float source directory (every file, hidden ones skipped) into the staging directory."""
    for item in Path(model_dir).iterdir():
        if item.name.startswith(".") or item.name == MANIFEST:
            continue
        if item.is_dir():
            shutil.copytree(item, staging / item.name, ignore=shutil.ignore_patterns(".*"))
        else:
            shutil.copy2(item, staging / item.name)


def build_manifest(model_dir: Path, calib, method: str, quantizer, options, width, results: dict,
                   seconds: float) -> dict:
    from edgekit.fsutil import sha256_file, sha256_tree

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
        "source_model": {"path": str(Path(model_dir).resolve()), "sha256": sha256_tree(model_dir)},
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


class _OrtComponent(nn.Module):
    """A torch-facing stand-in for a pipeline component that runs an ONNX model in onnxruntime."""

    def __init__(self, path: Path, config) -> None:
        super().__init__()
        from edgekit.onnx_export import ort_session

        self.path = Path(path)
        self.session = ort_session(self.path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = config
        # Keeps the pipeline's device/dtype queries answering "cpu, float32".
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def _run(self, feeds: dict[str, np.ndarray]) -> torch.Tensor:
        out = self.session.run(None, {k: v for k, v in feeds.items() if k in self.input_names})[0]
        return torch.from_numpy(out)


class OrtUNet(_OrtComponent):
    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, cross_attention_kwargs=None,
                added_cond_kwargs=None, return_dict: bool = True, **_ignored):
        batch = sample.shape[0]
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        t = t.expand(batch) if t.numel() == 1 else t
        feeds = {"sample": sample.detach().float().numpy(), "timestep": t.detach().numpy(),
                 "encoder_hidden_states": encoder_hidden_states.detach().float().numpy()}
        if "timestep_cond" in self.input_names:  # the guidance embedding of an LCM-style UNet
            if timestep_cond is None:
                raise InputError(f"{self.path}: this UNet takes a guidance embedding (timestep_cond) and was "
                                 "called without one")
            feeds["timestep_cond"] = timestep_cond.detach().float().numpy()
        out = self._run(feeds)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)


class OrtTextEncoder(_OrtComponent):
    def forward(self, input_ids, attention_mask=None, output_hidden_states=None, return_dict=None, **_ignored):
        if output_hidden_states:
            raise NotImplementedError("the INT8 text encoder returns only the last hidden state (no clip_skip)")
        return (self._run({"input_ids": input_ids.detach().numpy().astype(np.int32)}),)


class OrtVaeDecoder(nn.Module):
    """The float VAE (its encoder, config, scaling factor) with ``decode`` running the ONNX decoder."""

    def __init__(self, path: Path, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.decoder_runner = _OrtComponent(path, vae.config)

    @property
    def config(self):
        return self.vae.config

    @property
    def device(self) -> torch.device:
        return self.vae.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    def encode(self, *args, **kwargs):
        return self.vae.encode(*args, **kwargs)

    def decode(self, z, return_dict: bool = True, generator=None, **_ignored):
        out = self.decoder_runner._run({"latent_sample": z.detach().float().numpy()})
        if return_dict:
            from diffusers.models.autoencoders.vae import DecoderOutput

            return DecoderOutput(sample=out)
        return (out,)

    def forward(self, *args, **kwargs):
        return self.vae(*args, **kwargs)


def _replace_component(pipe, attr: str, module) -> None:
    # Set past DiffusionPipeline.__setattr__, which would rewrite the pipeline config with this class.
    pipe.__dict__[attr] = module


def install_onnx_component(pipe, component: str, path: Path) -> None:
    if component == "unet":
        _replace_component(pipe, "unet", OrtUNet(path, pipe.unet.config).eval())
    elif component == "text_encoder":
        _replace_component(pipe, "text_encoder", OrtTextEncoder(path, pipe.text_encoder.config).eval())
    elif component == "vae_decoder":
        _replace_component(pipe, "vae", OrtVaeDecoder(path, pipe.vae).eval())
    else:
        raise ModelFormatError(f"{path}: unknown quantized component '{component}'")


def load_quantized_pipeline(path: Path | str, width: float | None = None, flag: str = "--model"):
    """The float copy in ``path`` with every quantized component swapped in; checks file hashes."""
    from edgekit.fsutil import sha256_file
    from edgekit.pipeline import load_pipeline
    from edgekit.quantize import fx

    path = Path(path).resolve()
    manifest = read_manifest(path)
    built_width = float(manifest.get("width", 1.0))
    if width is not None and float(width) != built_width:
        raise InputError(f"--width {width}: {path} was quantized at width {built_width}; quantize that width "
                         "separately")
    pipe = load_pipeline(path, flag=flag, width=built_width)
    for component, info in manifest["components"].items():
        for rel in info["files"]:
            file = path / rel
            if not file.is_file():
                raise ModelFormatError(f"{flag} {path}: {rel} missing (listed in {MANIFEST})")
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
