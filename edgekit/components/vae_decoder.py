"""The VAE decoder: latents (already divided by the VAE's scaling factor) -> an image in [-1, 1]."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from edgekit.components.base import Component, ComponentSpec, StandIn, TensorSpec, numpy_rows


class VaeDecoderForExport(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeWithDecoderStandIn(nn.Module):
    """The float VAE (its encoder, config, scaling factor) with ``decode`` running the stand-in decoder."""

    def __init__(self, vae: nn.Module, decoder: StandIn) -> None:
        super().__init__()
        self.vae = vae
        self.decoder_runner = decoder

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


class VaeDecoder(Component):
    name = "vae_decoder"
    role = "decode"
    pipeline_attr = "vae"
    latent_side = "input"

    def spec(self, pipe) -> ComponentSpec:
        latent_channels = int(pipe.vae.config.latent_channels)
        latent = int(pipe.unet.config.sample_size)
        image = latent * int(pipe.vae_scale_factor)
        return ComponentSpec(self.name, (TensorSpec("latent_sample", "float32", ("batch", latent_channels, latent, latent)),),
                             (TensorSpec("sample", "float32", ("batch", int(pipe.vae.config.out_channels), image, image)),))

    def export_module(self, pipe) -> nn.Module:
        return VaeDecoderForExport(pipe.vae).eval()

    def geometry_problem(self, entry, geometry):
        if not entry["outputs"]:
            return None
        shape = entry["outputs"][0]["shape"]
        side = shape[-1] if entry.get("layout", "NCHW") == "NCHW" else shape[-2]
        if isinstance(side, int) and side != geometry["image_size"]:
            return f"geometry.image_size {geometry['image_size']}, but the VAE decoder gives {side}"
        return None

    @contextmanager
    def recording(self, pipe, offer, state):
        original_decode = pipe.vae.decode

        def decode(z, *args, **kwargs):
            for row in numpy_rows(z):
                state["order"] += 1
                offer({"latent_sample": row, "order": np.int64(state["order"])})
            return original_decode(z, *args, **kwargs)

        pipe.vae.decode = decode  # for this block only
        try:
            yield
        finally:
            del pipe.vae.decode  # the instance attribute goes; the class method is back

    def standin(self, pipe, run, input_names, where):
        return VaeWithDecoderStandIn(pipe.vae, StandIn(run, input_names, pipe.vae.config, where)).eval()


COMPONENT = VaeDecoder()
