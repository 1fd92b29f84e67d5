"""What an export works on before any graph is written: the request, the model opened once per width, and one
``ComponentJob`` per graph with the rows it is fed (verification inputs, representative rows for INT8, a
quantize-stage graph, its INT8 recipe plan). ``export_bundle`` and the recipe planner (edgekit.targets.recipes)
both build their jobs here, so a recipe planned apart is planned on exactly what the export would use."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.components import Component, bundle_components, get_component
from edgekit.errors import CalibrationError, InputError
from edgekit.profiles import TargetProfile
from edgekit.width import Width, WidthError

VERIFY_ROWS = 2  # rows of stored verification data per component (a dynamic-batch graph gets 2)
CALIB_ROWS_INT8 = 64  # representative rows per component for full-integer INT8


@dataclass
class ComponentJob:
    """One graph to write: component ``name`` at ``width`` into ``rel_dir`` of the bundle."""

    pipe: object
    name: str
    width: Width | None  # None for a component exported once (not per width)
    rel_dir: str
    batch: int | None  # fixed batch size, or None for a dynamic batch axis
    precision: str
    calibration: dict | None = None  # spec-named input arrays (representative data), INT8 only
    prequantized: Path | None = None  # an INT8 ONNX graph the quantize stage already made for this job
    recipe: dict | None = None  # this graph's plan from the INT8 recipe (edgekit.targets.recipes), applied as it is
    notes: dict = field(default_factory=dict)

    @property
    def component(self) -> Component:
        return get_component(self.name)

    @property
    def label(self) -> str:
        """``unet@0.50`` or ``text_encoder``: how messages and verification results name the job."""
        return self.component.label(self.width)

    def output_dir(self, stage: Path) -> Path:
        """The job's folder inside the staging bundle, created."""
        folder = stage / self.rel_dir
        folder.mkdir(parents=True, exist_ok=True)
        return folder


@dataclass(frozen=True)
class ExportRequest:
    model_dir: Path
    out: Path
    target: str
    profile: TargetProfile
    widths: tuple = (1.0,)  # Width spellings (floats, Width, "0.50")
    calib_dir: Path | None = None
    force: bool = False
    # Per-width UNet rows captured at that width (edgekit calibrate --width W); other rows come from calib_dir.
    unet_calib_dirs: tuple[tuple, ...] = ()  # (width, dir) pairs
    # Per-width outputs of the quantize stage (edgekit quantize, an ONNX method): targets that take QDQ ONNX
    # ship those graphs for int8 (the text encoder and VAE decoder from the widest one).
    quantized_dirs: tuple[tuple, ...] = ()  # (width, dir) pairs
    # Step counts whose schedules the bundle carries (replacing the profile's and the model's own lists) and
    # the guidance scale it samples at; None: the model's edgekit_defaults.json, else the profile's / diffusers'.
    steps: tuple[int, ...] | None = None
    guidance: float | None = None
    # An Ed25519 private key (PEM, edgekit keygen): the bundle ships manifest.sig, a signature of its integrity
    # record (edgekit.signing), written in the staging directory with the manifest.
    sign_key: Path | None = None
    # Per-width INT8 recipe files (edgekit.targets.recipes, planned by Target.plan_recipe): applied as they are,
    # refused when stale. Empty where the target takes a recipe: the export plans them itself.
    recipes: tuple[tuple, ...] = ()  # (width, path) pairs


@dataclass
class ExportSetup:
    """The request checked and opened: calibration, widths, the model per width and the jobs, in bundle order."""

    request: ExportRequest
    target: object  # the Target writing the jobs
    model_dir: Path
    sampling: dict
    widths: tuple[Width, ...]
    calib: dict | None
    calib_meta: dict
    width_calib: dict
    base: object  # the full-width pipeline (components exported once come from it)
    pipes: dict
    downsample: dict | None
    step_cache: dict | None
    unet_batch: int
    jobs: list[ComponentJob]


def parse_widths(request: ExportRequest) -> tuple[Width, ...]:
    try:
        widths = tuple(dict.fromkeys(Width.parse(w) for w in request.widths))
    except WidthError as exc:
        raise InputError(f"export widths {list(request.widths)}: {exc}") from None
    if not widths:
        raise InputError("export widths: empty (expected at least one multiplier in (0, 1])")
    return widths


