"""The UNet that also hands out the feature step caching keeps (edgekit.step_cache), once per width:
(noisy latents, timestep, text hidden states[, guidance embedding]) -> the noise prediction and the feature
entering the last up block, joined on the channel axis into one tensor (``out_sample_feature``).

One output keeps every runner (onnxruntime, onnxruntime-web, LiteRT, Core ML) and every check on its one-tensor
path; the manifest's ``sampling.step_cache.split`` says where the noise channels end, and a device loop slices
there. Exported only for bundles that offer a cache interval above 1; the plain ``unet`` graph stays for the
uncached loop.
"""
from __future__ import annotations

import torch
from torch import nn

from edgekit.components.base import ComponentSpec, TensorSpec
from edgekit.components.unet import UNet


class UNetFullForExport(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        from edgekit.step_cache import UNetWithFeature

        self.full = UNetWithFeature(unet)

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        out, feature = self.full(sample, timestep, encoder_hidden_states, timestep_cond)
        return torch.cat([out, feature], dim=1)


class UNetFull(UNet):
    name = "unet_full"
    role = "denoise_full"
    in_every_bundle = False  # only where the profile offers step caching
    calibrated = False  # calibration captures the plain UNet's rows, which are this graph's inputs too
    calibration_from = "unet"
    counts_params = False
    int8_units = False  # its units sit under another wrapper than the plain UNet's; recipes rank the UNet

    def spec(self, pipe) -> ComponentSpec:
        from edgekit.step_cache import feature_channels

        base = super().spec(pipe)
        out = base.outputs[0]
        channels = int(out.shape[1]) + feature_channels(pipe.unet)
        return ComponentSpec(self.name, base.inputs,
                             (TensorSpec("out_sample_feature", "float32", ("batch", channels) + tuple(out.shape[2:])),))

    def export_module(self, pipe) -> nn.Module:
        return UNetFullForExport(pipe.unet).eval()

    def recording(self, pipe, offer, state):
        raise NotImplementedError(f"{self.name}: its rows are the plain UNet's (calibration_from)")

    def standin(self, pipe, run, input_names, where):
        raise NotImplementedError(f"{self.name}: runs in the bundle's cached loop only")


COMPONENT = UNetFull()
