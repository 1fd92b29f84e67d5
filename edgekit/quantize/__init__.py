"""The quantize stage: one registry of INT8 methods (name -> quantizer), the options they share, and
``quantize_model``, which runs one method over a model's components with its calibration rows and
writes the quantized directory (see edgekit/quantize/artifact.py for its layout).

A method is a ``Quantizer`` subclass in its own module (``QUANTIZER = TheClass``), registered below in
``QUANTIZERS`` (an ``edgekit.registry.Registry``, the pattern targets and runners use too); it names the
library it needs (a missing one raises MissingBackendError naming the pip package) and turns one component
plus its calibration rows into an artifact under ``quantized/<component>/``. Everything else (row split,
sensitivity ranking, float budget, held-out error, manifest) is shared here (``quantize_component``), so every
method is measured the same way, and a target that quantizes on its own (ort-web INT8 without a quantize
stage) goes through the same function.
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

from edgekit.components import CALIB_COMPONENTS, PER_WIDTH_COMPONENTS
from edgekit.errors import CalibrationError, InputError, MissingBackendError
from edgekit.registry import Registry
from edgekit.width import Width

CALIBRATE_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("int8", "uint8", "int16")
# What calibration captures can be quantized; per-width ones first (they are what a width changes).
QUANTIZABLE_COMPONENTS = PER_WIDTH_COMPONENTS + tuple(c for c in CALIB_COMPONENTS if c not in PER_WIDTH_COMPONENTS)
DEFAULT_COMPONENTS = QUANTIZABLE_COMPONENTS


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
            raise InputError(f"expected one of {list(CALIBRATE_METHODS)}", param="calibrate_method", value=self.calibrate_method)
        if self.activations not in ACTIVATION_TYPES:
            raise InputError(f"expected one of {list(ACTIVATION_TYPES)}", param="activations", value=self.activations)
        if not 0.0 <= float(self.float_budget) < 1.0:
            raise InputError("expected a share in [0, 1)", param="float_budget", value=self.float_budget)
        if not 0.0 < float(self.holdout) < 1.0:
            raise InputError("expected a share in (0, 1)", param="holdout", value=self.holdout)
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
    # (intercept bytes, bytes per parameter) of the method's measured peak memory, or None: never refused for
    # size (edgekit/quantize/memory.py checks it before any work)
    memory_fit: tuple[float, float] | None = None

    def check_backend(self) -> None:
        if importlib.util.find_spec(self.backend_module) is None:
            raise MissingBackendError(f"quantize method '{self.name}' needs the Python package '{self.pip_package}' "
                                      f"(pip install {self.pip_package})")

    def quantize_component(self, pipe, component: str, calib_inputs: dict[str, np.ndarray],
                           options: QuantizeOptions, float_units: list[str], root: Path,
                           workdir: Path) -> ComponentArtifact:
        raise NotImplementedError


QUANTIZERS = Registry("quantize method", "QUANTIZER")
QUANTIZERS.add("ort-static", "edgekit.quantize.ort_static")
QUANTIZERS.add("fx", "edgekit.quantize.fx")
QUANTIZERS.add("nncf", "edgekit.quantize.nncf")


def methods() -> list[str]:
    return sorted(QUANTIZERS.names())


def get_quantizer(name: str) -> Quantizer:
    """A fresh quantizer of method ``name`` (InputError naming the known methods otherwise; a command maps it
    to its flag)."""
    return QUANTIZERS.get(name)()


def parse_components(text: str | None, param: str = "components") -> tuple[str, ...]:
    if text is None:
        return DEFAULT_COMPONENTS
    names = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not names:
        raise InputError(f"expected a comma-separated list of {list(QUANTIZABLE_COMPONENTS)}", param=param,
                         value=f"'{text}'")
    for name in names:
        if name not in QUANTIZABLE_COMPONENTS:
            hint = difflib.get_close_matches(name, QUANTIZABLE_COMPONENTS, n=1, cutoff=0.4)
            raise InputError(f"unknown component '{name}'; known: {list(QUANTIZABLE_COMPONENTS)}"
                             + (f" (did you mean '{hint[0]}'?)" if hint else ""), param=param)
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
        raise CalibrationError(f"no rows for '{component}' (has {calib.components()})", param="calibration",
                               value=calib.directory)
    for t in spec.inputs:
        captured = info.get("inputs", {}).get(t.name, {}).get("shape")
        expected = [int(d) for d in t.shape[1:]]
        if captured != expected:
            raise CalibrationError(f"{component} input '{t.name}' has shape {captured}, the model expects {expected}; "
                                   "re-run edgekit calibrate on this model", param="calibration", value=calib.directory)
    captured_width = calib.meta.get("width", calib.meta.get("config", {}).get("width"))
    wanted = 1.0 if width is None else float(width)
    if captured_width is not None and float(captured_width) != wanted:
        raise CalibrationError(f"captured at width {captured_width}, quantizing width {wanted}; re-run edgekit "
                               f"calibrate at width {wanted}", param="calibration", value=calib.directory)


def matches_any(path: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in patterns)


def quantize_component(pipe, name: str, rows: dict[str, np.ndarray], quantizer: Quantizer, options: QuantizeOptions,
                       root: Path, workdir: Path) -> tuple[ComponentArtifact, dict]:
    """Quantize component ``name`` of ``pipe`` with ``quantizer`` from its captured ``rows``: a seeded held-out
    split, the sensitivity ranking and float budget, the method's artifact under ``root``, and its error on the
    held-out rows. Returns (artifact, the record the quantize manifest keeps for it). The quantize stage and a
    target that quantizes on its own call this one function, so both make the same graph."""
    from edgekit.components import get_component, inputs_from_calibration, run_in_chunks, run_torch
    from edgekit.quality import relative_error
    from edgekit.quantize import sensitivity

    t0 = time.perf_counter()
    component = get_component(name)
    spec = component.spec(pipe)
    n = len(next(iter(rows.values())))
    calib_idx, held_idx = split_rows(n, options.holdout, options.seed)
    if len(calib_idx) > options.max_calib_rows:  # a seeded subset spread over all prompts and steps
        rng = np.random.default_rng(options.seed + 1)
        calib_idx = np.sort(rng.choice(calib_idx, options.max_calib_rows, replace=False))
    calib_inputs = inputs_from_calibration(spec, rows, calib_idx)
    held_inputs = inputs_from_calibration(spec, rows, held_idx)
    module = component.export_module(pipe)
    # a component past the full-ranking size runs its held-out rows one at a time (bounded memory)
    rows_per_call = 1 if sensitivity.measure_for(module) == "bounded" else None
    reference = run_in_chunks(lambda feeds: run_torch(module, spec, feeds), held_inputs, rows_per_call)

    sens_inputs = {k: v[: options.sensitivity_rows] for k, v in calib_inputs.items()}
    ranking = sensitivity.rank(module, spec, calib_inputs, sens_inputs, float_budget=options.float_budget)
    excluded = [u["unit"] for u in ranking if matches_any(u["unit"], options.exclude)]
    budgeted = sensitivity.select_float_units(ranking, options.float_budget, already=excluded)
    float_units = excluded + budgeted

    made = quantizer.quantize_component(pipe, name, calib_inputs, options, float_units, Path(root), Path(workdir))
    actual = run_in_chunks(made.run, held_inputs, rows_per_call)
    fp32_bytes = sensitivity.float_weight_bytes(module)
    int8_bytes = sum((Path(root) / f).stat().st_size for f in made.files)
    record = {
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
    if not np.isfinite(record["heldout_rel_err"]):
        raise CalibrationError(f"{name}: the {quantizer.name} model produced non-finite outputs on held-out rows")
    return made, record


def quantize_model(model_dir: Path, calib_dir: Path, method: str, out: Path, *,
                   components: tuple[str, ...] = DEFAULT_COMPONENTS, width: float | Width | None = None,
                   options: QuantizeOptions = QuantizeOptions(), progress=None) -> dict:
    """Quantize ``components`` of the model at ``model_dir`` with ``method``; write ``out`` atomically.

    Returns the manifest. Nothing is written when any check fails (staged directory)."""
    import tempfile

    from edgekit.calibration import CalibrationSet
    from edgekit.components import component_spec
    from edgekit.fsutil import out_of_space_names, staged_dir
    from edgekit.pipeline import load_pipeline
    from edgekit.quantize import artifact

    from edgekit.quantize.memory import check_memory

    quantizer = get_quantizer(method)
    quantizer.check_backend()
    model_dir = Path(model_dir)
    check_memory(quantizer, model_dir, components)
    if artifact.is_quantized(model_dir):
        raise InputError(f"{model_dir}: is already a quantized directory; quantize its float source")
    width = None if width is None else Width.parse(width)
    calib = CalibrationSet.open(calib_dir, model_dir)
    pipe = load_pipeline(model_dir, width=None if width is None else width.value)
    specs = {name: component_spec(pipe, name) for name in components}
    for name in components:
        check_calibration_matches(calib, specs[name], name, width)

    started = time.perf_counter()
    task = progress.add_task(f"quantize {method}", total=len(components)) if progress else None
    results = {}
    with out_of_space_names("quantize", Path(out)), staged_dir(out) as staging, tempfile.TemporaryDirectory() as tmp:
        artifact.copy_source(model_dir, staging)
        for name in components:
            if task is not None:
                progress.update(task, description=f"quantize {method}: {name}")
            _, results[name] = quantize_component(pipe, name, calib.load(name), quantizer, options, staging,
                                                  Path(tmp) / name)
            if task is not None:
                progress.update(task, advance=1)
        manifest = artifact.build_manifest(model_dir, calib, method, quantizer, options,
                                           None if width is None else width.value, results,
                                           seconds=time.perf_counter() - started)
        artifact.write_manifest(staging, manifest)
    return manifest