def open_export(request: ExportRequest, target, model_dir: Path, sampling: dict,
                only_width: Width | None = None) -> ExportSetup:
    """Calibration, widths and the model opened per width, then one job per graph the target writes.
    ``only_width``: open only that width (the recipe planner); the components exported once are still listed."""
    from edgekit.calibration import CalibrationSet
    from edgekit.components import CACHE_COMPONENTS
    from edgekit.loader import open_model
    from edgekit.schedule import GUIDANCE_CFG

    profile = request.profile
    precision = profile.precision
    calib = None
    calib_meta: dict = {}
    if precision in target.needs_calibration:
        if request.calib_dir is None:
            raise CalibrationError("needs {calibration} (representative data from edgekit calibrate)",
                                   param="precision", value=precision, mentions=("calibration",))
    if request.calib_dir is not None:
        cset = CalibrationSet.open(request.calib_dir, model_dir)
        calib = {c: cset.load(c) for c in cset.components()}
        calib_meta = cset.meta
    widths = parse_widths(request)
    width_calib = width_calibration(request, model_dir)
    quantized = quantized_graphs(request, target, precision)

    base = open_model(model_dir)  # the components not exported per width are the same at every width
    downsample = None
    if profile.attention_downsample > 1:  # refused before any width is opened or anything exported
        from edgekit.targets.attention_downsample import check_downsample

        check_downsample(base.unet, profile.attention_downsample, profile.attention_downsample_levels,
                         base.unet.config.sample_size)
    step_cache = None
    if profile.cache_intervals != (1,):  # refused before any width is opened or anything exported
        from edgekit.step_cache import check_cacheable, manifest_section

        check_cacheable(base.unet)
        # one plan role per UNet call of each schedule table (a PNDM table makes steps + 1 calls)
        step_cache = manifest_section(profile.cache_intervals,
                                      {int(k): len(table["timesteps"]) for k, table in sampling["schedules"].items()},
                                      int(base.unet.config.out_channels))
    opened = widths if only_width is None else (only_width,)
    pipes = {w: (base if w.is_full else open_model(model_dir, width=w)) for w in opened}
    if profile.attention_downsample > 1:  # the export's own copies: torch reference and graph alike
        from edgekit.targets.attention_downsample import downsample_keys

        for pipe in {id(p): p for p in pipes.values()}.values():
            downsample = downsample_keys(pipe.unet, profile.attention_downsample,
                                         profile.attention_downsample_levels)
    fixed = profile.fixed_shapes
    unet_batch = profile.unet_batch if sampling["guidance_mode"] == GUIDANCE_CFG else 1  # one pass without CFG
    jobs = []
    extra = [get_component(n) for n in CACHE_COMPONENTS] if step_cache else []
    for comp in target.components() + extra:
        # a component calibration never captures ships in float where the bundle asks for INT8
        calibrated = comp.calibrated or comp.calibration_from is not None or comp.captures_own_rows
        job_precision = precision if calibrated or precision not in target.needs_calibration else "fp32"
        for w in (opened if comp.per_width else (None,)):
            batch = (unet_batch if comp.per_width else 1) if fixed else None
            jobs.append(ComponentJob(base if w is None else pipes[w], comp.name, w, comp.folder(w), batch,
                                     job_precision, prequantized=quantized.get((comp.name, w))))
    return ExportSetup(request, target, model_dir, sampling, widths, calib, calib_meta, width_calib, base, pipes,
                       downsample, step_cache, unet_batch, jobs)


