"""The quantize stage: one registry of INT8 methods (name -> quantizer), the options they share, and
``quantize_model``, which runs one method over a model's components with its calibration rows and
writes the quantized directory (see edgekit/quantize/artifact.py for its layout).

A method is a ``Quantizer`` subclass decorated with ``@register``; it names the library it needs (a
missing one raises MissingBackendError naming the pip package) and turns one component plus its
calibration rows into an artifact under ``quantized/<component>/``. Everything else (row split,
sensitivity ranking, float budget, held-out error, manifest) is shared here, so every method is
measured the same way.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib.util
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.errors import CalibrationError, InputError, MissingBackendError

CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("int8", "uint8", "int16")
QUANTIZABLE_COMPONENTS = ("unet", "text_encoder", "vae_decoder")
DEFAULT_COMPONENTS = ("unet", "text_encoder", "vae_decoder")


@dataclass(frozen=True)
class QuantizeOptions:
    """What a user may choose; every method reads the fields that apply to it (the manifest says which)."""

    calibrate_method: str = "minmax"  # ort-static: how activation ranges are chosen
    # ort-static: uint8 / int8 (A8W8) or int16 (A16W8, Olive's SD recipe). uint8 by default: ORT's x86
    # kernels run U8S8 fastest (benchmarks/results/quantize.md: 0.88x FP32 latency vs 1.16x for int8).
    activations: str = "uint8"
    per_channel: bool = True  # weights: one scale per output channel
    exclude: tuple[str, ...] = ()  # fnmatch patterns over module paths kept in float
    # Share of a component's weights the sensitivity ranking may keep in float. 0.2% by default: on the
    # digits UNet that keeps conv_in and conv_out (the two most sensitive units) and cuts the held-out
    # rel-err from 0.031 to 0.024 for 0.001x more bytes.
    float_budget: float = 0.002
    holdout: float = 0.25  # share of calibration rows held out to measure the error (never calibrated on)
    max_calib_rows: int = 256  # rows used to calibrate (the rest of the non-held-out rows are dropped)
    sensitivity_rows: int = 8  # held-in rows the sensitivity ranking runs on (one forward per unit)
    seed: int = 0

    def __post_init__(self):
        if self.calibrate_method not in CALIBRATE_METHODS:
            raise InputError(f"--calibrate-method {self.calibrate_method}: expected one of {list(CALIBRATE_METHODS)}")
        if self.activations not in ACTIVATION_TYPES:
            raise InputError(f"--activations {self.activations}: expected one of {list(ACTIVATION_TYPES)}")
        if not 0.0 <= float(self.float_budget) < 1.0:
            raise InputError(f"--float-budget {self.float_budget}: expected a share in [0, 1)")
        if not 0.0 < float(self.holdout) < 1.0:
            raise InputError(f"--holdout {self.holdout}: expected a share in (0, 1)")
        for name in ("max_calib_rows", "sensitivity_rows"):
            if int(getattr(self, name)) <= 0:
                raise InputError(f"{name} {getattr(self, name)}: expected a positive whole number")

    @classmethod
    def from_dict(cls, data: dict) -> "QuantizeOptions":
        known = [f.name for f in fields(cls)]
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                raise InputError(f"unknown quantize option '{key}'" + (f"; did you mean '{hint[0]}'?" if hint else
                                                                       f"; known: {known}"))
        values = dict(data)
        if "exclude" in values:
            values["exclude"] = tuple(values["exclude"])
        return cls(**values)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["exclude"] = list(self.exclude)
        return out


@dataclass
class ComponentArtifact:
    """What a quantizer made of one component: files (relative to the output root), how to run it,
    and its own report (method settings, timings)."""

    kind: str  # "onnx" (run by onnxruntime) or "torch-fx" (an INT8 torch module)
    files: list[str]
    run: Callable[[dict], np.ndarray]
    report: dict = field(default_factory=dict)


class Quantizer:
    """Base of every method. Subclasses set the class attributes and implement ``quantize_component``."""

    name: str = ""
    backend_module: str = ""  # import name of the library the method needs
    pip_package: str = ""  # what to pip install when it is missing
    artifact_kind: str = "onnx"
    # Option fields this method reads (recorded in the manifest so nobody thinks the others applied).
    uses_options: tuple[str, ...] = ("per_channel", "exclude", "float_budget")

    def check_backend(self) -> None:
        if importlib.util.find_spec(self.backend_module) is None:
            raise MissingBackendError(f"--method {self.name} needs the Python package '{self.pip_package}' "
                                      f"(pip install {self.pip_package})")

    def quantize_component(self, pipe, component: str, calib_inputs: dict[str, np.ndarray],
                           options: QuantizeOptions, float_units: list[str], root: Path,
                           workdir: Path) -> ComponentArtifact:
        raise NotImplementedError


_REGISTRY: dict[str, type[Quantizer]] = {}


def register(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator adding a method to the registry; a second method with the same name is an error."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no method name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"quantize method '{cls.name}' registered twice ({_REGISTRY[cls.name].__name__}, {cls.__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin_methods() -> None:
    # The method modules import their heavy libraries only inside functions, so importing them is cheap.
    from edgekit.quantize import fx, nncf, ort_static  # noqa: F401


def methods() -> list[str]:
    _load_builtin_methods()
    return sorted(_REGISTRY)


def get_quantizer(name: str, flag: str = "--method") -> Quantizer:
    _load_builtin_methods()
    if name not in _REGISTRY:
        hint = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        raise InputError(f"{flag} {name}: unknown quantize method; known: {sorted(_REGISTRY)}"
                         + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    return _REGISTRY[name]()


def parse_components(text: str | None, flag: str = "--components") -> tuple[str, ...]:
    if text is None:
        return DEFAULT_COMPONENTS
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not names:
        raise InputError(f"{flag} '{text}': expected a comma-separated list of {list(QUANTIZABLE_COMPONENTS)}")
    for name in names:
        if name not in QUANTIZABLE_COMPONENTS:
            hint = difflib.get_close_matches(name, QUANTIZABLE_COMPONENTS, n=1, cutoff=0.4)
            raise InputError(f"{flag}: unknown component '{name}'; known: {list(QUANTIZABLE_COMPONENTS)}"
                             + (f" (did you mean '{hint[0]}'?)" if hint else ""))
    return names


def split_rows(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (calibration, held-out) row indices; each side gets at least one row."""
    if n < 2:
        raise CalibrationError(f"only {n} calibration row(s): need at least 2 to hold some out for measuring")
    order = np.random.default_rng(seed).permutation(n)
    held = min(max(1, int(round(n * holdout))), n - 1)
    return np.sort(order[held:]), np.sort(order[:held])


