"""Core ML compression that uses the calibration rows, and its torch-side simulation.

- ``w8a8``: int8 activations on the inputs of every conv and linear op (ranges from the calibration rows),
  then int8 weights. coremltools' ``linear_quantize_activations`` takes its ranges from Core ML predictions,
  which need macOS; here the same ranges come from a torch forward over the same rows (the input min/max of
  the torch layer each op was converted from) and go into coremltools' own graph pass that inserts the
  quantize/dequantize pairs. On macOS ``activation_ranges="coreml"`` uses coremltools' function as it is.
- ``mixed``: palettization with a bit width per layer. Each layer alone is palettized to every candidate bit
  width in torch and the component's output PSNR against float is measured on calibration rows (the
  ml-stable-diffusion recipe); then, from every layer at the widest bit width, the step that costs the least
  PSNR per saved bit is taken until the weighted average reaches the target. Core ML gets exactly the
  look-up tables the simulation used (coremltools' custom LUT mode).

Layers are matched to Core ML ops by their weights (shape and float16 values), never by generated names.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgekit.errors import InputError, VerificationError

KMEANS_ITERATIONS = 25


def _weight_key(array: np.ndarray) -> str:
    a = np.ascontiguousarray(np.asarray(array, dtype=np.float16))
    return f"{a.shape}:{hashlib.sha1(a.tobytes()).hexdigest()}"


def op_layers(program, module: nn.Module) -> dict[str, str]:
    """Core ML conv/linear op name -> the torch layer path (edgekit.quantize.sensitivity.weight_layers) whose
    weight it holds."""
    from edgekit.quantize.sensitivity import weight_layers

    layers = weight_layers(module)
    by_key = {}
    for path, layer in layers.items():
        by_key.setdefault(_weight_key(layer.weight.detach().cpu().numpy()), path)
    out, unmatched = {}, []
    for op in program.functions["main"].operations:
        if op.op_type in ("conv", "linear") and "weight" in op.inputs and op.inputs["weight"].val is not None:
            path = by_key.get(_weight_key(op.inputs["weight"].val))
            if path is not None:
                out[op.name] = path
            else:
                unmatched.append(op)
    # A converter pass may fold a constant factor into a weight (attention's query scale): same shape,
    # proportional values.
    free = {p: l.weight.detach().cpu().numpy().astype(np.float32) for p, l in layers.items() if p not in out.values()}
    for op in unmatched:
        w = np.asarray(op.inputs["weight"].val, dtype=np.float32)
        best, best_cos = None, 0.9999
        for path, tw in free.items():
            if tw.shape == w.shape:
                cos = abs(float((tw * w).sum()) / (np.linalg.norm(tw) * np.linalg.norm(w) + 1e-30))
                if cos > best_cos:
                    best, best_cos = path, cos
        if best is not None:
            out[op.name] = best
            del free[best]
    return out


# ---------------------------------------------------------------- W8A8

def w8a8(model, module: nn.Module, spec, rows: dict[str, np.ndarray], activation_ranges: str = "torch",
         ranges: dict | None = None):
    """int8 activations on conv/linear inputs, then int8 per-channel weights; returns (model, facts). ``ranges``:
    the torch layers' input (min, max) as a recipe holds them (else measured on ``rows`` here)."""
    from coremltools.optimize import coreml as cto

    act_config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                    dtype="int8"),
                                        op_type_configs={"add": None, "avg_pool": None, "max_pool": None})
    if activation_ranges == "coreml":  # macOS: Core ML predicts the rows itself
        samples = [{k: v[i:i + 1] for k, v in rows.items()} for i in range(len(next(iter(rows.values()))))]
        quantized = cto.linear_quantize_activations(model, act_config, samples)
        mapped = None
    else:
        quantized, mapped = _w8a8_torch_ranges(model, module, spec, rows, act_config, ranges)
    weight_config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                       dtype="int8"))
    return cto.linear_quantize_weights(quantized, weight_config), {
        "activation_ranges": ("Core ML predictions on the calibration rows (coremltools linear_quantize_activations)"
                              if mapped is None else
                              f"torch forward on {len(next(iter(rows.values())))} calibration rows (Core ML cannot "
                              "predict here); coremltools' quantize/dequantize insertion pass"),
        "activation_quantized_ops": mapped}