def feed(setup: ExportSetup, job: ComponentJob) -> tuple[dict, str]:
    """The job's verification inputs and where they came from; sets ``job.calibration`` (its representative
    rows) where its precision is calibrated."""
    from edgekit.components import inputs_from_calibration

    request, profile, calib = setup.request, setup.request.profile, setup.calib
    target_needs = setup.target.needs_calibration
    comp = job.component
    spec = comp.spec(job.pipe)
    rows = job.batch or VERIFY_ROWS
    job_calib = calib
    rows_of = comp.calibration_from or job.name  # whose captured rows are this graph's inputs
    if (rows_of, job.width) in setup.width_calib:  # rows captured at this width
        job_calib = {**(calib or {}), rows_of: setup.width_calib[(rows_of, job.width)]}
    if rows_of != job.name and job_calib and rows_of in job_calib:
        job_calib = {**job_calib, job.name: job_calib[rows_of]}
    inputs, source = verification_inputs(job.pipe, job.name, rows, job_calib)
    if job.precision in target_needs and comp.captures_own_rows:  # e.g. the cached trajectory
        job.calibration = inputs_from_calibration(spec, comp.own_rows(
            job.pipe, setup.calib_meta, profile.cache_intervals, CALIB_ROWS_INT8, setup.sampling["guidance_scale"]))
        job.notes["calibrated_on"] = {"rows": len(job.calibration[spec.inputs[0].name]),
                                      "from": "captured by the export on the torch cached loop "
                                              f"(intervals {list(profile.cache_intervals)[1:]}) over the "
                                              "calibration's prompts, steps, guidance and seed"}
    elif job.precision in target_needs:
        if not job_calib or job.name not in job_calib:
            raise CalibrationError(f"{request.calib_dir}: has no calibration rows for {job.name}")
        data = job_calib[job.name]
        n = len(next(iter(data.values())))
        index = np.linspace(0, n - 1, min(n, CALIB_ROWS_INT8)).round().astype(int)
        job.calibration = inputs_from_calibration(spec, data, index)
    return inputs, source


def verification_inputs(pipe, name: str, rows: int, calib) -> tuple[dict, str]:
    from edgekit.components import component_spec, example_inputs, inputs_from_calibration

    spec = component_spec(pipe, name)
    if calib is not None and name in calib:
        data = calib[name]
        n = len(next(iter(data.values())))
        if n >= rows:
            # spread over the captured rows (different steps/prompts) rather than the first few
            index = np.linspace(0, n - 1, rows).round().astype(int)
            return inputs_from_calibration(spec, data, index), "calibration rows"
    return example_inputs(pipe, name, batch=rows, seed=1), "random inputs of the spec's shapes"


def width_calibration(request: ExportRequest, model_dir: Path) -> dict:
    """(per-width component, Width) -> its rows captured at that width (request.unet_calib_dirs)."""
    from edgekit.calibration import CalibrationSet

    rows = {}
    for width, directory in request.unet_calib_dirs:
        width = Width.parse(width)
        cset = CalibrationSet.open(directory, model_dir)
        captured = Width.parse(cset.meta.get("width") or 1.0)
        if captured != width:
            raise CalibrationError(f"{directory}: captured at width {captured}, listed for the width {width} "
                                   f"components; capture calibration rows at width {width}")
        for comp in bundle_components():
            if comp.per_width and comp.calibrated:
                rows[(comp.name, width)] = cset.load(comp.name)
    return rows


def quantized_graphs(request: ExportRequest, target, precision: str) -> dict:
    """(component, width or None) -> the quantize stage's QDQ ONNX graph, where this target ships them."""
    if not request.quantized_dirs or precision != "int8" or not target.takes_quantized_onnx:
        return {}
    from edgekit.quantize.artifact import QUANTIZED_DIR, read_manifest

    graphs = {}
    widest = max(Width.parse(w) for w, _ in request.quantized_dirs)
    for width, directory in request.quantized_dirs:
        width = Width.parse(width)
        manifest = read_manifest(Path(directory))
        if Width.parse(manifest.get("width", 1.0)) != width:
            raise InputError(f"{directory}: quantized at width {manifest.get('width')}, listed for width {width}")
        for name, info in manifest["components"].items():
            if info["kind"] != "onnx":
                raise InputError(f"{directory}: {name} was quantized by '{manifest['method']}' into "
                                 f"{info['kind']}, not an ONNX graph {target.name} can ship")
            path = Path(directory) / QUANTIZED_DIR / name / Path(info["files"][0]).name
            if get_component(name).per_width:
                graphs[(name, width)] = path
            elif width == widest:  # the components shared by every width: from the widest one
                graphs[(name, None)] = path
    return graphs
