"""What every target shares: the Target interface and ``export_bundle``, the one flow that loads each
width, exports every component through a target, checks it against torch, and writes the bundle
with its manifest last (edgekit.bundle).

A target only says how to write one component in its format, which runtimes check it here and which
components beyond the bundle's own it exports (``extra_components``); the components themselves come from
the registry (edgekit.components), and the tokenizer, scheduler tables, geometry, verification data and
manifest are the same for all.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgekit import __version__
from edgekit.bundle import FORMAT_VERSION, STAGE, save_array, write_manifest
from edgekit.components import Component, bundle_components, get_component
from edgekit.errors import CalibrationError, InputError, VerificationError
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


class Target:
    """One export format. Subclasses set the class attributes and implement ``write`` and ``check``."""

    name: ClassVar[str] = ""
    file_format: ClassVar[str] = ""  # manifest "format"; its runner class (edgekit.runtime.runners) runs it
    precisions: ClassVar[tuple[str, ...]] = ()
    # Components exported beyond those every bundle has (edgekit.components), e.g. ("vae_encoder",).
    extra_components: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""  # pip extra that installs its converter
    needs_calibration: ClassVar[tuple[str, ...]] = ("int8",)
    needs_fixed_shapes: ClassVar[bool] = False  # the converter wants every axis pinned
    takes_quantized_onnx: ClassVar[bool] = False  # int8 can ship the quantize stage's QDQ ONNX graphs as they are
    # a browser runs its bundles: `edgekit package` checks them in headless Chromium (profile verify_in_browser)
    browser_check: ClassVar[bool] = False

    def check_profile(self, profile: TargetProfile) -> None:
        """Raise InputError when the profile asks for something this target cannot do."""
        bad = [p for p in profile.precisions if p not in self.precisions]
        if bad:
            raise InputError(f"profile '{profile.name}': target {self.name} offers precisions "
                             f"{', '.join(self.precisions)}, not {', '.join(bad)}")
        if self.needs_fixed_shapes and not profile.fixed_shapes:
            raise InputError(f"profile '{profile.name}': {self.name} needs fixed_shapes: true")

    def created_with(self) -> dict:
        return {}

    def components(self) -> list[Component]:
        """What a bundle of this target holds, in manifest order."""
        return bundle_components(self.extra_components)

    def runner_class(self):
        """The runner class of this target's format (edgekit.runtime.runners.RUNNERS)."""
        from edgekit.runtime.runners import runner_class

        return runner_class(self.file_format)

    def runtime_missing(self) -> str | None:
        """Why this target's graphs cannot run on this machine (a table is then measured on a device), or None."""
        return self.runner_class().unavailable()

    def write(self, job: ComponentJob, stage: Path, profile: TargetProfile) -> dict:
        """Write the component under ``stage / job.rel_dir``; return its manifest entry (format, file,
        files, precision, layout, inputs, outputs; bytes are added by the caller)."""
        raise NotImplementedError

    def check(self, stage: Path, entry: dict, inputs: dict, expected: np.ndarray, profile: TargetProfile) -> list[dict]:
        """Run the written component in this target's runtimes here; one {runtime, rel_err, max_abs_err}
        per runtime, or {runtime, skipped: why} where no runtime can run it here."""
        raise NotImplementedError

    def lay_out(self, stage: Path, manifest: dict, jobs: list[ComponentJob], profile: TargetProfile) -> dict:
        """Write files derived from the finished components (e.g. another tool's directory layout) before
        the manifest lists every file; returns the manifest, possibly with more keys."""
        return manifest

    def finish(self, stage: Path, manifest: dict, profile: TargetProfile) -> dict:
        """A last whole-bundle check (e.g. onnxruntime-web); returns the manifest, possibly with more checks."""
        return manifest


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


def _tensor_dicts(specs, batch: int | None, dtype_override: dict | None = None) -> list[dict]:
    out = []
    for t in specs:
        d = t.to_dict()
        if batch is not None:
            d["shape"] = list(t.concrete(batch))
        if dtype_override and t.name in dtype_override:
            d["dtype"] = dtype_override[t.name]
        out.append(d)
    return out


