"""torch FX graph-mode INT8 (torch.ao.quantization.quantize_fx prepare_fx / convert_fx): a runnable INT8
torch component with real quantized kernels (quantized::conv2d / quantized::linear on the x86 engine).

FX symbolic tracing cannot trace diffusers blocks as a whole (their forwards branch on tensor shapes
and call len() on arguments; measured: every UNet block, Transformer2DModel, Attention, ResnetBlock2D
fails to trace), so the graph-mode flow runs on each traceable subgraph: every conv and linear layer
is traced, prepared with the x86 QConfigMapping (per-channel INT8 weights, UINT8 activations with
HistogramObserver), calibrated by running the whole component over the calibration rows, and
converted in place. Layers the calibration never reaches (the VAE encoder, for the decoder) and
layers kept in float by the sensitivity budget stay float.

On disk: ``quantized/<component>/model_int8.pt`` (the converted layers' state, INT8 weights and scales,
loaded with ``weights_only=True``) and ``recipe.json`` (which layers, which engine). Loading rebuilds
the same converted layers on the float model copied next to them and loads that state.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from edgekit.quantize import ComponentArtifact, QuantizeOptions, Quantizer
from edgekit.quantize.sensitivity import in_units

STATE_FILE = "model_int8.pt"
RECIPE_FILE = "recipe.json"
ENGINE = "x86"


def _set_submodule(root, path: str, new) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


def _leaf_layers(root):
    from torch import nn

    return {name: m for name, m in root.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _use_engine() -> None:
    import torch

    if ENGINE in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = ENGINE


def _skeleton_qconfig_mapping(per_channel: bool):
    """Same dtypes as the calibrated mapping, with observers that need no data (values come from the state)."""
    import torch
    from torch.ao.quantization import QConfig, QConfigMapping
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver

    weight = (PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
              if per_channel else MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric))
    return QConfigMapping().set_global(QConfig(activation=MinMaxObserver.with_args(dtype=torch.quint8),
                                               weight=weight))


def _calibrated_qconfig_mapping(per_channel: bool):
    import torch
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import MinMaxObserver

    mapping = get_default_qconfig_mapping(ENGINE)
    if not per_channel:
        base = mapping.global_qconfig
        mapping.set_global(QConfig(activation=base.activation,
                                   weight=MinMaxObserver.with_args(dtype=torch.qint8,
                                                                   qscheme=torch.per_tensor_symmetric)))
    return mapping


def _example_input(layer):
    import torch
    from torch import nn

    if isinstance(layer, nn.Conv2d):
        return (torch.zeros(1, layer.in_channels, 8, 8),)
    return (torch.zeros(1, layer.in_features),)


def quantize_module_fx(root, run_calibration, float_units=(), per_channel: bool = True) -> list[str]:
    """Quantize, in place, every conv/linear of ``root`` that ``run_calibration(root)`` reaches and that is
    not in ``float_units``. Paths are relative to ``root``; returns the quantized ones."""
    import torch
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    _use_engine()
    layers = _leaf_layers(root)
    reached: dict[str, tuple] = {}

    def remember(name):
        def hook(_module, args):
            reached.setdefault(name, tuple(x.detach()[:1] for x in args))  # returns None: inputs unchanged
        return hook

    hooks = [m.register_forward_pre_hook(remember(n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            run_calibration(root, first_batch_only=True)
    finally:
        for h in hooks:
            h.remove()
    chosen = [n for n in layers if n in reached and not in_units(n, float_units)]
    mapping = _calibrated_qconfig_mapping(per_channel)
    for name in chosen:
        _set_submodule(root, name, prepare_fx(layers[name], mapping, reached[name]))
    with torch.no_grad():
        run_calibration(root, first_batch_only=False)
    for name in chosen:
        _set_submodule(root, name, convert_fx(root.get_submodule(name)))
    return chosen


def _converted_template(layer, per_channel: bool):
    """The converted graph of one small layer of ``layer``'s type. Every converted conv (linear) graph is
    the same (quantize input -> quantized op on packed weights -> dequantize); only attribute values
    differ, so loading traces two tiny layers instead of re-running prepare/convert per layer."""
    import warnings

    import torch
    from torch import nn
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    small = nn.Conv2d(8, 8, 3, padding=1) if isinstance(layer, nn.Conv2d) else nn.Linear(8, 8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # observers see one dummy batch: the template's values are replaced
        example = _example_input(small)
        prepared = prepare_fx(small, _skeleton_qconfig_mapping(per_channel), example)
        prepared(*example)
        return convert_fx(prepared).graph


def load_fx_layers(root, quantized: list[str], state: dict, per_channel: bool = True) -> None:
    """Rebuild the converted layers named in ``quantized`` on the float ``root`` from their stored state."""
    import torch
    from torch import nn

    _use_engine()
    templates = {}
    for name in quantized:
        layer = root.get_submodule(name)
        kind = nn.Conv2d if isinstance(layer, nn.Conv2d) else nn.Linear
        if kind not in templates:
            templates[kind] = _converted_template(layer, per_channel)
        graph = copy.deepcopy(templates[kind])
        prefix = name + "."
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        attrs = {k: v for k, v in own.items() if "#" not in k}
        for attr in {k.split("#")[0] for k in own if "#" in k}:
            attrs[attr] = _repack(layer, own[attr + "#weight"], own.get(attr + "#bias"))
        needed = {n.target for n in graph.nodes if n.op == "get_attr"}
        if needed != set(attrs):
            raise ValueError(f"{name}: stored INT8 state {sorted(attrs)} does not fit the converted graph "
                             f"{sorted(needed)}")
        _set_submodule(root, name, torch.fx.GraphModule(attrs, graph))


def _unpack(layer, packed):
    """A prepacked quantized weight (a TorchScript object torch.load refuses) -> plain (weight, bias)."""
    import torch
    from torch import nn

    op = torch.ops.quantized.conv2d_unpack if isinstance(layer, nn.Conv2d) else torch.ops.quantized.linear_unpack
    return op(packed)


def _repack(layer, weight, bias):
    import torch
    from torch import nn

    if isinstance(layer, nn.Conv2d):
        return torch.ops.quantized.conv2d_prepack(weight, bias, list(layer.stride), list(layer.padding),
                                                  list(layer.dilation), layer.groups)
    return torch.ops.quantized.linear_prepack(weight, bias)


def layer_state(layer, converted) -> dict:
    """The converted layer's state as tensors only: packed weights are stored as 'attr#weight' / 'attr#bias'."""
    import torch

    out = {}
    for key, value in converted.state_dict().items():
        if isinstance(value, torch.ScriptObject):
            weight, bias = _unpack(layer, value)
            out[f"{key}#weight"] = weight
            if bias is not None:
                out[f"{key}#bias"] = bias
        else:
            out[key] = value
    return out


