"""What each exportable component is, as data: its torch forward, input/output names, dtypes and shapes.

One spec per component (text_encoder, unet, vae_decoder) serves every exporter and quantizer, so the
ONNX graph, the TFLite and Core ML models, the calibration rows and the bundle manifest all agree on
names and shapes. Shapes use "batch" for the one axis that may vary.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgekit.constants import CALIB_COMPONENTS
from edgekit.errors import CalibrationError


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple  # ints, with "batch" for the free leading axis

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if d == "batch" else int(d) for d in self.shape)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


class TextEncoderForExport(nn.Module):
    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class UNetForExport(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        # timestep_cond: the guidance embedding of a UNet with time_cond_proj_dim (LCM), one row per sample
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]


class VaeDecoderForExport(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Relative error (||a-b|| / ||b||) an fp32 export must stay under against torch.
    fp32_tolerance: float = 1e-4

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def component_spec(pipe, name: str) -> ComponentSpec:
    """The spec of ``name`` for this pipeline's geometry (read from its configs, never edited)."""
    if name == "text_encoder":
        length = int(pipe.tokenizer.model_max_length)
        hidden = int(pipe.text_encoder.config.hidden_size)
        # int32 token ids: what diffusers, optimum and the onnxruntime-web demos feed (and all LiteRT/Core ML take)
        return ComponentSpec(name, (TensorSpec("input_ids", "int32", ("batch", length)),),
                             (TensorSpec("last_hidden_state", "float32", ("batch", length, hidden)),))
    if name == "unet":
        cfg = pipe.unet.config
        size = int(cfg.sample_size)
        length = int(pipe.tokenizer.model_max_length)
        guidance_embedding = getattr(cfg, "time_cond_proj_dim", None)
        return ComponentSpec(name, (
            TensorSpec("sample", "float32", ("batch", int(cfg.in_channels), size, size)),
            TensorSpec("timestep", "float32", ("batch",)),
            TensorSpec("encoder_hidden_states", "float32", ("batch", length, int(cfg.cross_attention_dim))),
        ) + ((TensorSpec("timestep_cond", "float32", ("batch", int(guidance_embedding))),) if guidance_embedding else ()),
            (TensorSpec("out_sample", "float32", ("batch", int(cfg.out_channels), size, size)),))
    if name == "vae_decoder":
        latent_channels = int(pipe.vae.config.latent_channels)
        latent = int(pipe.unet.config.sample_size)
        image = latent * int(pipe.vae_scale_factor)
        return ComponentSpec(name, (TensorSpec("latent_sample", "float32", ("batch", latent_channels, latent, latent)),),
                             (TensorSpec("sample", "float32", ("batch", int(pipe.vae.config.out_channels), image, image)),))
    raise KeyError(f"unknown component '{name}'; known: {list(CALIB_COMPONENTS)}")


def export_module(pipe, name: str) -> nn.Module:
    """A module whose forward takes the spec's inputs positionally and returns one tensor."""
    wrappers = {"text_encoder": (TextEncoderForExport, "text_encoder"), "unet": (UNetForExport, "unet"),
                "vae_decoder": (VaeDecoderForExport, "vae")}
    if name not in wrappers:
        raise KeyError(f"unknown component '{name}'; known: {list(wrappers)}")
    cls, attr = wrappers[name]
    return cls(getattr(pipe, attr)).eval()


def example_inputs(pipe, name: str, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible random inputs of the spec's shapes (token ids within the vocabulary)."""
    rng = np.random.default_rng(seed)
    spec = component_spec(pipe, name)
    out = {}
    for t in spec.inputs:
        shape = t.concrete(batch)
        if t.name == "input_ids":
            out[t.name] = rng.integers(0, len(pipe.tokenizer), size=shape).astype(t.dtype)
        elif t.name == "timestep":
            out[t.name] = rng.integers(0, 1000, size=shape).astype(np.float32)
        elif t.name == "timestep_cond":  # a guidance embedding: sines and cosines
            out[t.name] = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        else:
            out[t.name] = rng.standard_normal(shape).astype(np.float32)
    return out


def inputs_from_calibration(spec: ComponentSpec, rows: dict[str, np.ndarray], index=slice(None)) -> dict[str, np.ndarray]:
    """Select the spec's inputs from calibration rows, cast to the spec's dtypes."""
    missing = [t.name for t in spec.inputs if t.name not in rows]
    if missing:
        raise CalibrationError(f"{spec.name}: calibration rows carry no {', '.join(missing)} (they hold "
                               f"{', '.join(sorted(rows))}); re-run edgekit calibrate on this model")
    return {t.name: np.asarray(rows[t.name][index]).astype(t.dtype) for t in spec.inputs}


@torch.no_grad()
def run_torch(module: nn.Module, spec: ComponentSpec, inputs: dict[str, np.ndarray]) -> np.ndarray:
    args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in spec.input_names()]
    return module(*args).detach().cpu().numpy()
