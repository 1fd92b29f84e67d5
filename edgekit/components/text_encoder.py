"""The text encoder: token ids -> the hidden states the UNet attends to."""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from edgekit.components.base import Component, ComponentSpec, StandIn, TensorSpec, forward_pre_hook, numpy_rows
from edgekit.errors import InputError


class TextEncoderForExport(nn.Module):
    def __init__(self, text_encoder: nn.Module) -> None:
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(input_ids, return_dict=False)[0]


class TextEncoderStandIn(StandIn):
    def forward(self, input_ids, attention_mask=None, output_hidden_states=None, return_dict=None, **_ignored):
        if output_hidden_states:
            raise InputError(f"{self.where}: the graph text encoder returns only the last hidden state (no clip_skip)")
        return (self._run({"input_ids": input_ids.detach().numpy().astype(np.int32)}),)


class TextEncoder(Component):
    name = "text_encoder"
    role = "prompt"
    pipeline_attr = "text_encoder"

    def spec(self, pipe) -> ComponentSpec:
        length = int(pipe.tokenizer.model_max_length)
        hidden = int(pipe.text_encoder.config.hidden_size)
        # int32 token ids: what diffusers, optimum and the onnxruntime-web demos feed (and all LiteRT/Core ML take)
        return ComponentSpec(self.name, (TensorSpec("input_ids", "int32", ("batch", length)),),
                             (TensorSpec("last_hidden_state", "float32", ("batch", length, hidden)),))

    def export_module(self, pipe) -> nn.Module:
        return TextEncoderForExport(pipe.text_encoder).eval()

    def example_input(self, pipe, tensor, shape, rng):
        return rng.integers(0, len(pipe.tokenizer), size=shape).astype(tensor.dtype)

    @contextmanager
    def recording(self, pipe, offer, state):
        def hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            for row in numpy_rows(ids):
                state["order"] += 1
                offer({"input_ids": row.astype(np.int64), "order": np.int64(state["order"]),
                       "prompt_index": np.int64(state["prompt_batch"])})

        with forward_pre_hook(pipe.text_encoder, hook):
            yield

    def standin(self, pipe, run, input_names, where):
        return TextEncoderStandIn(run, input_names, pipe.text_encoder.config, where).eval()


COMPONENT = TextEncoder()