def load_component(pipe, component: str, directory: Path) -> None:
    """Swap the FX INT8 layers stored in ``directory`` into ``pipe``'s component (in place)."""
    import torch

    recipe = json.loads((Path(directory) / RECIPE_FILE).read_text())
    state = torch.load(Path(directory) / STATE_FILE, weights_only=True)
    from edgekit.components import get_component

    target = get_component(component).torch_module(pipe)  # the module the export wrapper holds
    load_fx_layers(target, recipe["quantized_layers"], state, recipe.get("per_channel", True))


# Rows per calibration forward: the activations of one forward scale with it (at 64x64 latents they are
# most of what the measured line below adds over 32x32), so the line holds only for this many.
FORWARD_ROWS = 4


def _calibration_runner(spec, inputs: dict[str, np.ndarray], batch: int = FORWARD_ROWS):
    import torch

    n = len(next(iter(inputs.values())))

    def run(module, first_batch_only: bool):
        for start in range(0, 1 if first_batch_only else n, batch):
            module(*[torch.from_numpy(np.ascontiguousarray(inputs[k][start:start + batch])) for k in spec.input_names()])

    return run


class FxQuantizer(Quantizer):
    name = "fx"
    backend_module = "torch.ao.quantization.quantize_fx"
    pip_package = "torch"
    artifact_kind = "torch-fx"
    uses_options = ("per_channel", "exclude", "float_budget")
    # Peak RSS on SD-1.5-layout UNets of 13M, 52M and 211M parameters at SD-1.5's 64x64 latents, 4-row
    # forwards: 1.05, 1.81 and 4.18 GB, a line of 945 MB + 16.7 bytes per parameter: 14.3 GB at 860M
    # (32x32 latents: 637 MB + 11.5 bytes per parameter; benchmarks/results/realsize_quantizers.md).
    memory_fit = (945 * 2**20, 16.7)

    def quantize_component(self, pipe, component, calib_inputs, options: QuantizeOptions, float_units, root: Path,
                           workdir: Path) -> ComponentArtifact:
        import torch

        from edgekit.components import component_spec, export_module, run_torch

        started = time.perf_counter()
        spec = component_spec(pipe, component)
        wrapper = copy.deepcopy(export_module(pipe, component))
        # The export wrapper holds the component as its only child; paths are kept relative to the component.
        (_, target), = wrapper.named_children()
        float_layers = _leaf_layers(target)
        total_layers = len(float_layers)
        run = _calibration_runner(spec, calib_inputs)
        chosen = quantize_module_fx(target, lambda _m, first_batch_only: run(wrapper, first_batch_only),
                                    float_units, options.per_channel)
        state = {}
        for name in chosen:
            for key, value in layer_state(float_layers[name], target.get_submodule(name)).items():
                state[f"{name}.{key}"] = value
        rel_dir = Path("quantized") / component
        out_dir = root / rel_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(state, out_dir / STATE_FILE)
        recipe = {"engine": ENGINE, "per_channel": options.per_channel, "quantized_layers": chosen,
                  "api": "torch.ao.quantization.quantize_fx.prepare_fx/convert_fx per traced conv/linear subgraph",
                  "torch_version": torch.__version__}
        (out_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
        wrapper.eval()
        report = {"engine": ENGINE, "weights": "int8 per-channel" if options.per_channel else "int8 per-tensor",
                  "activations": "uint8 per-tensor (HistogramObserver)", "quantized_layers": len(chosen),
                  "float_layers": total_layers - len(chosen),
                  "calibration_rows": int(len(next(iter(calib_inputs.values())))),
                  "seconds": round(time.perf_counter() - started, 2)}
        files = [(rel_dir / STATE_FILE).as_posix(), (rel_dir / RECIPE_FILE).as_posix()]
        return ComponentArtifact("torch-fx", files, lambda inputs: run_torch(wrapper, spec, inputs), report)


QUANTIZER = FxQuantizer
