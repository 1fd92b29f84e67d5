"""The tflite target: one .tflite flatbuffer per component for the stock LiteRT interpreter, with no
Flex (select-TF) ops, in float32, float16 weights, or full-integer INT8 (int8 weights and activations,
calibrated on representative rows from the calibration shards).

Two converters sit behind one interface (``CONVERTERS``), picked by the profile's ``converter``:
- ``litert-torch``: PyTorch -> TFLite directly (torch.export + the LiteRT converter); inputs stay NCHW
  and keep their names. The default: it needs no rewrites and converts ~10x faster here.
- ``onnx2tf``: PyTorch -> ONNX -> TensorFlow -> TFLite, the route the mission names. It needs the
  GroupNorm and GELU rewrites of ``edgekit.targets.patches`` to convert without Flex ops, and turns
  4-D inputs into NHWC. benchmarks/export_real_scale.py measures both.
Float16 and INT8 are applied to the float32 flatbuffer by ai-edge-quantizer (LiteRT's own quantizer). The INT8
recipe is the profile's ``int8_recipe``: which op types get int8 weights and activations (the shipped profile:
conv and fully-connected only), which UNet units stay float or get int16 activations (named, or picked per width
by edgekit.quantize.sensitivity's ranking under a weight budget, per width where the profile's
``int8_recipe.widths`` says so), and per width whether those ops' activations use calibrated int8 or int16 ranges or
dynamic ones (int8 ranges taken from each call's values); the manifest records the recipe as applied and
the output types of each named unit's ops.
"""
from __future__ import annotations

import difflib
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from torch import nn

from edgekit.errors import InputError, MissingBackendError, VerificationError
from edgekit.profiles import TargetProfile
from edgekit.targets.base import ComponentJob, Target, _tensor_dicts

MODEL_FILE = "model.tflite"
FLATBUFFER_LIMIT = 2**31  # a TFLite flatbuffer cannot address more


def tflite_ops(path: Path) -> dict[str, int]:
    """Operator counts of a .tflite file read from its flatbuffer (custom ops, Flex ones included, by
    their custom name), without instantiating an interpreter."""
    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAs(buf, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        name = names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "UNKNOWN")
        if name == "CUSTOM":
            name = (oc.CustomCode() or b"CUSTOM").decode()
        codes.append(name)
    counts: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            counts[codes[graph.Operators(o).OpcodeIndex()]] += 1
    return dict(sorted(counts.items()))


def _torch_inputs(job: ComponentJob, batch: int) -> dict:
    import torch

    from edgekit.components import example_inputs

    return {k: torch.from_numpy(v) for k, v in example_inputs(job.pipe, job.name, batch=batch, seed=0).items()}


class _NamedIO(nn.Module):
    """Keyword inputs and a dict output: litert-torch then names the signature's tensors like the spec."""

    def __init__(self, module: nn.Module, output_name: str) -> None:
        super().__init__()
        self.module = module
        self.output_name = output_name

    def forward(self, **inputs):
        return {self.output_name: self.module(**inputs)}


def convert_litert_torch(job: ComponentJob, module, out: Path) -> dict:
    """float32 .tflite whose signature inputs and output carry the spec's names; batch fixed to ``job.batch``."""
    try:
        import litert_torch
    except ImportError:
        raise MissingBackendError("converting to TFLite needs litert-torch: pip install 'edgekit[tflite]'") from None
    from litert_torch import progress as litert_progress

    from edgekit.components import component_spec

    kwargs = _torch_inputs(job, job.batch or 1)
    quiet = litert_progress.console.quiet
    litert_progress.console.quiet = True  # its task log goes to stdout, where --json output goes
    try:
        named = _NamedIO(module, component_spec(job.pipe, job.name).output_names()[0]).eval()
        model = litert_torch.convert(named, sample_args=(), sample_kwargs=kwargs)
        model.export(str(out))
    finally:
        litert_progress.console.quiet = quiet
    return {"converter": f"litert-torch {litert_torch.__version__}", "layout": "NCHW"}


