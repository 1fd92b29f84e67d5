"""The coreml target: one mlprogram ``.mlpackage`` per component (iOS 16+), fixed shapes from the
profile, in fp16 (or fp32) compute, optionally with int8 linear weight quantization (``w8``) or 6-bit
k-means palettization (``palettize6``) applied by coremltools.optimize on top of fp16.

Conversion, compression and saving run on Linux; predictions need the Core ML framework (macOS).
Here the check is structural: input/output names and shapes, the op types, and that the weights are
stored as asked (fp16 constants, constexpr_affine_dequantize for w8, constexpr_lut_to_dense for
palettization). On macOS the same check also runs a prediction and compares it with torch.
"""
from __future__ import annotations

import dataclasses
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from edgekit.errors import InputError, MissingBackendError, VerificationError
from edgekit.profiles import TargetProfile
from edgekit.targets.base import ComponentJob, Target, _tensor_dicts

PACKAGE = "model.mlpackage"
DEPLOYMENT_TARGETS = ("iOS16", "iOS17", "iOS18")
# The op that must appear in the program for each weight compression (iOS16 opset names).
COMPRESSION_OPS = {"w8": "constexpr_affine_dequantize", "palettize6": "constexpr_lut_to_dense",
                   "w8a8": "constexpr_affine_dequantize", "mixed": "constexpr_lut_to_dense"}
FP16_COMPUTE = ("fp16", "w8", "palettize6", "w8a8", "mixed")
DTYPES = {"int32": np.int32, "int64": np.int32, "float32": np.float32}  # Core ML has no int64 inputs


def _ct():
    try:
        import coremltools as ct
    except ImportError:
        raise MissingBackendError("the coreml target needs coremltools: pip install 'edgekit[coreml]'") from None
    return ct


def convert(job: ComponentJob, profile: TargetProfile):
    """Trace the component at its fixed batch and convert it to an mlprogram (fp16 or fp32 compute)."""
    import torch

    from edgekit.components import component_spec, example_inputs, export_module

    ct = _ct()
    spec = component_spec(job.pipe, job.name)
    dummy = example_inputs(job.pipe, job.name, batch=job.batch, seed=0)
    args = tuple(torch.from_numpy(dummy[n]) for n in spec.input_names())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(export_module(job.pipe, job.name), args, check_trace=False)
        inputs = [ct.TensorType(name=t.name, shape=t.concrete(job.batch), dtype=DTYPES[t.dtype]) for t in spec.inputs]
        # float32 outputs whatever the compute precision: the device loop does its arithmetic in float32
        outputs = [ct.TensorType(name=t.name, dtype=np.float32) for t in spec.outputs]
        precision = ct.precision.FLOAT32 if job.precision == "fp32" else ct.precision.FLOAT16
        model = ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                           minimum_deployment_target=getattr(ct.target, profile.minimum_deployment_target),
                           compute_precision=precision, skip_model_load=True)
    return model


def compress(model, precision: str):
    """Weight compression on an fp16 mlprogram: int8 linear (per-channel symmetric) or 6-bit k-means LUT."""
    ct = _ct()
    from coremltools.optimize import coreml as cto

    if precision == "w8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric",
                                                                                   dtype="int8"))
        return cto.linear_quantize_weights(model, config)
    if precision == "palettize6":
        config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(nbits=6, mode="kmeans"))
        return cto.palettize_weights(model, config)
    return model


def plan_calibrated(job: ComponentJob, profile: TargetProfile) -> dict:
    """The analysis a calibrated compression needs, on the job's calibration rows (edgekit.targets.coreml_recipes),
    as recipe JSON: W8A8's activation range per conv/linear layer, or mixed-bit's per-layer bit widths with the
    output PSNR that chose them."""
    from edgekit.components import component_spec, export_module
    from edgekit.quantize.sensitivity import input_ranges
    from edgekit.targets import coreml_recipes as recipes

    module = export_module(job.pipe, job.name)
    spec = component_spec(job.pipe, job.name)
    rows = job.calibration
    if job.precision == "w8a8":
        return {"activation_ranges": {p: [float(lo), float(hi)] for p, (lo, hi) in input_ranges(module, spec, rows).items()}}
    cfg = profile.coreml
    plan, sensitivity = recipes.mixed_plan_for(module, spec, rows, cfg.palette_bits, cfg.mixed_target_bits,
                                               cfg.min_palettize_weights, group_size=cfg.palette_group_size)
    return {"palette_plan": {**plan.to_dict(), "average_bits": plan.average_bits},
            "layer_psnr_db": {p: {str(b): v for b, v in d.items()} for p, d in sensitivity.items()}}


