"""The shallow branch of step caching (edgekit.step_cache), once per width: (noisy latents, timestep, text
hidden states, the feature a full step kept[, guidance embedding]) -> the noise prediction. Runs time embedding,
conv_in, the first level's resnets/attentions, the last up block and the output convolution only."""
from __future__ import annotations

import numpy as np
from torch import nn

from edgekit.components.base import ComponentSpec, TensorSpec
from edgekit.components.unet import UNet

FEATURE_INPUT = "cached_feature"


class UNetShallowForExport(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        from edgekit.step_cache import ShallowUNet

        self.shallow = ShallowUNet(unet)

    def forward(self, sample, timestep, encoder_hidden_states, cached_feature, timestep_cond=None):
        return self.shallow(sample, timestep, encoder_hidden_states, cached_feature, timestep_cond)


class UNetShallow(UNet):
    name = "unet_shallow"
    role = "denoise_shallow"
    in_every_bundle = False  # only where the profile offers step caching
    calibrated = False  # its feature input comes from a cached trajectory, which calibration does not capture:
    captures_own_rows = True  # INT8 calibrates it on rows the export captures on the cached loop (shallow_rows)
    counts_params = False
    int8_units = False  # its units sit under another wrapper than the plain UNet's; recipes rank the UNet

    def spec(self, pipe) -> ComponentSpec:
        from edgekit.step_cache import feature_channels

        base = super().spec(pipe)
        sample = base.inputs[0]
        feature = TensorSpec(FEATURE_INPUT, "float32", ("batch", feature_channels(pipe.unet)) + tuple(sample.shape[2:]))
        return ComponentSpec(self.name, base.inputs[:3] + (feature,) + base.inputs[3:], base.outputs)

    def export_module(self, pipe) -> nn.Module:
        return UNetShallowForExport(pipe.unet).eval()

    def example_input(self, pipe, tensor, shape, rng):
        if tensor.name == FEATURE_INPUT:  # a feature of a full step's scale: unit normal is close enough
            return rng.standard_normal(shape).astype(np.float32)
        return super().example_input(pipe, tensor, shape, rng)

    def own_rows(self, pipe, meta: dict, intervals, max_rows: int, guidance_scale: float) -> dict:
        """Rows of the cached trajectory for INT8: the calibration's prompts, steps, guidance and seed (its
        meta.json; ``guidance_scale``, the bundle's, where the calibration took the model's default), run through
        the torch cached loop at every offered interval (edgekit.step_cache.shallow_rows)."""
        from edgekit.step_cache import shallow_rows

        from edgekit.errors import CalibrationError

        config = meta.get("config") or {}
        prompts = list(meta.get("prompts") or [])
        if not prompts or not config.get("steps"):
            raise CalibrationError("its meta.json names no prompts or steps to run the cached loop on for the shallow "
                                   "graph's INT8 rows; re-run edgekit calibrate", param="calibration")
        prompts = prompts[: int(config.get("samples") or len(prompts))]
        seed = int(config.get("seed") or 0)
        guidance = config.get("guidance_scale")
        guidance = float(guidance_scale if guidance is None else guidance)
        return shallow_rows(pipe, prompts, [seed + i for i in range(len(prompts))], int(config["steps"]), guidance,
                            intervals, max_rows)

    def recording(self, pipe, offer, state):
        raise NotImplementedError(f"{self.name}: calibration does not capture a cached trajectory (own_rows)")

    def standin(self, pipe, run, input_names, where):
        raise NotImplementedError(f"{self.name}: runs in the bundle's cached loop only")


COMPONENT = UNetShallow()