def _w8a8_torch_ranges(model, module, spec, rows, act_config, ranges=None):
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.models import utils as model_utils
    from coremltools import _SPECIFICATION_VERSION_IOS_17

    from edgekit.quantize.sensitivity import input_ranges

    program = model._mil_program
    layers = op_layers(program, module)
    ranges = input_ranges(module, spec, rows) if ranges is None else ranges
    stats, skipped, covered = {}, {}, 0
    for op in program.functions["main"].operations:
        if op.op_type not in ("conv", "linear"):
            continue
        path = layers.get(op.name)
        if path is None or path not in ranges:
            skipped[op.name] = None  # no torch layer to take its range from: its input stays float
            continue
        lo, hi = ranges[path]
        x = op.inputs["x"].name  # several ops may read one input (q, k, v): the widest range of their layers
        old = stats.get(x, {"rmin": float(lo), "rmax": float(hi)})
        stats[x] = {"rmin": min(old["rmin"], float(lo)), "rmax": max(old["rmax"], float(hi))}
        covered += 1
    config = act_config
    if skipped:
        from coremltools.optimize import coreml as cto

        config = cto.OptimizationConfig(global_config=act_config.global_config,
                                        op_type_configs=act_config.op_type_configs, op_name_configs=skipped)
    prefix = PASS_REGISTRY["compression::insert_prefix_quantize_dequantize_pair"]
    prefix.set_options([PassOption("config", config), PassOption("activation_stats", stats)])
    dedup = PASS_REGISTRY["common::dequantize_quantize_pair_elimination"]
    quantized = model_utils._apply_graph_pass(model, [prefix, dedup], spec_version=_SPECIFICATION_VERSION_IOS_17,
                                              pymil_load_func=milproto.load, skip_model_load=True)
    return quantized, covered


def simulate_w8a8(module: nn.Module, spec, rows: dict[str, np.ndarray]):
    """Context manager: the same W8A8 in torch (per-channel symmetric int8 weights, per-tensor symmetric int8
    inputs of every conv/linear with the ranges of ``rows``)."""
    from edgekit.quantize.sensitivity import input_ranges, weight_layers

    ranges = input_ranges(module, spec, rows)
    layers = weight_layers(module)
    return _Patched(layers, {p: _symmetric_weight(l.weight.data) for p, l in layers.items()},
                    {p: max(abs(lo), abs(hi)) for p, (lo, hi) in ranges.items()})


def _symmetric_weight(weight: torch.Tensor) -> torch.Tensor:
    w = weight.half().float()
    flat = w.reshape(w.shape[0], -1)
    scale = (flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0).half().float()
    shape = (-1,) + (1,) * (w.dim() - 1)
    return (torch.round(w / scale.reshape(shape)).clamp(-128, 127) * scale.reshape(shape)).to(weight.dtype)


class _Patched:
    """Weights replaced and inputs fake-quantized (symmetric int8 per tensor) while inside ``with``."""

    def __init__(self, layers: dict, weights: dict, input_absmax: dict | None = None) -> None:
        self.layers, self.weights, self.absmax = layers, weights, input_absmax or {}
        self.saved, self.handles = {}, []

    def __enter__(self):
        for path, w in self.weights.items():
            self.saved[path] = self.layers[path].weight.data
            self.layers[path].weight.data = w
        for path, m in self.absmax.items():
            scale = max(float(np.float16(m / 127.0)), 1e-12)
            self.handles.append(self.layers[path].register_forward_pre_hook(
                lambda _m, a, s=scale: (torch.clamp(torch.round(a[0] / s), -128, 127) * s,) + tuple(a[1:])))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        for path, w in self.saved.items():
            self.layers[path].weight.data = w
        return False


# ---------------------------------------------------------------- mixed-bit palettization