def compress_calibrated(model, job: ComponentJob, profile: TargetProfile):
    """W8A8 or mixed-bit palettization applying the job's recipe plan (plan_calibrated; planned here when the job
    has none); returns (model, manifest facts: the recipe as applied)."""
    from edgekit.components import component_spec, export_module
    from edgekit.targets import coreml_recipes as recipes

    module = export_module(job.pipe, job.name)
    spec = component_spec(job.pipe, job.name)
    if job.precision == "w8a8" and platform.system() == "Darwin":  # Core ML predicts the rows itself
        model, facts = recipes.w8a8(model, module, spec, job.calibration, activation_ranges="coreml")
    elif job.precision == "w8a8":
        plan = job.recipe if job.recipe is not None else plan_calibrated(job, profile)
        ranges = {p: tuple(r) for p, r in plan["activation_ranges"].items()}
        model, facts = recipes.w8a8(model, module, spec, job.calibration, ranges=ranges)
    if job.precision == "w8a8":
        return model, {"recipe": "W8A8: int8 activations on conv/linear inputs, int8 per-channel weights",
                       "int8_compute_on": profile.coreml.w8a8_devices, **facts}
    planned = job.recipe if job.recipe is not None else plan_calibrated(job, profile)
    saved = planned["palette_plan"]
    plan = recipes.MixedPlan(bits=dict(saved["bits"]), average_bits=saved["average_bits"],
                             target_bits=saved["target_bits"], group_size=saved["group_size"])
    model, constants = recipes.apply_mixed(model, module, plan, profile.coreml.min_palettize_weights)
    tables = (f"one look-up table per {plan.group_size} output channels" if plan.group_size else
              "one look-up table per weight")
    return model, {"recipe": f"mixed-bit palettization, average {plan.average_bits:.2f} bits (target "
                             f"{plan.target_bits:g}; per-layer bits from output PSNR vs float on calibration rows; "
                             f"{tables})",
                   "palette_plan": plan.to_dict(), "palette_weights": constants,
                   "layer_psnr_db": {p: {b: round(v, 2) for b, v in d.items()}
                                     for p, d in planned["layer_psnr_db"].items()}}


def mixed_bits_problems(path: Path, plan: dict, constants: dict) -> list[str]:
    """The saved package's palettized weights must be exactly the plan's layers, each at the plan's bit width
    with the plan's look-up tables (one per group_size output channels, as palette_groups; ``constants``: layer
    path -> the weight constant apply_mixed palettized for it)."""
    from edgekit.targets.coreml_recipes import palette_facts_in, palette_groups

    facts = palette_facts_in(path)
    written = {name: bits for name, (bits, _, _) in facts.items()}
    want = {f"{constants[p]}_palettized": b for p, b in plan["bits"].items()}  # coremltools' output naming
    wrong = sorted(p for p, b in plan["bits"].items() if written.get(f"{constants[p]}_palettized") != b)
    extra = sorted(set(written) - set(want))
    problems = []
    if wrong:
        first = wrong[0]
        problems.append(f"{len(wrong)} layers differ from the plan's bit widths (first: {first}: "
                        f"{written.get(f'{constants[first]}_palettized')} bits, plan {plan['bits'][first]})")
    if extra:
        problems.append(f"{len(extra)} palettized weights are not in the plan (first: {extra[0]})")
    group = plan.get("group_size", 0)
    layer_facts = {p: facts[f"{constants[p]}_palettized"] for p in plan["bits"]
                   if f"{constants[p]}_palettized" in facts}
    tables = sorted(p for p, (_, n, channels) in layer_facts.items() if n != palette_groups(channels, group))
    if tables:
        _, got, channels = layer_facts[tables[0]]
        problems.append(f"{len(tables)} layers have other look-up tables than the plan's (first: {tables[0]}: {got} "
                        f"tables for {channels} output channels, plan one per {group or 'weight'})")
    return problems


def structure_problems(info: dict, entry: dict) -> list[str]:
    """What in the package differs from the manifest entry and the precision it claims."""
    problems = []
    for kind in ("inputs", "outputs"):
        got = [(t["name"], t["dtype"], t["shape"]) for t in info[kind]]
        want = [(t["name"], t["dtype"], t["shape"]) for t in entry[kind]]
        if got != want:
            problems.append(f"{kind} {got} differ from {want}")
    precision = entry["precision"]
    if precision in COMPRESSION_OPS and not info["ops"].get(COMPRESSION_OPS[precision]):
        problems.append(f"{precision} asked but no {COMPRESSION_OPS[precision]} op holds the weights")
    if precision == "w8a8" and not (info["ops"].get("quantize") and info["ops"].get("dequantize")):
        problems.append("w8a8 asked but no quantize/dequantize ops hold int8 activations")
    if precision in FP16_COMPUTE and not info["const_dtypes"].get("float16"):
        problems.append("fp16 compute asked but no float16 constants found")
    if precision == "fp32" and info["const_dtypes"].get("float16"):
        problems.append("fp32 asked but float16 constants found")
    return problems