def check_calibration_matches(calib, spec, component: str, width: float | None) -> None:
    """The captured rows must have the shapes this model (at this width) feeds the component."""
    info = calib.meta["components"].get(component)
    if info is None:
        raise CalibrationError(f"--calib {calib.directory}: no rows for '{component}' (has {calib.components()})")
    for t in spec.inputs:
        captured = info.get("inputs", {}).get(t.name, {}).get("shape")
        expected = [int(d) for d in t.shape[1:]]
        if captured != expected:
            raise CalibrationError(f"--calib {calib.directory}: {component} input '{t.name}' has shape {captured}, "
                                   f"the model expects {expected}; re-run edgekit calibrate on this model")
    captured_width = calib.meta.get("width", calib.meta.get("config", {}).get("width"))
    wanted = 1.0 if width is None else float(width)
    if captured_width is not None and float(captured_width) != wanted:
        raise CalibrationError(f"--calib {calib.directory}: captured at width {captured_width}, quantizing width "
                               f"{wanted}; re-run edgekit calibrate --width {wanted}")


def matches_any(path: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def quantize_model(model_dir: Path, calib_dir: Path, method: str, out: Path, *,
                   components: tuple[str, ...] = DEFAULT_COMPONENTS, width: float | None = None,
                   options: QuantizeOptions = QuantizeOptions(), progress=None) -> dict:
    """Quantize ``components`` of the model at ``model_dir`` with ``method``; write ``out`` atomically.

    Returns the manifest. Nothing is written when any check fails (staged directory)."""
    import tempfile

    from edgekit.calibration import CalibrationSet
    from edgekit.components import component_spec, export_module, inputs_from_calibration, run_torch
    from edgekit.fsutil import staged_dir
    from edgekit.loader import artifact_stage, open_model
    from edgekit.quality import relative_error
    from edgekit.quantize import artifact, sensitivity

    quantizer = get_quantizer(method)
    quantizer.check_backend()
    model_dir = Path(model_dir)
    if artifact_stage(model_dir) == "quantize":
        raise InputError(f"--model {model_dir}: is already a quantized directory; quantize its float source")
    calib = CalibrationSet.open(calib_dir, model_dir)
    pipe = open_model(model_dir, width=width)
    specs = {name: component_spec(pipe, name) for name in components}
    for name in components:
        check_calibration_matches(calib, specs[name], name, width)

    started = time.perf_counter()
    task = progress.add_task(f"quantize {method}", total=len(components)) if progress else None
    results = {}
    with staged_dir(out) as staging, tempfile.TemporaryDirectory() as tmp:
        artifact.copy_source(model_dir, staging)
        for name in components:
            t0 = time.perf_counter()
            spec = specs[name]
            rows = calib.load(name)
            n = len(next(iter(rows.values())))
            calib_idx, held_idx = split_rows(n, options.holdout, options.seed)
            if len(calib_idx) > options.max_calib_rows:  # a seeded subset spread over all prompts and steps
                rng = np.random.default_rng(options.seed + 1)
                calib_idx = np.sort(rng.choice(calib_idx, options.max_calib_rows, replace=False))
            calib_inputs = inputs_from_calibration(spec, rows, calib_idx)
            held_inputs = inputs_from_calibration(spec, rows, held_idx)
            module = export_module(pipe, name)
            reference = run_torch(module, spec, held_inputs)

            sens_inputs = {k: v[: options.sensitivity_rows] for k, v in calib_inputs.items()}
            ranking = sensitivity.rank_units(module, spec, calib_inputs, sens_inputs)
            excluded = [u["unit"] for u in ranking if matches_any(u["unit"], options.exclude)]
            budgeted = sensitivity.select_float_units(ranking, options.float_budget, already=excluded)
            float_units = excluded + budgeted

            made = quantizer.quantize_component(pipe, name, calib_inputs, options, float_units, staging,
                                                Path(tmp) / name)
            actual = made.run(held_inputs)
            fp32_bytes = sensitivity.float_weight_bytes(module)
            int8_bytes = sum((staging / f).stat().st_size for f in made.files)
            results[name] = {
                "kind": made.kind,
                "files": made.files,
                "heldout_rows": int(len(held_idx)),
                "calibration_rows": int(len(calib_idx)),
                "heldout_rel_err": relative_error(actual, reference),
                "heldout_max_abs_err": float(np.max(np.abs(actual - reference))),
                "bytes": int(int8_bytes),
                "fp32_weight_bytes": int(fp32_bytes),
                "bytes_ratio_vs_fp32": round(int8_bytes / max(fp32_bytes, 1), 4),
                "float_units": {"excluded_by_pattern": excluded, "kept_by_budget": budgeted},
                "sensitivity": ranking,
                "report": made.report,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            if not np.isfinite(results[name]["heldout_rel_err"]):
                raise CalibrationError(f"{name}: the {method} model produced non-finite outputs on held-out rows")
            if task is not None:
                progress.update(task, advance=1)
        manifest = artifact.build_manifest(model_dir, calib, method, quantizer, options, width, results,
                                           seconds=time.perf_counter() - started)
        artifact.write_manifest(staging, manifest)
    return manifest
