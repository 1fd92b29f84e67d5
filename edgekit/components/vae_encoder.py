"""The VAE encoder: an image in [-1, 1] -> its latents (the posterior's mean, deterministic, before the VAE's
scaling factor), as img2img pipelines call it. Exported only where a target asks for it (the onnx target)."""
from __future__ import annotations

import torch
from torch import nn

from edgekit.components.base import Component, ComponentSpec, TensorSpec


class VaeEncoderForExport(nn.Module):
    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample, return_dict=False)[0].mode()


class VaeEncoder(Component):
    name = "vae_encoder"
    role = "encode"
    pipeline_attr = "vae"
    in_every_bundle = False
    calibrated = False  # text-to-image sampling never calls it: no rows to capture
    latent_side = "output"

    def spec(self, pipe) -> ComponentSpec:
        latent = int(pipe.unet.config.sample_size)
        image = latent * int(pipe.vae_scale_factor)
        return ComponentSpec(self.name, (TensorSpec("sample", "float32", ("batch", int(pipe.vae.config.in_channels),
                                                                         image, image)),),
                             (TensorSpec("latent_sample", "float32", ("batch", int(pipe.vae.config.latent_channels),
                                                                      latent, latent)),))

    def export_module(self, pipe) -> nn.Module:
        return VaeEncoderForExport(pipe.vae).eval()

    def example_input(self, pipe, tensor, shape, rng):
        return rng.uniform(-1.0, 1.0, size=shape).astype("float32")  # an image in the pipeline's range


COMPONENT = VaeEncoder()