class CoreMLTarget(Target):
    name = "coreml"
    file_format = "mlpackage"
    precisions = ("fp32", "fp16", "w8", "palettize6", "w8a8", "mixed")
    extra = "coreml"
    needs_fixed_shapes = True
    # weight-only compression needs no data; W8A8 takes activation ranges and mixed-bit its per-layer
    # sensitivity from the calibration rows
    needs_calibration = ("w8a8", "mixed")
    recipe_precisions = ("w8a8", "mixed")  # activation ranges / per-layer palette bits, per component (plan_calibrated)

    def check_profile(self, profile: TargetProfile) -> None:
        super().check_profile(profile)
        if profile.minimum_deployment_target not in DEPLOYMENT_TARGETS:
            raise InputError(f"profile '{profile.name}': minimum_deployment_target "
                             f"'{profile.minimum_deployment_target}' is not one of {', '.join(DEPLOYMENT_TARGETS)}")

    def created_with(self) -> dict:
        return {"coremltools": _ct().__version__}

    def takes_plan(self, job: ComponentJob, profile: TargetProfile) -> bool:
        # on macOS W8A8 takes its ranges from Core ML predictions (coremltools' own pass), not from a recipe
        return job.precision == "mixed" or (job.precision == "w8a8" and platform.system() != "Darwin")

    def plan_job(self, job: ComponentJob, profile: TargetProfile) -> dict | None:
        return plan_calibrated(job, profile) if self.takes_plan(job, profile) else None

    def recipe_fields(self, profile: TargetProfile) -> dict:
        return {"coreml": profile.coreml.to_dict()}

    def int8_route(self, job: ComponentJob, profile: TargetProfile) -> str | None:
        if job.precision in ("w8", "palettize6"):
            return f"coremltools weight-only {job.precision} (no calibration, no recipe)"
        if job.precision == "w8a8" and job.recipe is None:
            return "coremltools linear_quantize_activations on Core ML predictions (macOS)"
        return super().int8_route(job, profile)

    def write(self, job: ComponentJob, stage: Path, profile: TargetProfile) -> dict:
        from edgekit.components import component_spec
        from edgekit.runtime.runners import inspect_mlpackage

        folder = job.output_dir(stage)
        t0 = time.perf_counter()
        deployment = profile.minimum_deployment_target
        if job.precision == "w8a8" and DEPLOYMENT_TARGETS.index(deployment) < DEPLOYMENT_TARGETS.index(
                profile.coreml.w8a8_deployment_target):
            deployment = profile.coreml.w8a8_deployment_target  # quantize/dequantize of activations: iOS17 opset
        if job.precision == "mixed" and profile.coreml.palette_group_size and \
                DEPLOYMENT_TARGETS.index(deployment) < DEPLOYMENT_TARGETS.index("iOS18"):
            deployment = "iOS18"  # a look-up table per group of channels: the iOS18 constexpr_lut_to_dense
        model = convert(job, dataclasses.replace(profile, minimum_deployment_target=deployment))
        convert_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        recipe_facts = {}
        if job.precision in ("w8a8", "mixed"):
            model, recipe_facts = compress_calibrated(model, job, profile)
        else:
            model = compress(model, job.precision)
        compress_s = time.perf_counter() - t1
        path = folder / PACKAGE
        model.save(str(path))
        spec = component_spec(job.pipe, job.name)
        rel = f"{job.rel_dir}/{PACKAGE}"
        dtypes = {t.name: np.dtype(DTYPES[t.dtype]).name for t in spec.inputs}
        entry = {"format": "mlpackage", "file": rel, "files": [rel], "precision": job.precision, "layout": "NCHW",
                 "inputs": _tensor_dicts(spec.inputs, job.batch, dtypes), "outputs": _tensor_dicts(spec.outputs, job.batch),
                 "minimum_deployment_target": deployment,
                 "convert_s": round(convert_s, 2), "compress_s": round(compress_s, 2), **recipe_facts}
        info = inspect_mlpackage(path)
        problems = structure_problems(info, entry)
        if job.precision == "mixed":
            problems += mixed_bits_problems(path, recipe_facts["palette_plan"], recipe_facts["palette_weights"])
        if problems:
            raise VerificationError(f"{job.name}: {path}: " + "; ".join(problems))
        entry["ops"] = info["ops"]
        entry["const_dtypes"] = info["const_dtypes"]
        return entry

    def check(self, stage: Path, entry: dict, inputs: dict, expected: np.ndarray, profile: TargetProfile) -> list[dict]:
        from edgekit.runtime.runners import CoreMLRunner, compare, inspect_mlpackage

        info = inspect_mlpackage(stage / entry["file"])
        problems = structure_problems(info, entry)
        if problems:
            raise VerificationError(f"{stage / entry['file']}: " + "; ".join(problems))
        checks = [{"runtime": f"coremltools {_ct().__version__} (structure)", "ops": sum(info["ops"].values()),
                   "weights": entry["precision"], "passed": True}]
        if platform.system() == "Darwin":
            runner = CoreMLRunner(stage / entry["file"])
            casted = {k: v.astype(DTYPES.get(str(v.dtype), v.dtype)) for k, v in inputs.items()}
            checks.append({"runtime": runner.runtime, **compare(runner.run(casted), expected)})
        else:
            checks.append({"runtime": "Core ML", "skipped": "numeric check needs macOS (the Core ML framework); "
                                                            "structure checked here"})
        return checks


TARGET = CoreMLTarget