def kmeans_lut(values: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 1-D k-means over all elements: (lut of 2**nbits values, uint8 index per element)."""
    flat = torch.from_numpy(np.asarray(values, dtype=np.float32).reshape(-1))
    k = 1 << nbits
    centers = torch.quantile(flat[:: max(1, len(flat) // 65536)], torch.linspace(0, 1, k + 2)[1:-1])
    for _ in range(KMEANS_ITERATIONS):
        centers, _ = torch.sort(centers)
        index = torch.bucketize(flat, (centers[1:] + centers[:-1]) / 2)
        sums = torch.zeros(k).index_add_(0, index, flat)
        counts = torch.zeros(k).index_add_(0, index, torch.ones_like(flat))
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
    centers, _ = torch.sort(centers)
    index = torch.bucketize(flat, (centers[1:] + centers[:-1]) / 2)
    dtype = np.asarray(values).dtype
    return centers.numpy().astype(dtype), index.numpy().astype(np.uint8)


def palette_groups(channels: int, group_size: int) -> int:
    """How many look-up tables a weight with ``channels`` output channels gets: one per ``group_size`` channels
    (coremltools' per_grouped_channel granularity, iOS18), or one for the tensor when group_size is 0 or does not
    divide the channels (coremltools would skip such a weight; apply_mixed gives it a per-tensor table)."""
    return channels // group_size if group_size and channels % group_size == 0 and channels > group_size else 1


def palettized(weight: torch.Tensor, nbits: int, group_size: int = 0) -> torch.Tensor:
    """The weight as Core ML will hold it: float16, palettized to ``nbits`` by kmeans_lut, one table per group of
    ``group_size`` output channels (0: one table)."""
    w16 = weight.detach().half().numpy()
    parts = []
    for part in np.split(w16, palette_groups(w16.shape[0], group_size), axis=0):
        lut, index = kmeans_lut(part, nbits)
        parts.append(lut[index].reshape(part.shape))
    return torch.from_numpy(np.concatenate(parts, axis=0).astype(np.float32)).to(weight.dtype)


def palettizable(module: nn.Module, min_weights: int, spec=None, rows: dict | None = None) -> dict[str, nn.Module]:
    """Conv/linear layers with more than ``min_weights`` weights; with ``spec`` and ``rows``, only those the
    component's forward runs (the VAE decoder's export module also holds the encoder, which its graph has not)."""
    from edgekit.quantize.sensitivity import _args, weight_layers

    layers = {p: l for p, l in weight_layers(module).items() if l.weight.numel() > min_weights}
    if spec is None:
        return layers
    ran = set()
    handles = [l.register_forward_pre_hook(lambda *_a, p=p: ran.add(p)) for p, l in layers.items()]
    try:
        with torch.no_grad():
            module(*[a[:1] for a in _args(spec, rows)])
    finally:
        for h in handles:
            h.remove()
    return {p: l for p, l in layers.items() if p in ran}


@torch.no_grad()
def layer_sensitivity(module: nn.Module, spec, rows: dict[str, np.ndarray], bits, min_weights: int,
                      group_size: int = 0) -> dict:
    """Per layer: {bits: output PSNR (dB) against float when only that layer is palettized to bits}."""
    from edgekit.quality.metrics import psnr

    from edgekit.quantize.sensitivity import _args

    args = _args(spec, rows)
    reference = module(*args).numpy()
    out = {}
    for path, layer in palettizable(module, min_weights, spec, rows).items():
        out[path] = {}
        for b in bits:
            with _Patched({path: layer}, {path: palettized(layer.weight.data, b, group_size)}):
                out[path][b] = min(float(psnr(module(*args).numpy(), reference, data_range=_span(reference))), 100.0)
    return out


def _span(x: np.ndarray) -> float:
    return float(max(np.ptp(x), 1e-6))


@dataclass(frozen=True)
class MixedPlan:
    bits: dict  # layer path -> bit width
    average_bits: float
    target_bits: float
    group_size: int = 0  # output channels per look-up table (0: one table per weight)

    def to_dict(self) -> dict:
        return {"bits": dict(self.bits), "average_bits": round(self.average_bits, 3), "target_bits": self.target_bits,
                "group_size": self.group_size}


def plan_mixed(sensitivity: dict, sizes: dict, bits, target: float, group_size: int = 0) -> MixedPlan:
    """From every layer at the widest bit width, repeatedly lower the layer whose next step loses the least PSNR
    per saved bit (weighted by its weight count) until the weighted average is at most ``target``."""
    bits = sorted(bits)
    if target < bits[0]:
        raise InputError(f"mixed target {target:g} bits: below the smallest palette bit width {bits[0]}")
    plan = {p: bits[-1] for p in sensitivity}
    total = sum(sizes[p] for p in plan) or 1

    def average():
        return sum(plan[p] * sizes[p] for p in plan) / total

    while average() > target + 1e-9:
        best, best_cost = None, None
        for p, b in plan.items():
            i = bits.index(b)
            if i == 0:
                continue
            lower = bits[i - 1]
            loss = max(sensitivity[p].get(b, 100.0) - sensitivity[p][lower], 0.0) + 1e-6
            cost = loss / ((b - lower) * sizes[p])
            if best_cost is None or cost < best_cost:
                best, best_cost = p, cost
        if best is None:
            break
        plan[best] = bits[bits.index(plan[best]) - 1]
    return MixedPlan(bits=plan, average_bits=average(), target_bits=target, group_size=group_size)


def mixed_plan_for(module: nn.Module, spec, rows: dict[str, np.ndarray], palette_bits, target: float,
                   min_weights: int, probe_rows: int = 8, group_size: int = 0) -> tuple[MixedPlan, dict]:
    """The plan for one component: per-layer sensitivity on ``probe_rows`` rows spread over ``rows``, then
    plan_mixed; returns (plan, sensitivity)."""
    sizes = {p: layer.weight.numel() for p, layer in palettizable(module, min_weights, spec, rows).items()}
    if target <= min(palette_bits):  # every layer at the smallest width: nothing to choose, nothing to measure
        return MixedPlan(bits={p: min(palette_bits) for p in sizes}, average_bits=float(min(palette_bits)),
                         target_bits=target, group_size=group_size), {}
    n = len(next(iter(rows.values())))
    probe = {k: v[np.linspace(0, n - 1, min(n, probe_rows)).round().astype(int)] for k, v in rows.items()}
    sensitivity = layer_sensitivity(module, spec, probe, palette_bits, min_weights, group_size)
    return plan_mixed(sensitivity, sizes, palette_bits, target, group_size), sensitivity


def simulate_mixed(module: nn.Module, plan: MixedPlan):
    """Context manager: every planned layer of ``module`` palettized to its bit width."""
    from edgekit.quantize.sensitivity import weight_layers

    layers = weight_layers(module)
    return _Patched({p: layers[p] for p in plan.bits},
                    {p: palettized(layers[p].weight.data, b, plan.group_size) for p, b in plan.bits.items()})


def apply_mixed(model, module: nn.Module, plan: MixedPlan, min_weights: int = 2048):
    """Palettize the Core ML model's layers to the plan's bit widths with the simulation's look-up tables
    (constants of at most ``min_weights`` elements, biases among them, stay fp16). Returns (model, {layer path:
    the name of the weight constant palettized for it})."""
    from coremltools.optimize import coreml as cto

    program = model._mil_program
    layers = op_layers(program, module)
    per_bits = {}

    def config_for(bits: int, channels: int):
        grouped = palette_groups(channels, plan.group_size) > 1
        key = (bits, grouped)
        if key not in per_bits:
            extra = {"granularity": "per_grouped_channel", "group_size": plan.group_size} if grouped else {}
            per_bits[key] = cto.OpPalettizerConfig(mode="custom", lut_function=lambda v, n=bits: kmeans_lut(v, n),
                                                   weight_threshold=min_weights, **extra)
        return per_bits[key]
    # Configs are keyed by the weight constant, not by the conv/linear op: coremltools checks every constant
    # input of a configured op (its bias too) against the other ops that read that constant, and the
    # converter's constant deduplication shares a bias-free linear's zero bias with a group norm's zero mean
    # ("compression config conflict"). A config on the constant itself is looked up first and touches nothing
    # else.
    configs, constants = {}, {}
    for op in program.functions["main"].operations:
        path = layers.get(op.name)
        if path in plan.bits:
            weight = op.inputs["weight"]
            configs[weight.op.name] = config_for(plan.bits[path], weight.shape[0])
            constants[path] = weight.op.name
    missing = sorted(set(plan.bits) - set(constants))
    if missing:
        raise VerificationError(f"mixed-bit plan: layers {missing[:4]} have no Core ML op holding their weights")
    config = cto.OptimizationConfig(global_config=None, op_name_configs=configs)
    return cto.palettize_weights(model, config), constants


def palettes_in(path) -> dict[str, tuple[int, int]]:
    """Per constexpr_lut_to_dense op of a saved .mlpackage: (bit width, number of look-up tables). The iOS16 op
    holds one table of 2**bits values as an attribute; the iOS18 op takes it as an input shaped [groups, 1, ...,
    2**bits, 1]."""
    return {name: (bits, tables) for name, (bits, tables, _) in palette_facts_in(path).items()}


def palette_facts_in(path) -> dict[str, tuple[int, int, int]]:
    """Per constexpr_lut_to_dense op of a saved .mlpackage: (bit width, number of look-up tables, output channels
    of the weight it makes)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    out = {}
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type != "constexpr_lut_to_dense":
                    continue
                if "lut" in op.attributes:
                    dims = [int(d.constant.size) for d in op.attributes["lut"].type.tensorType.dimensions]
                    size, tables = dims[0], 1
                else:
                    dims = [int(d.constant.size)
                            for d in op.inputs["lut"].arguments[0].value.type.tensorType.dimensions]
                    size, tables = dims[-2], int(np.prod(dims[:-2]))
                channels = int(op.outputs[0].type.tensorType.dimensions[0].constant.size)
                out[op.outputs[0].name] = (int(np.log2(size)), tables, channels)
    return out


def palette_bits_in(path) -> dict[str, int]:
    """Per constexpr_lut_to_dense op of a saved .mlpackage: its bit width (log2 of the look-up table size)."""
    return {name: bits for name, (bits, _) in palettes_in(path).items()}