def convert_onnx2tf(job: ComponentJob, module, out: Path, opset: int = 17) -> dict:
    """float32 .tflite through ONNX and onnx2tf, with the export-time rewrites it needs."""
    try:
        import onnx2tf
    except ImportError:
        raise MissingBackendError("the onnx2tf route needs onnx2tf: pip install 'edgekit[tflite]'") from None
    from edgekit.components import component_spec
    from edgekit.onnx_export import export_onnx
    from edgekit.targets.patches import onnx2tf_friendly

    # onnx2tf would read (batch, tokens, hidden) as NCW and transpose it; only 4-D tensors go NHWC.
    spec = component_spec(job.pipe, job.name)
    keep = [t.name for t in spec.inputs if len(t.shape) == 3]
    # the graph keeps a dynamic batch axis; onnx2tf pins it (a batch-1 trace bakes Expand ops it cannot map)
    static = [f"{t.name}:{','.join(str(d) for d in t.concrete(job.batch or 1))}" for t in spec.inputs]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_path = tmp / "model.onnx"
        with onnx2tf_friendly(module) as patched:
            export_onnx(job.pipe, job.name, onnx_path, opset=opset, dynamic_batch=True, module=patched)
        onnx2tf.convert(input_onnx_file_path=str(onnx_path), output_folder_path=str(tmp / "tf"),
                        non_verbose=True, keep_shape_absolutely_input_names=keep or None,
                        overwrite_input_shape=static,
                        copy_onnx_input_output_names_to_tflite=True, output_signaturedefs=True)
        produced = tmp / "tf" / "model_float32.tflite"
        if not produced.is_file():
            raise VerificationError(f"{job.name}: onnx2tf wrote no float32 model")
        shutil.copy(produced, out)
    return {"converter": f"onnx2tf {onnx2tf.__version__}", "layout": "NHWC", "as_written": True}


CONVERTERS = {"litert-torch": convert_litert_torch, "onnx2tf": convert_onnx2tf}


def _signature_batches(rows: dict[str, np.ndarray], batch: int, dtypes: dict) -> list[dict]:
    n = len(next(iter(rows.values())))
    out = []
    for start in range(0, n - batch + 1, batch):
        out.append({k: np.ascontiguousarray(v[start:start + batch], dtype=dtypes[k]) for k, v in rows.items()})
    return out


def litert_scope(root: nn.Module, path: str) -> str:
    """The op-scope fragment litert-torch gives the ops of submodule ``path`` of ``root`` (its op and tensor
    names): one ``<module>.<Class>_<attribute or index>`` per level, a ModuleList's own level left out
    (``down_blocks.0.resnets.1`` -> ``...CrossAttnDownBlock2D_0/...ResnetBlock2D_1``)."""
    parts = path.split(".")
    module, out = root, []
    for i, part in enumerate(parts):
        child = module[int(part)] if part.isdigit() else getattr(module, part)
        if isinstance(child, nn.ModuleList) and i + 1 < len(parts) and parts[i + 1].isdigit():
            module = child
            continue
        out.append(f"{type(child).__module__}.{type(child).__qualname__}_{part}")
        module = child
    return "/".join(out)


def unit_regex(unet: nn.Module, unit: str) -> str:
    """ai-edge-quantizer scope regex that matches exactly the ops of UNet unit ``unit``."""
    prefix = f"{type(unet).__qualname__}_unet/"
    return re.escape(prefix + litert_scope(unet, unit)) + "(/|;|$)"


def check_units(unet_module: nn.Module, names, field_name: str, where: str) -> None:
    """Every unit a recipe names must be a unit of this UNet (edgekit.quantize.sensitivity)."""
    from edgekit.quantize.sensitivity import units

    known = units(unet_module)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; its units: {', '.join(list(known)[:8])}, ..."
            raise InputError(f"{where}: int8_recipe.{field_name} names '{name}', which is not a unit of the UNet{hint}")


def plan_int8_recipe(job: ComponentJob, recipe, where: str) -> dict:
    """The UNet's activation mode, float and int16 units for this width: the profile's lists plus, with a
    sensitivity budget, the units the ranking puts first (measured on this width's calibration rows); with the
    ranking used."""
    from edgekit.components import component_spec, export_module
    from edgekit.quantize.sensitivity import rank_units, select_float_units

    module = export_module(job.pipe, job.name)
    width = getattr(job.width, "value", job.width)  # a Width, or a plain number from a caller
    budget, float_named, int16_named = recipe.for_width(width)
    check_units(module, float_named, "float_units", where)
    check_units(module, int16_named, "int16_units", where)
    float_units, int16_units = list(float_named), list(int16_named)
    ranking = []
    if budget > 0 and job.calibration:
        rows = job.calibration
        n = len(next(iter(rows.values())))
        held = np.linspace(0, n - 1, min(n, 8)).round().astype(int)
        ranking = rank_units(module, component_spec(job.pipe, job.name), rows,
                             {k: v[held] for k, v in rows.items()})
        chosen = select_float_units(ranking, budget, already=float_units + int16_units)
        (float_units if recipe.sensitive_as == "float" else int16_units).extend(chosen)
    return {"int8_ops": list(recipe.int8_ops), "activations": recipe.activations_for(width),
            "float_units": float_units, "int16_units": int16_units, "width": width,
            "sensitive_budget": budget, "sensitive_as": recipe.sensitive_as,
            "ranking": [{"unit": r["unit"], "rel_err": round(float(r["rel_err"]), 5), "weights": r["weights"]}
                        for r in ranking[:12]]}


