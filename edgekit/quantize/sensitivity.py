"""Which parts of a component suffer most from INT8: quantize one unit at a time, measure the output error
on calibration rows, and keep the worst units in float under a budget.

A unit is a block of the component's module tree: a ResNet block, an attention block, a text-encoder
layer, or a lone conv/linear outside any indexed block (``conv_in``, ``time_embedding.linear_1``).
Units are module paths relative to the component (``down_blocks.0.resnets.0``), which every method
can map to what it quantizes: ONNX node names (``/unet/down_blocks.0/resnets.0/conv1/Conv``), NNCF
ignored scopes, and torch submodules.

The measurement is method-neutral on purpose: INT8 is simulated in torch (weights symmetric
per-output-channel, the layer inputs asymmetric per-tensor from the calibration min/max), one unit at a
time, so a single ranking serves all methods.

Measures, chosen by a size rule (``measure_for``):

- ``output`` (components up to ``FULL_RANKING_MAX_WEIGHTS`` conv/linear weights): the component's output error
  with only that unit INT8; one forward pass of the whole component per unit (plus one over the calibration
  rows for the ranges). On the 860M-parameter SD-1.5 UNet that is ~60 full forwards on 8 rows, over an hour.
- ``local``: each unit's own output error when it alone is INT8, on its inputs from one float forward over
  ``LOCAL_ROWS`` rows; the unit is re-run right there, so the whole ranking costs about two forwards. Cheap
  but a weak stand-in for the output measure (it misses how an error propagates: conv_out's goes straight
  to the output, a residual block's is diluted by its skip path).
- ``bounded`` (larger components): ``local`` for every unit, ``output`` on few rows for the units the float
  budget could keep (see ``rank``). Measured against ``output`` on the digits model in
  benchmarks/results/realsize_sensitivity.md.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgekit.progress import track
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
        for start in track(range(0, n, batch), "sensitivity: activation ranges"):
            module(*_args(spec, {k: v[start:start + batch] for k, v in inputs.items()}))
    finally:
        for h in handles:
            h.remove()
    return {k: tuple(v) for k, v in ranges.items()}


@torch.no_grad()
def rank_units(module: nn.Module, spec, calib_inputs: dict[str, np.ndarray],
               eval_inputs: dict[str, np.ndarray], only=None) -> list[dict]:
    """Every unit the forward reaches (or those in ``only``), with its output rel-err when only it is INT8
    (worst first) and its weight count."""
    ranges = input_ranges(module, spec, calib_inputs)
    layers = weight_layers(module)
    args = _args(spec, eval_inputs)
    reference = module(*args).numpy()
    ranking = []
    for unit, paths in track(list(units(module).items()), "sensitivity: each unit alone in INT8"):
        paths = [p for p in paths if p in ranges]  # layers the component's forward never reaches are not ranked
        if not paths or (only is not None and unit not in only):
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


# Size rule: the output measure costs one forward of the whole component per unit; past this many conv/linear
# weights (the reduced SD-1.5 UNet has 3M, the digits UNet 4M, the real one 860M) the bounded one is used.
FULL_RANKING_MAX_WEIGHTS = 100_000_000
LOCAL_ROWS = 2  # rows the local and bounded measures run on
MAX_OUTPUT_UNITS = 12  # units the bounded measure ranks by output error, at most


def measure_for(module: nn.Module) -> str:
    """``output`` when the component is small enough for one forward per unit, else ``bounded``."""
    weights = sum(layer.weight.numel() for layer in weight_layers(module).values())
    return "output" if weights <= FULL_RANKING_MAX_WEIGHTS else "bounded"


def rank(module: nn.Module, spec, calib_inputs: dict[str, np.ndarray], eval_inputs: dict[str, np.ndarray],
         measure: str = "auto", float_budget: float | None = None) -> list[dict]:
    """The ranking by ``measure`` (``auto``: the size rule of ``measure_for``); each entry names its measure.

    ``bounded``: on ``LOCAL_ROWS`` rows, every unit by the local measure, then by the output measure only the
    units that can be kept in float at all (weights within ``float_budget`` of the total; at most
    ``MAX_OUTPUT_UNITS``, the locally worst first); those come first, in output order, so
    ``select_float_units`` picks among them as the full ranking would. Cost: about two forwards plus one per
    candidate (SD-1.5's UNet at the default 0.2% budget: conv_in, conv_out, the time embedding and a few
    small layers), instead of one per unit plus a pass over every calibration row."""
    measure = measure_for(module) if measure == "auto" else measure
    few = {k: v[:LOCAL_ROWS] for k, v in eval_inputs.items()}
    if measure == "output":
        ranking = rank_units(module, spec, calib_inputs, eval_inputs)
    elif measure == "local":
        ranking = rank_units_local(module, spec, few)
    elif measure == "bounded":
        local = rank_units_local(module, spec, few)
        total = sum(r["weights"] for r in local)
        allowance = (0.0 if float_budget is None else float(float_budget)) * total
        candidates = [r["unit"] for r in local if r["weights"] <= allowance][:MAX_OUTPUT_UNITS]
        measured = rank_units(module, spec, few, few, only=set(candidates)) if candidates else []
        for entry in measured:
            entry["measure"] = "output"
        done = {r["unit"] for r in measured}
        rest = [dict(r, measure="local") for r in local if r["unit"] not in done]
        return measured + rest
    else:
        raise ValueError(f"unknown sensitivity measure {measure!r}; expected 'auto', 'output', 'local' or 'bounded'")
    for entry in ranking:
        entry["measure"] = measure
    return ranking


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if hasattr(value, "to_tuple"):
        value = value.to_tuple()
    if isinstance(value, (tuple, list)) and value:
        return _first_tensor(value[0])
    return None


@torch.no_grad()
def rank_units_local(module: nn.Module, spec, inputs: dict[str, np.ndarray]) -> list[dict]:
    """Every unit the forward reaches, with the relative error of its own output when only it is INT8 (worst
    first). One float forward over ``inputs``: as each unit finishes, a hook re-runs it on the same inputs with
    its weights and layer inputs fake-quantized (layer input ranges from this forward), so the cost is about
    two forwards whatever the number of units."""
    layers = weight_layers(module)
    groups = units(module)
    modules = {strip_wrapper(name): sub for name, sub in module.named_modules() if "." in name}
    ranges: dict[str, list[float]] = {}
    sums: dict[str, list[float]] = {}
    state = {"busy": False}

    def record(path):
        def hook(_mod, args):
            if state["busy"]:
                return
            x = args[0]
            lo, hi = float(x.min()), float(x.max())
            old = ranges.get(path)
            ranges[path] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]
        return hook

    def measure(unit, paths):
        def hook(mod, args, kwargs, output):
            if state["busy"]:
                return
            reached = [p for p in paths if p in ranges]
            if not reached:
                return
            state["busy"] = True
            saved, handles = {}, []
            try:
                for path in reached:
                    layer = layers[path]
                    saved[path] = layer.weight.data
                    layer.weight.data = _fake_quant_weight(layer.weight.data)
                    lo, hi = ranges[path]
                    handles.append(layer.register_forward_pre_hook(
                        lambda _m, a, lo=lo, hi=hi: (_fake_quant_activation(a[0], lo, hi),) + tuple(a[1:])))
                quantized = _first_tensor(mod(*args, **kwargs))
            finally:
                for h in handles:
                    h.remove()
                for path, weight in saved.items():
                    layers[path].weight.data = weight
                state["busy"] = False
            reference = _first_tensor(output)
            if quantized is None or reference is None:
                return
            acc = sums.setdefault(unit, [0.0, 0.0])
            acc[0] += float(((quantized.double() - reference.double()) ** 2).sum())
            acc[1] += float((reference.double() ** 2).sum())
        return hook

    handles = [layer.register_forward_pre_hook(record(path)) for path, layer in layers.items()]
    handles += [modules[unit].register_forward_hook(measure(unit, paths), with_kwargs=True)
                for unit, paths in groups.items() if unit in modules]
    try:
        module(*_args(spec, inputs))
    finally:
        for h in handles:
            h.remove()
    ranking = []
    for unit, (diff, ref) in sums.items():
        paths = [p for p in groups[unit] if p in ranges]
        ranking.append({"unit": unit, "rel_err": float(np.sqrt(diff / max(ref, 1e-30))),
                        "weights": int(sum(layers[p].weight.numel() for p in paths)), "layers": len(paths)})
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
