"""INT8 recipes as artifacts: analysis -> recipe JSON -> apply (the pattern of the mixed-bit pre-analysis of
Apple's ml-stable-diffusion). Where a target's INT8 needs an analysis of the model on calibration rows (LiteRT's
unit ranking, Core ML's per-layer palette bits or activation ranges), ``plan_recipe`` runs it for one width and
returns a JSON-serializable recipe; the export applies it as it is. The recipe records what it was planned from
(the model's sha256, the width, the calibration's digests and the profile fields the plan reads), so an export
refuses a recipe planned from anything else in one line instead of shipping it.

One file per width; the widest width's recipe also holds the plans of the components exported once (text
encoder, VAE). A bundle carries the recipes it applied as ``recipes/w<width>.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from edgekit.errors import InputError
from edgekit.width import Width

RECIPE_FORMAT = "edgekit-int8-recipe/1"
RECIPE_DIR = "recipes"  # in a bundle: the recipes its export applied


def bundle_path(width: Width) -> str:
    """Where a bundle carries the recipe of ``width``: ``recipes/w1.00.json``."""
    return f"{RECIPE_DIR}/{width.tag}.json"


def recipe_inputs(target, request, model_sha256: str, width: Width, shared: bool, sampling: dict) -> dict:
    """What a recipe is planned from; an export recomputes it and refuses a recipe whose record differs."""
    from edgekit.constants import CALIB_META
    from edgekit.fsutil import sha256_file

    def digest(directory) -> str | None:
        return sha256_file(Path(directory) / CALIB_META) if directory is not None else None

    width_dirs = [d for w, d in request.unet_calib_dirs if Width.parse(w) == width]
    profile = request.profile
    return {"target": target.name, "precision": profile.precision, "model_sha256": model_sha256,
            "width": width.key, "shared": shared,
            "calibration": {"rows": digest(request.calib_dir), "width_rows": digest(width_dirs[0]) if width_dirs else None},
            "profile": {**target.recipe_fields(profile), "attention_downsample": profile.attention_downsample,
                        "attention_downsample_levels": profile.attention_downsample_levels,
                        "cache_intervals": list(profile.cache_intervals), "fixed_shapes": profile.fixed_shapes,
                        "unet_batch": profile.unet_batch, "guidance_scale": sampling["guidance_scale"]}}


def new_recipe(inputs: dict) -> dict:
    return {"format": RECIPE_FORMAT, "target": inputs["target"], "precision": inputs["precision"],
            "width": inputs["width"], "inputs": inputs, "components": {}, "planned_s": 0.0}


def plan_into(recipe: dict, target, job, profile) -> None:
    """Run the target's analysis for ``job`` (fed: its representative rows set) and add its plan to ``recipe``."""
    t0 = time.perf_counter()
    plan = target.plan_job(job, profile)
    if plan is not None:
        recipe["components"][job.name] = json.loads(json.dumps(plan))  # as a file would give it back
    recipe["planned_s"] = round(recipe["planned_s"] + time.perf_counter() - t0, 2)


def plan_recipe(target, request, width) -> dict:
    """The recipe of one width of ``request`` (the request its export will get): the target's analysis of every
    graph of that width that takes a plan (and of the components exported once, at the widest width)."""
    from edgekit.modeldir import ModelDir
    from edgekit.targets.bundle_parts import sampling_plan
    from edgekit.targets.jobs import feed, open_export, parse_widths

    profile = request.profile
    check_request(target, request)
    model = ModelDir.of(request.model_dir)
    sampling = sampling_plan(model, profile, request.steps, request.guidance)
    widths = parse_widths(request)
    width = Width.parse(width)
    if width not in widths:
        raise InputError(f"expected one of the request's widths {', '.join(w.key for w in widths)}", param="width",
                         value=width.key)
    shared = width == max(widths)
    setup = open_export(request, target, model.path, sampling, only_width=width)
    recipe = new_recipe(recipe_inputs(target, request, model.sha256, width, shared, sampling))
    for job in setup.jobs:
        if (job.width is None and not shared) or not target.takes_plan(job, profile):
            continue
        feed(setup, job)
        plan_into(recipe, target, job, profile)
    return recipe


def check_request(target, request) -> None:
    profile = request.profile
    if profile.target != target.name:
        raise InputError(f"is a profile for target '{profile.target}', not '{target.name}'", param="profile",
                         value=profile.name)
    target.check_profile(profile)
    if not target.needs_recipe(profile):
        raise InputError(f"{target.name} takes an INT8 recipe at {', '.join(target.recipe_precisions) or 'no precision'}, "
                         f"not {profile.precision}", param="precision", value=profile.precision)


def write_recipe(path: Path, recipe: dict) -> Path:
    """Write ``recipe`` to ``path`` atomically (a reader never sees half a recipe)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(recipe, indent=1) + "\n")
    tmp.replace(path)
    return path


def read_recipe(path: Path) -> dict:
    """A recipe file parsed and its shape checked; a missing or malformed one is one InputError naming it."""
    from edgekit.safe_read import read_json

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such recipe file (plan it with the export, or `edgekit package`)", param="recipe")
    recipe = read_json(path, "INT8 recipe", param="recipe")
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        got = recipe.get("format") if isinstance(recipe, dict) else type(recipe).__name__
        raise InputError(f"{path}: format {got!r}, expected {RECIPE_FORMAT!r} (not an edgekit INT8 recipe, or one "
                         "from another edgekit)", param="recipe")
    for key, kind in (("inputs", dict), ("components", dict), ("width", str), ("target", str)):
        if not isinstance(recipe.get(key), kind):
            raise InputError(f"{path}: '{key}' missing or not a {kind.__name__}", param="recipe")
    return recipe


def check_fresh(path: Path, recipe: dict, expected: dict) -> None:
    """Refuse a recipe planned from other inputs than this export's, naming the first that differs."""
    got = recipe["inputs"]
    for key, want in expected.items():
        if isinstance(want, dict) and isinstance(got.get(key), dict):
            for sub, value in want.items():
                if got[key].get(sub) != value:
                    raise InputError(f"{path}: stale: planned for {key}.{sub} {got[key].get(sub)!r}, this export has "
                                     f"{value!r}; plan the recipe again", param="recipe")
        elif got.get(key) != want:
            raise InputError(f"{path}: stale: planned for {key} {got.get(key)!r}, this export has {want!r}; plan "
                             "the recipe again", param="recipe")


def given_recipes(request) -> dict:
    """Width -> (path, recipe) of the request's recipe files, each read and checked for shape."""
    out = {}
    for width, path in request.recipes:
        width = Width.parse(width)
        if width in out:
            raise InputError(f"{path}: a second recipe for width {width.key}", param="recipe")
        recipe = read_recipe(path)
        if recipe["width"] != width.key:
            raise InputError(f"{path}: planned for width {recipe['width']}, given for width {width.key}", param="recipe")
        out[width] = (Path(path), recipe)
    return out
