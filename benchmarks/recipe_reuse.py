"""What an INT8 recipe saves a rerun: the analysis a target's INT8 needs (edgekit.targets.recipes.plan_recipe) timed
against reading the recipe JSON back and checking it is fresh (what a rerun that reuses it pays), on the reduced
SD-1.5 architecture (random weights, edgekit.zoo.sd15) with a short calibration (4 steps, 8 images):
- tflite int8 with a sensitivity budget of 0.02 (the UNet's units ranked on the calibration rows);
- coreml mixed (per-layer palette bits of the text encoder, UNet and VAE decoder from output PSNR).
The model's sha256 is computed once in the process before the check is timed (an export hashes it anyway for the
manifest's source_model). Writes benchmarks/results/recipe_reuse.json.

    .venv/bin/python benchmarks/recipe_reuse.py [--work DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "recipe_reuse.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/recipe_reuse"), help="model and calibration folder")
    args = parser.parse_args()

    from edgekit.cli import main as edgekit
    from edgekit.modeldir import ModelDir
    from edgekit.profiles import shipped_profile
    from edgekit.targets import get_target
    from edgekit.targets.base import ExportRequest
    from edgekit.targets.bundle_parts import sampling_plan
    from edgekit.targets.recipes import check_fresh, read_recipe, recipe_inputs, write_recipe
    from edgekit.width import Width
    from edgekit.zoo.sd15 import build_sd15_pipeline

    model, calib = args.work / "pipeline", args.work / "calib"
    if not model.exists():
        build_sd15_pipeline(model, reduced=True)
    if not calib.exists():
        assert edgekit(["calibrate", "--model", str(model), "--steps", "4", "--samples", "8", "--out", str(calib)]) == 0
    tflite = shipped_profile("android-tflite").with_precision("int8")
    tflite = dataclasses.replace(tflite, int8_recipe=dataclasses.replace(tflite.int8_recipe, sensitive_budget=0.02))
    rows = []
    for name, profile in (("tflite", tflite), ("coreml", shipped_profile("ios-coreml").with_precision("mixed"))):
        target = get_target(name)
        request = ExportRequest(model_dir=model, out=None, target=name, profile=profile, widths=(1.0,),
                                calib_dir=calib)
        t0 = time.perf_counter()
        recipe = target.plan_recipe(request, 1.0)
        plan_s = time.perf_counter() - t0
        path = write_recipe(args.work / f"{name}-w1.00.json", recipe)
        opened = ModelDir.of(model)
        expected = recipe_inputs(target, request, opened.sha256, Width.parse(1.0), True, sampling_plan(opened, profile))
        t0 = time.perf_counter()
        check_fresh(path, read_recipe(path), recipe_inputs(target, request, opened.sha256, Width.parse(1.0), True,
                                                           sampling_plan(opened, profile)))
        reuse_s = time.perf_counter() - t0
        assert read_recipe(path)["inputs"] == expected
        rows.append({"target": name, "precision": profile.precision, "plan_s": round(plan_s, 2),
                     "analysis_s": recipe["planned_s"], "reuse_s": round(reuse_s, 3), "recipe_bytes": path.stat().st_size,
                     "components": sorted(recipe["components"])})
        print(json.dumps(rows[-1]), flush=True)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from paired import run_record

    record = run_record(" ".join(["benchmarks/recipe_reuse.py", *sys.argv[1:]]))
    data = {**record, "model": "edgekit.zoo.sd15 reduced (random weights)", "calibration": "4 steps, 8 images",
            "baseline": "planning the recipe (plan_s) against reading and checking the saved one (reuse_s)",
            "rows": rows}
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    lines = [f"# INT8 recipe: plan vs reuse ({data['model']})", "",
             f"Commit {record['commit']}, `{record['command']}`, {record['host']}, {record['date']}.", "",
             "| target | precision | plan s (analysis s) | reuse s | recipe bytes |", "|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['precision']} | {r['plan_s']} ({r['analysis_s']}) | {r['reuse_s']} | "
              f"{r['recipe_bytes']} |" for r in rows]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