def _write_tokenizer(pipe, model_dir: Path, stage: Path) -> dict:
    dst = stage / "tokenizer"
    src = model_dir / "tokenizer"
    shutil.copytree(src, dst)
    if not (dst / "tokenizer.json").is_file():  # the web reads tokenizer.json with its own library
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            pipe.tokenizer.save_pretrained(tmp)
            if (Path(tmp) / "tokenizer.json").is_file():
                shutil.copy(Path(tmp) / "tokenizer.json", dst / "tokenizer.json")
    tok = pipe.tokenizer
    files = sorted(p.relative_to(stage).as_posix() for p in dst.rglob("*") if p.is_file())
    return {"files": files, "tokenizer_json": "tokenizer/tokenizer.json" if (dst / "tokenizer.json").is_file() else None,
            "max_length": int(tok.model_max_length), "bos_id": int(tok.bos_token_id), "eos_id": int(tok.eos_token_id),
            "pad_id": int(tok.pad_token_id), "vocab_size": int(len(tok)), "padding": "max_length",
            "lowercase": True}


def _scheduler(pipe, stage: Path) -> dict:
    config = json.loads(json.dumps(_scheduler_config(pipe), default=list))
    (stage / "scheduler").mkdir()
    (stage / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return {"config": config, "file": "scheduler/scheduler_config.json"}


def _verification_inputs(pipe, name: str, rows: int, calib) -> tuple[dict, str]:
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


def export_bundle(request: ExportRequest, progress=None) -> dict:
    """Export, check and write a bundle; returns the manifest. Nothing is written unless all checks pass."""
    import torch

    from edgekit.calibration import CalibrationSet
    from edgekit.components import geometry, inputs_from_calibration, run_torch
    from edgekit.fsutil import check_output_path, staged_dir
    from edgekit.loader import open_model
    from edgekit.pipeline import check_model_dir
    from edgekit.schedule import GUIDANCE_CFG
    from edgekit.targets import get_target

    target = get_target(request.target)
    profile = request.profile
    if profile.target != target.name:
        raise InputError(f"is a profile for target '{profile.target}', not '{target.name}'", param="profile",
                         value=profile.name)
    target.check_profile(profile)
    model_dir = check_model_dir(request.model_dir)
    sampling = sampling_plan(model_dir, profile, request.steps, request.guidance)  # refuses a scheduler first
    precision = profile.precision
    protected = [model_dir] + ([Path(request.calib_dir)] if request.calib_dir else [])
    out = check_output_path(request.out, protected, force=request.force)
    signer = None
    if request.sign_key is not None:  # an unreadable key is refused before any work
        from edgekit.signing import load_private_key

        signer = load_private_key(request.sign_key)
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
    try:
        widths = tuple(dict.fromkeys(Width.parse(w) for w in request.widths))
    except WidthError as exc:
        raise InputError(f"export widths {list(request.widths)}: {exc}") from None
    if not widths:
        raise InputError("export widths: empty (expected at least one multiplier in (0, 1])")
    width_calib = _width_calibration(request, model_dir)
    quantized = _quantized_graphs(request, target, precision)

    started = time.perf_counter()
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
        step_cache = manifest_section(profile.cache_intervals, [int(k) for k in sampling["schedules"]],
                                      int(base.unet.config.out_channels))
    pipes = {w: (base if w.is_full else open_model(model_dir, width=w)) for w in widths}
    if profile.attention_downsample > 1:  # the export's own copies: torch reference and graph alike
        from edgekit.targets.attention_downsample import downsample_keys

        for pipe in {id(p): p for p in pipes.values()}.values():
            downsample = downsample_keys(pipe.unet, profile.attention_downsample,
                                         profile.attention_downsample_levels)
    fixed = profile.fixed_shapes
    unet_batch = profile.unet_batch if sampling["guidance_mode"] == GUIDANCE_CFG else 1  # one pass without CFG
    jobs = []
    from edgekit.components import CACHE_COMPONENTS

    extra = [get_component(n) for n in CACHE_COMPONENTS] if step_cache else []
    for comp in target.components() + extra:
        # a component calibration never captures ships in float where the bundle asks for INT8
        calibrated = comp.calibrated or comp.calibration_from is not None or comp.captures_own_rows
        job_precision = precision if calibrated or precision not in target.needs_calibration else "fp32"
        for w in (widths if comp.per_width else (None,)):
            batch = (unet_batch if comp.per_width else 1) if fixed else None
            jobs.append(ComponentJob(base if w is None else pipes[w], comp.name, w, comp.folder(w), batch,
                                     job_precision, prequantized=quantized.get((comp.name, w))))

    components: dict = {}
    verification: dict = {}
    task = progress.add_task(f"export {target.name}", total=len(jobs)) if progress else None
    from edgekit.locking import output_lock

    # one writer per --out (a second export or a bench of it is refused naming this one); the final rename
    # replaces only an earlier edgekit output, never what appeared at --out meanwhile without --force
    with output_lock(out, "edgekit export"), \
            staged_dir(out, force=request.force, new=not request.force) as stage:
        for job in jobs:
            if task is not None:
                progress.update(task, description=f"export {target.name}: {job.label}")
            comp = job.component
            spec = comp.spec(job.pipe)
            rows = job.batch or VERIFY_ROWS
            job_calib = calib
            rows_of = comp.calibration_from or job.name  # whose captured rows are this graph's inputs
            if (rows_of, job.width) in width_calib:  # rows captured at this width
                job_calib = {**(calib or {}), rows_of: width_calib[(rows_of, job.width)]}
            if rows_of != job.name and job_calib and rows_of in job_calib:
                job_calib = {**job_calib, job.name: job_calib[rows_of]}
            inputs, source = _verification_inputs(job.pipe, job.name, rows, job_calib)
            if job.precision in target.needs_calibration and comp.captures_own_rows:  # e.g. the cached trajectory
                job.calibration = inputs_from_calibration(spec, comp.own_rows(
                    job.pipe, calib_meta, profile.cache_intervals, CALIB_ROWS_INT8, sampling["guidance_scale"]))
                job.notes["calibrated_on"] = {"rows": len(job.calibration[spec.inputs[0].name]),
                                              "from": "captured by the export on the torch cached loop "
                                                      f"(intervals {list(profile.cache_intervals)[1:]}) over the "
                                                      "calibration's prompts, steps, guidance and seed"}
            elif job.precision in target.needs_calibration:
                if not job_calib or job.name not in job_calib:
                    raise CalibrationError(f"{request.calib_dir}: has no calibration rows for {job.name}")
                data = job_calib[job.name]
                n = len(next(iter(data.values())))
                index = np.linspace(0, n - 1, min(n, CALIB_ROWS_INT8)).round().astype(int)
                job.calibration = inputs_from_calibration(spec, data, index)
            expected = run_torch(comp.export_module(job.pipe), spec, inputs)
            t0 = time.perf_counter()
            entry = target.write(job, stage, profile)
            entry["export_s"] = round(time.perf_counter() - t0, 2)
            entry["bytes"] = sum((stage / f).stat().st_size if (stage / f).is_file()
                                 else sum(p.stat().st_size for p in (stage / f).rglob("*") if p.is_file())
                                 for f in entry["files"])
            if comp.counts_params:
                entry["params"] = int(sum(p.numel() for p in comp.torch_module(job.pipe).parameters()))
            comp.check_entry(job.pipe, entry, job.label)
            entry.update(job.notes)
            if downsample is not None and comp.per_width:
                entry["attention_downsample"] = downsample
            key = job.rel_dir.replace("/", "_")
            data = {"inputs": {n: save_array(stage, f"verification/{key}/{n}.bin", v) for n, v in inputs.items()},
                    "expected": save_array(stage, f"verification/{key}/expected.bin", expected)}
            tolerance = profile.tolerance.for_precision(job.precision)
            checks = target.check(stage, entry, inputs, expected, profile)
            label = job.label
            for c in checks:
                if "rel_err" in c and not (np.isfinite(c["rel_err"]) and c["rel_err"] <= tolerance):
                    raise VerificationError(f"{label}: {c['runtime']} output differs from torch: rel-err "
                                            f"{c['rel_err']:.3g} > tolerance {tolerance:.3g} for {job.precision} "
                                            f"(max abs {c['max_abs_err']:.3g})")
            record = {"reference": f"torch {torch.__version__} fp32", "inputs_from": source, "rows": rows,
                      "tolerance": tolerance, "checks": checks, "data": data}
            if comp.per_width:
                components.setdefault(job.name, {"widths": {}})["widths"][job.width.key] = entry
                verification.setdefault(job.name, {"widths": {}})["widths"][job.width.key] = record
            else:
                components[job.name] = entry
                verification[job.name] = record
            if task is not None:
                progress.update(task, advance=1)

        manifest = {
            "format_version": FORMAT_VERSION,
            "stage": STAGE,
            "target": target.name,
            "profile": profile.to_dict(),
            "created_with": {"edgekit": __version__, "torch": torch.__version__, **target.created_with()},
            "source_model": _source_model(model_dir, request.calib_dir),
            "precision": precision,
            "components": components,
            "widths": [w.value for w in widths],
            "geometry": geometry(base),
            "tokenizer": _write_tokenizer(base, model_dir, stage),
            "scheduler": _scheduler(base, stage),
            "sampling": {**sampling, "batching": profile.guidance_batching if unet_batch == profile.unet_batch
                         else "two-calls", **({"step_cache": step_cache} if step_cache else {})},
            "verification": verification,
            "table": [],
            "policy": {},
            "files": {},
        }
        manifest = target.lay_out(stage, manifest, jobs, profile)
        write_manifest(stage, manifest)  # the whole-bundle check below reads it like a device would
        manifest = target.finish(stage, manifest, profile)
        manifest["created_with"]["export_s"] = round(time.perf_counter() - started, 1)
        manifest = write_manifest(stage, manifest)
        if signer is not None:
            from edgekit.signing import write_signature

            write_signature(stage, manifest, signer)
    return manifest


def _source_model(model_dir: Path, calib_dir: Path | None) -> dict:
    """Where the bundle came from, by name and content hash: no path of the packaging host travels with it."""
    from edgekit.fsutil import sha256_file, sha256_tree

    calibration = None
    if calib_dir is not None:
        from edgekit.constants import CALIB_META

        calibration = {"name": Path(calib_dir).resolve().name,
                       "meta_sha256": sha256_file(Path(calib_dir) / CALIB_META)}
    from edgekit.lora import lora_record

    lora = lora_record(model_dir)  # a model with LoRAs fused in (--lora): the base model and each LoRA's sha256
    extra = {"base_model": lora["base_model"], "loras": lora["loras"]} if lora else {}
    return {"name": Path(model_dir).resolve().name, "sha256": sha256_tree(model_dir), "calibration": calibration,
            **extra}


def sampling_plan(model_dir: Path, profile: TargetProfile, steps=None, guidance: float | None = None) -> dict:
    """The manifest's "sampling" (less batching): guidance scale and mode, the guidance embedding an
    LCM-style UNet takes, the default step count and one schedule table per step count. Reads only small
    files (the scheduler and UNet configs), so an unsupported scheduler or step count is refused before
    any export work. Step counts: ``steps``, else the model's edgekit_defaults.json "offered_steps", else
    the profile's plus the model's default."""
    import math

    from edgekit.pipeline import check_scheduler_steps, sampling_defaults, scheduler_config
    from edgekit.schedule import GUIDANCE_EMBEDDING, check_supported, guidance_embedding, guidance_mode, schedule_table

    config = scheduler_config(model_dir)
    check_supported(config, f"{Path(model_dir) / 'scheduler' / 'scheduler_config.json'}")
    defaults = sampling_defaults(model_dir)
    if guidance is not None and not (isinstance(guidance, (int, float)) and math.isfinite(guidance)):
        raise InputError("expected a finite number", param="guidance", value=guidance)
    scale = float(defaults.guidance_scale if guidance is None else guidance)
    counts = tuple(steps) if steps else (defaults.offered_steps or tuple(profile.steps) + (defaults.steps,))
    for s in counts:  # a count the scheduler cannot take (NaN latents, beyond its training steps) is named now
        check_scheduler_steps(config, s, "--steps" if steps else "steps")
    counts = sorted(set(counts))
    default_steps = defaults.steps if defaults.steps in counts else max(counts)
    unet_config = Path(model_dir) / "unet" / "config.json"
    dim = json.loads(unet_config.read_text()).get("time_cond_proj_dim") if unet_config.is_file() else None
    mode = guidance_mode(scale, dim)
    out = {"guidance_scale": scale, "guidance_mode": mode, "default_steps": default_steps,
           "noise": _noise_name(), "schedules": {str(s): schedule_table(config, s) for s in counts}}
    if mode == GUIDANCE_EMBEDDING:
        out["guidance_embedding"] = {"input": "timestep_cond", "dim": int(dim),
                                     "values": [float(v) for v in guidance_embedding(scale, int(dim))]}
    return out


def _noise_name() -> str:
    from edgekit.noise import NAME

    return NAME


def _width_calibration(request: ExportRequest, model_dir: Path) -> dict:
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


def _quantized_graphs(request: ExportRequest, target: Target, precision: str) -> dict:
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


def _scheduler_config(pipe) -> dict:
    config = dict(pipe.scheduler.config)
    config["_class_name"] = type(pipe.scheduler).__name__
    return config
