"""The UNet, once per width: (noisy latents, timestep, text hidden states[, guidance embedding]) -> noise."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from edgekit.components.base import Component, ComponentSpec, StandIn, TensorSpec, forward_pre_hook, numpy_rows
from edgekit.errors import InputError, VerificationError


class UNetForExport(nn.Module):
    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        # timestep_cond: the guidance embedding of a UNet with time_cond_proj_dim (LCM), one row per sample
        return self.unet(sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False)[0]


class UNetStandIn(StandIn):
    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None, cross_attention_kwargs=None,
                added_cond_kwargs=None, return_dict: bool = True, **_ignored):
        batch = sample.shape[0]
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)
        t = t.expand(batch) if t.numel() == 1 else t
        feeds = {"sample": sample.detach().float().numpy(), "timestep": t.detach().numpy(),
                 "encoder_hidden_states": encoder_hidden_states.detach().float().numpy()}
        if "timestep_cond" in self.input_names:  # the guidance embedding of an LCM-style UNet
            if timestep_cond is None:
                raise InputError(f"{self.where}: this UNet takes a guidance embedding (timestep_cond) and was "
                                 "called without one")
            feeds["timestep_cond"] = timestep_cond.detach().float().numpy()
        out = self._run(feeds)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)


def guidance_dim(unet_config) -> int | None:
    """The width of the guidance embedding (``timestep_cond``) a UNet takes: its time_cond_proj_dim, or None."""
    getter = unet_config.get if isinstance(unet_config, dict) else lambda k, d=None: getattr(unet_config, k, d)
    dim = getter("time_cond_proj_dim", None)
    return int(dim) if dim else None


class UNet(Component):
    name = "unet"
    role = "denoise"
    pipeline_attr = "unet"
    per_width = True
    max_calib_rows = 1024
    counts_params = True
    int8_units = True

    def spec(self, pipe) -> ComponentSpec:
        cfg = pipe.unet.config
        size = int(cfg.sample_size)
        length = int(pipe.tokenizer.model_max_length)
        dim = guidance_dim(cfg)
        return ComponentSpec(self.name, (
            TensorSpec("sample", "float32", ("batch", int(cfg.in_channels), size, size)),
            TensorSpec("timestep", "float32", ("batch",)),
            TensorSpec("encoder_hidden_states", "float32", ("batch", length, int(cfg.cross_attention_dim))),
        ) + ((TensorSpec("timestep_cond", "float32", ("batch", dim)),) if dim else ()),
            (TensorSpec("out_sample", "float32", ("batch", int(cfg.out_channels), size, size)),))

    def export_module(self, pipe) -> nn.Module:
        return UNetForExport(pipe.unet).eval()

    def example_input(self, pipe, tensor, shape, rng):
        if tensor.name == "timestep":
            return rng.integers(0, 1000, size=shape).astype(np.float32)
        if tensor.name == "timestep_cond":  # a guidance embedding: sines and cosines
            return rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        return super().example_input(pipe, tensor, shape, rng)

    def check_entry(self, pipe, entry, label):
        """A UNet with a guidance embedding (time_cond_proj_dim) must ship its timestep_cond input."""
        dim = guidance_dim(pipe.unet.config)
        names = [t["name"] for t in entry["inputs"]]
        if dim and "timestep_cond" not in names:
            raise VerificationError(f"{label}: the UNet takes a guidance embedding (time_cond_proj_dim {dim}) but "
                                    f"the exported graph has no timestep_cond input (inputs: {', '.join(names)})")

    def geometry_problem(self, entry, geometry):
        if not entry["inputs"]:
            return None
        shape = entry["inputs"][0]["shape"][1:]
        if all(isinstance(d, int) for d in shape) and list(shape) != list(geometry["latent_shape"]):
            return f"geometry.latent_shape {geometry['latent_shape']}, but the UNet takes {shape}"
        return None

    @contextmanager
    def recording(self, pipe, offer, state):
        def hook(module, args, kwargs):
            sample = kwargs.get("sample", args[0] if len(args) > 0 else None)
            timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
            context = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            # the guidance embedding of an LCM-style UNet (time_cond_proj_dim); diffusers passes it by keyword
            cond = kwargs.get("timestep_cond", args[3] if len(args) > 3 else None)
            batch = sample.shape[0]
            t = torch.as_tensor(timestep).reshape(-1).expand(batch) if torch.as_tensor(timestep).numel() == 1 \
                else torch.as_tensor(timestep)
            if state["guidance_dim"] and cond is None:
                state["uncond_calls"] += 1  # refused after the run: these rows could not calibrate the exported graph
            half = batch // 2 if state["cfg"] else 0
            for i in range(batch):
                state["order"] += 1
                row = {
                    "sample": numpy_rows(sample[i]), "timestep": numpy_rows(t[i]),
                    "encoder_hidden_states": numpy_rows(context[i]),
                    "step_index": np.int64(state["step"]), "is_uncond": np.int8(1 if i < half else 0),
                    "order": np.int64(state["order"]),
                }
                if state["guidance_dim"] and cond is not None:
                    row["timestep_cond"] = numpy_rows(cond[i]).astype(np.float32)
                offer(row)
            state["step"] += 1

        with forward_pre_hook(pipe.unet, hook):
            yield

    def standin(self, pipe, run, input_names, where):
        return UNetStandIn(run, input_names, pipe.unet.config, where).eval()


COMPONENT = UNet()