def compact_tensor_names(path: Path) -> int:
    """Shorten every tensor name of the .tflite at ``path`` to an id; the signature keeps its input and
    output names (the interpreter feeds by signature). Returns the bytes saved."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    before = path.stat().st_size
    model = fbu.read_model_from_bytearray(bytearray(path.read_bytes()))
    for g, graph in enumerate(model.subgraphs):
        for i, tensor in enumerate(graph.tensors):
            tensor.name = f"t{g}_{i:x}".encode()
    path.write_bytes(bytes(fbu.convert_object_to_bytearray(model)))
    return before - path.stat().st_size


def unit_dtypes(path: Path, unet: nn.Module, units_: list[str]) -> dict[str, dict[str, int]]:
    """Per unit, the output tensor types of its ops in the written .tflite (what the recipe really did)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfu

    names = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = tfu.read_model(str(path))
    graph = model.subgraphs[0]
    out: dict[str, dict[str, int]] = {}
    for unit in units_:
        pattern = re.compile(unit_regex(unet, unit))
        counts: Counter = Counter()
        for op in graph.operators:
            if pattern.search(tfu.get_op_scope(op, graph.tensors)):
                for t in op.outputs:
                    if t >= 0:
                        counts[names.get(graph.tensors[t].type, str(graph.tensors[t].type))] += 1
        out[unit] = dict(sorted(counts.items()))
    return out


def quantize(float_path: Path, out: Path, precision: str, calibration: dict | None, batch: int,
             float_activations: bool = False, float_scopes: tuple[str, ...] = (), plan: dict | None = None,
             unet: nn.Module | None = None) -> dict:
    """fp16: float16 weights dequantized at load (float compute). int8: int8 weights and activations,
    ranges calibrated on the representative rows; with ``float_activations`` int8 weights only (dynamic
    range: activations quantized on the fly, no calibration). ``plan`` (plan_int8_recipe) names the op types
    that get int8, their activations (int8 or int16 calibrated ranges, or dynamic: int8 ranges taken at run time)
    and the UNet units (of ``unet``) left float or given int16 activations."""
    from ai_edge_quantizer import quantizer as aeq_quantizer
    from ai_edge_quantizer import recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    q = aeq_quantizer.Quantizer(str(float_path))
    if precision == "fp16":
        q.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                 algorithm_key=AlgorithmName.FLOAT_CASTING)
        result = q.quantize(enable_progress_report=False)
        out.write_bytes(bytes(result.quantized_model))
        return {"recipe": "weight-only float16 (ai-edge-quantizer FLOAT_CASTING)"}
    if precision == "int8" and float_activations:
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        result = q.quantize(enable_progress_report=False)
        out.write_bytes(bytes(result.quantized_model))
        return {"recipe": "dynamic range: int8 weights, float activations (ai-edge-quantizer dynamic_wi8_afp32)"}
    if precision == "int8":
        from edgekit.runtime.runners import LiteRTRunner

        ops = tuple((plan or {}).get("int8_ops") or ("*",))
        activations = (plan or {}).get("activations", "int8")
        op_names = [TFLOperationName.ALL_SUPPORTED if op == "*" else TFLOperationName(op) for op in ops]
        for op in op_names:  # later rules win in ai-edge-quantizer
            if activations == "dynamic":
                q.add_dynamic_config(".*", op, num_bits=8)
            else:
                bits = 16 if activations == "int16" else 8
                q.add_static_config(".*", op, activation_num_bits=bits, weight_num_bits=8)
        if float_scopes:
            scope = ".*(" + "|".join(re.escape(s) for s in float_scopes) + ").*"
            q.update_quantization_recipe(scope, TFLOperationName.ALL_SUPPORTED, algorithm_key=AlgorithmName.NO_QUANTIZE)
        for unit in (plan or {}).get("int16_units", ()):
            for op in op_names:
                q.add_static_config(unit_regex(unet, unit), op, activation_num_bits=16, weight_num_bits=8)
        for unit in (plan or {}).get("float_units", ()):
            q.update_quantization_recipe(unit_regex(unet, unit), TFLOperationName.ALL_SUPPORTED,
                                         algorithm_key=AlgorithmName.NO_QUANTIZE)
        if activations == "dynamic" and not (plan or {}).get("int16_units"):  # nothing to calibrate
            result = q.quantize(enable_progress_report=False)
            out.write_bytes(bytes(result.quantized_model))
            return {"recipe": f"dynamic range: int8 weights, int8 activations quantized per call on {', '.join(ops)}, "
                              "other ops float (ai-edge-quantizer)", "float_scopes": list(float_scopes)}
        runner = LiteRTRunner(float_path)
        samples = _signature_batches(calibration, batch, runner.input_dtypes)
        if not samples:
            raise InputError(f"calibration rows: fewer representative rows than the batch size {batch}")
        qsvs = q.calibrate({runner.signature_key: samples}, num_threads=1)
        result = q.quantize(qsvs, enable_progress_report=False)
        out.write_bytes(bytes(result.quantized_model))
        kind = {"int16": "int16", "int8": "int8"}.get(activations, "dynamic-range int8 (int16 units calibrated)")
        label = ("static int8 weights + int8 activations (ai-edge-quantizer static_wi8_ai8)" if ops == ("*",) and kind == "int8"
                 else f"static int8 weights + {kind} activations on {', '.join(ops)}, other ops float "
                      "(ai-edge-quantizer)")
        return {"recipe": label, "representative_batches": len(samples), "float_scopes": list(float_scopes)}
    raise InputError(f"precision {precision}: tflite offers fp32, fp16, int8")


