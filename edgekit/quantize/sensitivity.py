"""Which parts of a component suffer most from INT8: quantize one unit at a time, measure the output error
on calibration rows, and keep the worst units in float under a budget.

A unit is a block of the component's module tree: a ResNet block, an attention block, a text-encoder
layer, or a lone conv/linear outside any indexed block (``conv_in``, ``time_embedding.linear_1``).
Units are module paths relative to the component (``down_blocks.0.resnets.0``), which every method
can map to what it quantizes: ONNX node names (``/unet/down_blocks.0/resnets.0/conv1/Conv``), NNCF
ignored scopes, and torch submodules.

The measurement is method-neutral on purpose: INT8 is simulated in torch (weights symmetric
per-output-channel, the layer inputs asymmetric per-tensor from the calibration min/max), one unit at a
time, so a single ranking serves all methods and costs one forward pass per unit.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgekit.quality import relative_error

def unit_of(path: str) -> str:
    """Group a module path into its unit: the first indexed block (``mid_block.attentions.0``,
    ``encoder.layers.3``), one level deeper inside ``*_blocks`` stages (``down_blocks.0.resnets.1``),
    else the layer itself (``conv_in``)."""
    parts = path.split(".")
    indexed = [i for i in range(1, len(parts)) if parts[i].isdigit()]
    if not indexed:
        return path
    depth = 2 if parts[indexed[0] - 1].endswith("blocks") and len(indexed) >= 2 else 1
    return ".".join(parts[: indexed[depth - 1] + 1])


def weight_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers of an export module, keyed by their path inside the wrapped component."""
    layers = {}
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv2d, nn.Linear)):
            layers[strip_wrapper(name)] = sub
    return layers


def strip_wrapper(name: str) -> str:
    """Export modules wrap the component as one attribute (``unet.``, ``vae.``, ``text_encoder.``)."""
    return name.split(".", 1)[1] if "." in name else name


def units(module: nn.Module) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in weight_layers(module):
        out.setdefault(unit_of(path), []).append(path)
    return out


def in_units(path: str, float_units) -> bool:
    return any(path == u or path.startswith(u + ".") for u in float_units)


def _fake_quant_weight(weight: torch.Tensor) -> torch.Tensor:
    flat = weight.reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return (torch.round(weight / scale.reshape(shape)).clamp(-127, 127) * scale.reshape(shape)).to(weight.dtype)


def _fake_quant_activation(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(hi - lo, 1e-12) / 255.0
    zero = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


def _args(spec, inputs):
    return [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in spec.input_names()]


@torch.no_grad()
def input_ranges(module: nn.Module, spec, inputs: dict[str, np.ndarray], batch: int = 16) -> dict[str, tuple]:
    """Min and max of every conv/linear input over the calibration rows."""
    layers = weight_layers(module)
    ranges: dict[str, list[float]] = {}

    def hook(path):
        def record(_mod, args):
            x = args[0]
            lo, hi = float(x.min()), float(x.max())
            old = ranges.get(path)
            ranges[path] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
        return record

    handles = [layer.register_forward_pre_hook(hook(path)) for path, layer in layers.items()]
    try:
        n = len(next(iter(inputs.values())))
        for start in range(0, n, batch):
            module(*_args(spec, {k: v[start:start + batch] for k, v in inputs.items()}))
    finally:
        for h in handles:
            h.remove()
    return {k: tuple(v) for k, v in ranges.items()}


@torch.no_grad()
def rank_units(module: nn.Module, spec, calib_inputs: dict[str, np.ndarray],
               eval_inputs: dict[str, np.ndarray]) -> list[dict]:
    """Every unit the forward reaches, with its output rel-err when only it is INT8 (worst first) and its
    weight count."""
    ranges = input_ranges(module, spec, calib_inputs)
    layers = weight_layers(module)
    args = _args(spec, eval_inputs)
    reference = module(*args).numpy()
    ranking = []
    for unit, paths in units(module).items():
        paths = [p for p in paths if p in ranges]  # layers the component's forward never reaches are not ranked
        if not paths:
            continue
        saved = {}
        handles = []
        try:
            for path in paths:
                layer = layers[path]
                saved[path] = layer.weight.data
                layer.weight.data = _fake_quant_weight(layer.weight.data)
                if path in ranges:
                    lo, hi = ranges[path]
                    handles.append(layer.register_forward_pre_hook(
                        lambda _m, a, lo=lo, hi=hi: (_fake_quant_activation(a[0], lo, hi),) + tuple(a[1:])))
            err = relative_error(module(*args).numpy(), reference)
        finally:
            for h in handles:
                h.remove()
            for path, weight in saved.items():
                layers[path].weight.data = weight
        params = sum(layers[p].weight.numel() for p in paths)
        ranking.append({"unit": unit, "rel_err": err, "weights": int(params), "layers": len(paths)})
    ranking.sort(key=lambda r: -r["rel_err"])
    return ranking


def select_float_units(ranking: list[dict], budget: float, already=()) -> list[str]:
    """Worst units first, while their weights fit in ``budget`` x the component's conv/linear weights."""
    total = sum(r["weights"] for r in ranking)
    allowance = budget * total - sum(r["weights"] for r in ranking if r["unit"] in already)
    kept = []
    for r in ranking:
        if r["unit"] in already:
            continue
        if r["weights"] <= allowance:
            kept.append(r["unit"])
            allowance -= r["weights"]
    return kept


def float_weight_bytes(module: nn.Module) -> int:
    """Bytes the component's parameters take in float32 (the FP32 size the INT8 one is compared with)."""
    return int(sum(p.numel() for p in module.parameters()) * 4)
