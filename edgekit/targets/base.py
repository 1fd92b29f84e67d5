"""What every target shares: the Target interface and ``export_bundle``, the one flow that loads each
width, exports every component through a target, checks it against torch, and writes the bundle
with its manifest last (edgekit.bundle).

A target only says how to write one component in its format, which runtimes check it here and which
components beyond the bundle's own it exports (``extra_components``); the components themselves come from
the registry (edgekit.components), and the tokenizer, scheduler tables, geometry, verification data and
manifest are the same for all.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgekit import __version__
from edgekit.bundle import FORMAT_VERSION, STAGE, save_array, write_manifest
from edgekit.components import Component, bundle_components
from edgekit.errors import InputError, VerificationError
from edgekit.profiles import TargetProfile
# the job and request types live with the code that builds jobs (edgekit.targets.jobs); the targets and callers
# name them from here, beside the Target they are written by
from edgekit.targets.bundle_parts import sampling_plan
from edgekit.targets.jobs import CALIB_ROWS_INT8, VERIFY_ROWS, ComponentJob, ExportRequest

__all__ = ["CALIB_ROWS_INT8", "VERIFY_ROWS", "ComponentJob", "ExportRequest", "Target", "export_bundle",
           "sampling_plan"]


class Target:
    """One export format. Subclasses set the class attributes and implement ``write`` and ``check``."""

    name: ClassVar[str] = ""
    file_format: ClassVar[str] = ""  # manifest "format"; its runner class (edgekit.runtime.runners) runs it
    precisions: ClassVar[tuple[str, ...]] = ()
    # Components exported beyond those every bundle has (edgekit.components), e.g. the VAE encoder.
    extra_components: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str] = ""  # pip extra that installs its converter
    needs_calibration: ClassVar[tuple[str, ...]] = ("int8",)
    needs_fixed_shapes: ClassVar[bool] = False  # the converter wants every axis pinned
    takes_quantized_onnx: ClassVar[bool] = False  # int8 can ship the quantize stage's QDQ ONNX graphs as they are
    # a browser runs its bundles: `edgekit package` checks them in headless Chromium (profile verify_in_browser)
    browser_check: ClassVar[bool] = False
    # precisions whose INT8 recipe is an analysis of the model on calibration rows, planned apart and applied by
    # the export as it is (edgekit.targets.recipes)
    recipe_precisions: ClassVar[tuple[str, ...]] = ()

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

    def needs_recipe(self, profile: TargetProfile) -> bool:
        """Whether an export at the profile's precision applies an INT8 recipe (one per width)."""
        return profile.precision in self.recipe_precisions

    def plan_recipe(self, request: ExportRequest, width) -> dict:
        """The INT8 recipe of one width of ``request`` (edgekit.targets.recipes.plan_recipe)."""
        from edgekit.targets.recipes import plan_recipe

        return plan_recipe(self, request, width)

    def takes_plan(self, job: ComponentJob, profile: TargetProfile) -> bool:
        """Whether ``job``'s graph gets a plan from the recipe (plan_job returns one for it)."""
        return False

    def plan_job(self, job: ComponentJob, profile: TargetProfile) -> dict | None:
        """The analysis of one graph on its representative rows (``job.calibration``): its JSON plan."""
        return None

    def recipe_fields(self, profile: TargetProfile) -> dict:
        """The profile fields a recipe's plans read: a recipe planned under other values is stale."""
        return {}

    def int8_route(self, job: ComponentJob, profile: TargetProfile) -> str | None:
        """How this graph got its reduced precision, as the manifest entry names it; None for float."""
        if job.precision in ("fp32", "fp16"):
            return None
        if job.recipe is not None:  # the export notes the bundle file the plan came from
            return " ".join(["recipe", job.notes.get("recipe_file", "")]).strip()
        return f"{self.name} converter ({job.precision})"

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