class TFLiteTarget(Target):
    name = "tflite"
    file_format = "tflite"
    precisions = ("fp32", "fp16", "int8")
    extra = "tflite"
    needs_fixed_shapes = True
    recipe_precisions = ("int8",)  # the UNet's unit plan (plan_int8_recipe), per width

    def check_profile(self, profile: TargetProfile) -> None:
        super().check_profile(profile)
        if profile.converter not in CONVERTERS:
            raise InputError(f"profile '{profile.name}': converter '{profile.converter}' is not one of "
                             f"{', '.join(CONVERTERS)}")

    def created_with(self) -> dict:
        from ai_edge_litert import __version__ as litert_version

        out = {"ai_edge_litert": litert_version}
        try:
            import litert_torch

            out["litert_torch"] = litert_torch.__version__
        except ImportError:
            pass
        return out

    def takes_plan(self, job: ComponentJob, profile: TargetProfile) -> bool:
        """The graph holding the UNet's named units, in full-integer INT8: its recipe picks their precision."""
        return (job.precision == "int8" and job.name not in profile.int8_float_activations
                and job.component.int8_units)

    def plan_job(self, job: ComponentJob, profile: TargetProfile) -> dict | None:
        return plan_int8_recipe(job, profile.int8_recipe, f"profile '{profile.name}'") if self.takes_plan(job, profile) \
            else None

    def recipe_fields(self, profile: TargetProfile) -> dict:
        return {"int8_recipe": profile.int8_recipe.to_dict(),
                "int8_float_activations": list(profile.int8_float_activations)}

    def int8_route(self, job: ComponentJob, profile: TargetProfile) -> str | None:
        if job.precision == "int8" and job.recipe is None:
            how = ("dynamic range (ai-edge-quantizer)" if job.name in profile.int8_float_activations
                   else "the profile's int8_ops, calibrated (ai-edge-quantizer)")
            return f"tflite converter: {how}"
        return super().int8_route(job, profile)

    def write(self, job: ComponentJob, stage: Path, profile: TargetProfile) -> dict:
        from edgekit.components import component_spec, export_module

        recipe = profile.int8_recipe
        named_float = recipe.float_units + tuple(u for w in recipe.widths for u in w.float_units)
        named_int16 = recipe.int16_units + tuple(u for w in recipe.widths for u in w.int16_units)
        if job.precision == "int8" and (named_float or named_int16):
            # checked at the first component (the text encoder), before any conversion writes anything
            ranked = next(c for c in self.components() if c.int8_units)
            unet = ranked.export_module(job.pipe)
            check_units(unet, named_float, "float_units", f"profile '{profile.name}'")
            check_units(unet, named_int16, "int16_units", f"profile '{profile.name}'")
        folder = job.output_dir(stage)
        path = folder / MODEL_FILE
        spec = component_spec(job.pipe, job.name)
        convert = CONVERTERS[profile.converter]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            float_path = Path(tmp) / "float32.tflite" if job.precision != "fp32" else path
            facts = convert(job, export_module(job.pipe, job.name), float_path)
            facts["convert_s"] = round(time.perf_counter() - t0, 2)
            full_integer = job.precision == "int8" and job.name not in profile.int8_float_activations
            plan = None
            if full_integer:
                plan = {"int8_ops": list(profile.int8_recipe.int8_ops)}
                if self.takes_plan(job, profile):  # the recipe's plan; planned here when written without one
                    plan = dict(job.recipe if job.recipe is not None else self.plan_job(job, profile))
            if job.precision != "fp32":
                facts.update(quantize(float_path, path, job.precision, job.calibration, job.batch or 1,
                                      float_activations=job.name in profile.int8_float_activations,
                                      float_scopes=profile.int8_float_scopes, plan=plan, unet=job.pipe.unet))
            if plan is not None and self.takes_plan(job, profile):  # read before names are compacted: scopes live in them
                named = plan["float_units"] + plan["int16_units"]
                plan["unit_dtypes"] = unit_dtypes(path, job.pipe.unet, named) if named else {}
                facts["int8_recipe"] = plan
            if profile.int8_recipe.compact_names and job.precision == "int8":
                facts["tensor_name_bytes_saved"] = compact_tensor_names(path)
        size = path.stat().st_size
        if size > min(FLATBUFFER_LIMIT, profile.max_file_mb * 2**20):
            raise VerificationError(f"{job.name}: {size / 2**20:.0f} MiB .tflite exceeds the profile's "
                                    f"{profile.max_file_mb:.0f} MiB cap (use fp16/int8 or split the UNet)")
        ops = tflite_ops(path)
        bad = profile.ops.violations(ops)
        if bad:
            raise VerificationError(f"{job.name}: {path.name} holds forbidden ops {bad} (profile '{profile.name}')")
        from edgekit.runtime.runners import LiteRTRunner

        runner = LiteRTRunner(path)  # raises when the stock interpreter refuses the model
        details = runner.runner.get_input_details()
        dtypes = {n: np.dtype(details[n]["dtype"]).name for n in runner.input_names}
        inputs = _tensor_dicts(spec.inputs, job.batch, dtypes)
        out_details = runner.runner.get_output_details()[runner.output_names[0]]
        outputs = _tensor_dicts(spec.outputs, job.batch, {spec.outputs[0].name: np.dtype(out_details["dtype"]).name})
        if facts.pop("as_written", False):  # onnx2tf: channels-last 4-D tensors, shapes as written
            inputs = [{**t, "shape": [int(d) for d in details[t["name"]]["shape"]]} if t["name"] in details else t
                      for t in inputs]
            outputs = [{**outputs[0], "shape": [int(d) for d in out_details["shape"]]}]
        # A full-integer model's int8 inputs/outputs carry (scale, zero point): real = scale * (q - zero).
        quant = {t.name: details[t.name]["quantization"] for t in spec.inputs if details[t.name]["quantization"][0]}
        if out_details["quantization"][0]:
            quant[spec.outputs[0].name] = out_details["quantization"]
        if quant:
            facts["io_quantization"] = {k: {"scale": float(v[0]), "zero_point": int(v[1])} for k, v in quant.items()}
        rel = f"{job.rel_dir}/{MODEL_FILE}"
        return {"format": "tflite", "file": rel, "files": [rel], "precision": job.precision, "layout": facts.pop("layout"),
                "inputs": inputs, "outputs": outputs, "signature": runner.signature_key, "ops": ops,
                "flex_ops": [op for op in ops if op.startswith("Flex")], **facts}

    def check(self, stage: Path, entry: dict, inputs: dict, expected: np.ndarray, profile: TargetProfile) -> list[dict]:
        from edgekit.runtime.runners import LiteRTRunner, compare

        runner = LiteRTRunner(stage / entry["file"])
        if entry["layout"] == "NHWC":
            inputs = {k: (v.transpose(0, 2, 3, 1) if v.ndim == 4 else v) for k, v in inputs.items()}
        actual = runner.run(inputs)
        if entry["layout"] == "NHWC" and actual.ndim == 4:
            actual = actual.transpose(0, 3, 1, 2)
        return [{"runtime": runner.runtime, **compare(actual, expected)}]


TARGET = TFLiteTarget