def export_bundle(request: ExportRequest, progress=None) -> dict:
    """Export, check and write a bundle; returns the manifest. Nothing is written unless all checks pass."""
    import torch

    from edgekit.components import geometry, run_torch
    from edgekit.fsutil import staged_dir
    from edgekit.output_checks import check_output_path
    from edgekit.modeldir import ModelDir
    from edgekit.targets import get_target
    from edgekit.targets.bundle_parts import source_model, write_scheduler, write_tokenizer
    from edgekit.targets.jobs import feed, open_export

    target = get_target(request.target)
    profile = request.profile
    if profile.target != target.name:
        raise InputError(f"is a profile for target '{profile.target}', not '{target.name}'", param="profile",
                         value=profile.name)
    target.check_profile(profile)
    model = ModelDir.of(request.model_dir)  # opened once: its configs, defaults and sha256 read once per process
    model_dir = model.path
    sampling = sampling_plan(model, profile, request.steps, request.guidance)  # refuses a scheduler first
    precision = profile.precision
    protected = [model_dir] + ([Path(request.calib_dir)] if request.calib_dir else [])
    out = check_output_path(request.out, protected, force=request.force)
    signer = None
    if request.sign_key is not None:  # an unreadable key is refused before any work
        from edgekit.signing import load_private_key

        signer = load_private_key(request.sign_key)
    if request.recipes and not target.needs_recipe(profile):
        raise InputError(f"{target.name} at {precision} applies no INT8 recipe", param="recipe")
    started = time.perf_counter()
    setup = open_export(request, target, model_dir, sampling)
    sha256 = model.sha256
    recipes = _Recipes(target, request, setup, sha256) if target.needs_recipe(profile) else None

    components: dict = {}
    verification: dict = {}
    task = progress.add_task(f"export {target.name}", total=len(setup.jobs)) if progress else None
    from edgekit.locking import output_lock

    # one writer per --out (a second export or a bench of it is refused naming this one); the final rename
    # replaces only an earlier edgekit output, never what appeared at --out meanwhile without --force
    with output_lock(out, "edgekit export"), \
            staged_dir(out, force=request.force, new=not request.force) as stage:
        for job in setup.jobs:
            if task is not None:
                progress.update(task, description=f"export {target.name}: {job.label}")
            comp = job.component
            spec = comp.spec(job.pipe)
            inputs, source = feed(setup, job)
            if recipes is not None and target.takes_plan(job, profile):
                recipes.attach(job)
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
            route = target.int8_route(job, profile)
            job.notes.pop("recipe_file", None)
            entry.update(job.notes)
            if route is not None:
                entry["int8_route"] = route
            if setup.downsample is not None and comp.per_width:
                entry["attention_downsample"] = setup.downsample
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
            record = {"reference": f"torch {torch.__version__} fp32", "inputs_from": source, "rows": job.batch or VERIFY_ROWS,
                      "tolerance": tolerance, "checks": checks, "data": data}
            if comp.per_width:
                components.setdefault(job.name, {"widths": {}})["widths"][job.width.key] = entry
                verification.setdefault(job.name, {"widths": {}})["widths"][job.width.key] = record
            else:
                components[job.name] = entry
                verification[job.name] = record
            if task is not None:
                progress.update(task, advance=1)
        if recipes is not None:
            recipes.write(stage)

        base = setup.base
        manifest = {
            "format_version": FORMAT_VERSION,
            "stage": STAGE,
            "target": target.name,
            "profile": profile.to_dict(),
            "created_with": {"edgekit": __version__, "torch": torch.__version__, **target.created_with()},
            "source_model": source_model(model_dir, request.calib_dir, sha256),
            "precision": precision,
            "components": components,
            "widths": [w.value for w in setup.widths],
            "geometry": geometry(base),
            "tokenizer": write_tokenizer(base, model_dir, stage),
            "scheduler": write_scheduler(base, stage),
            "sampling": {**sampling, "batching": profile.guidance_batching if setup.unet_batch == profile.unet_batch
                         else "two-calls", **({"step_cache": setup.step_cache} if setup.step_cache else {})},
            "verification": verification,
            "table": [],
            "policy": {},
            "files": {},
        }
        manifest = target.lay_out(stage, manifest, setup.jobs, profile)
        write_manifest(stage, manifest)  # the whole-bundle check below reads it like a device would
        manifest = target.finish(stage, manifest, profile)
        manifest["created_with"]["export_s"] = round(time.perf_counter() - started, 1)
        manifest = write_manifest(stage, manifest)
        if signer is not None:
            from edgekit.signing import write_signature

            write_signature(stage, manifest, signer)
    return manifest


class _Recipes:
    """The export's INT8 recipes, one per width: the request's files, each checked against what this export
    would plan from (a stale one is refused before any graph is written), or planned here on each job's rows as
    the export reaches it. Written into the bundle as recipes/w<width>.json."""

    def __init__(self, target: Target, request: ExportRequest, setup, sha256: str) -> None:
        from edgekit.targets.recipes import check_fresh, given_recipes, new_recipe, recipe_inputs

        self.target, self.profile = target, request.profile
        self.widest = max(setup.widths)
        given = given_recipes(request)
        self.planned = not given
        self.recipes, self.sources = {}, {}
        for width in setup.widths:
            expected = recipe_inputs(target, request, sha256, width, width == self.widest, setup.sampling)
            if self.planned:
                self.recipes[width] = new_recipe(expected)
                continue
            if width not in given:
                raise InputError(f"no recipe for width {width.key} (given: {', '.join(w.key for w in given)})",
                                 param="recipe")
            path, recipe = given[width]
            check_fresh(path, recipe, expected)
            self.recipes[width], self.sources[width] = recipe, path
        extra = sorted(w.key for w in set(given) - set(setup.widths))
        if extra:
            raise InputError(f"recipes for widths {', '.join(extra)}, which this export does not write", param="recipe")

    def attach(self, job: ComponentJob) -> None:
        """Give ``job`` its plan: planned now on its rows, or the given recipe's (refused when it has none)."""
        from edgekit.targets.recipes import bundle_path, plan_into

        width = job.width or self.widest
        recipe = self.recipes[width]
        if self.planned:
            plan_into(recipe, self.target, job, self.profile)
        if job.name not in recipe["components"]:
            raise InputError(f"{self.sources[width]}: holds no plan for {job.label}; plan the recipe again",
                             param="recipe")
        job.recipe = recipe["components"][job.name]
        job.notes["recipe_file"] = bundle_path(width)

    def write(self, stage: Path) -> None:
        from edgekit.targets.recipes import bundle_path, write_recipe

        for width, recipe in self.recipes.items():
            write_recipe(stage / bundle_path(width), recipe)
