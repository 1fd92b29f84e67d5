"""Core ML recipes on the embedded digits model at three widths: W8 (int8 weights), W8A8 (int8 activations on
conv/linear inputs from the calibration rows + int8 weights) and mixed-bit palettization, against fp16.

Core ML cannot predict on Linux, so quality comes from the torch-side simulation of each recipe (the same
quantization applied to the torch modules of all three components: weights as Core ML stores them, activation
ranges from the same calibration rows); bytes come from the exported bundles (three widths). Per width:
held-out digit accuracy (Wilson 95%) and PSNR against the float model (mean, 95% interval, n).
Writes benchmarks/results/coreml_recipes.{json,md}.

    .venv/bin/python benchmarks/coreml_recipes.py --calib-root DIR [--samples 100] [--steps 8] [--mixed 4.5]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "edgekit" / "zoo" / "tiny_digits" / "slim"
WIDTHS = (1.0, 0.75, 0.5)
COMPONENTS = ("text_encoder", "unet", "vae_decoder")


def calibration_rows(pipe, name: str, calib_dir: Path) -> dict:
    from edgekit.calibration import CalibrationSet
    from edgekit.components import component_spec, inputs_from_calibration
    from edgekit.targets.base import CALIB_ROWS_INT8

    data = CalibrationSet.open(calib_dir, MODEL).load(name)
    n = len(next(iter(data.values())))
    index = np.linspace(0, n - 1, min(n, CALIB_ROWS_INT8)).round().astype(int)  # the rows export takes
    return inputs_from_calibration(component_spec(pipe, name), data, index)


def recipe_context(recipe: str, pipe, calib_root: Path, width: float, cfg, plans: dict):
    """Patches every component of ``pipe`` as ``recipe`` stores it in Core ML (inside ``with``)."""
    from edgekit.components import component_spec, export_module
    from edgekit.quantize.sensitivity import weight_layers
    from edgekit.targets import coreml_recipes as cr

    stack = contextlib.ExitStack()
    for name in COMPONENTS:
        module = export_module(pipe, name)
        spec = component_spec(pipe, name)
        layers = weight_layers(module)
        if recipe == "fp16":
            stack.enter_context(cr._Patched(layers, {p: l.weight.data.half().float() for p, l in layers.items()}))
        elif recipe == "w8":  # coremltools linear_quantize_weights: per-channel symmetric int8, tensors > 2048
            big = {p: l for p, l in layers.items() if l.weight.numel() > 2048}
            stack.enter_context(cr._Patched(big, {p: cr._symmetric_weight(l.weight.data) for p, l in big.items()}))
        elif recipe == "w8a8":
            rows = calibration_rows(pipe, name, calib_root / f"calib-w{width if name == 'unet' else 1.0}")
            stack.enter_context(cr.simulate_w8a8(module, spec, rows))
        elif recipe == "mixed":
            stack.enter_context(cr.simulate_mixed(module, plans[(width, name)]))
    return stack


def main() -> None:
    from edgekit.components import component_spec, export_module
    from edgekit.loader import open_model
    from edgekit.profiles import shipped_profile
    from edgekit.quality.evaluator import ModelQuality
    from edgekit.runtime.bench import host_device
    from edgekit.targets import coreml_recipes as cr
    from edgekit.targets.base import ExportRequest, export_bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-root", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit_coreml_recipes"))
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--mixed", type=float, default=None, help="average bits (default: the profile's)")
    ap.add_argument("--recipes", default="fp16,w8,w8a8,mixed")
    ap.add_argument("--no-export", action="store_true", help="torch simulation only")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    torch.set_num_threads(2)
    profile = shipped_profile("ios-coreml")
    if args.mixed is not None:
        profile = profile.with_precision(f"mixed:{args.mixed}")
    cfg = profile.coreml
    quality = ModelQuality(MODEL, samples=args.samples, seed=0)
    quality.reference()
    recipes = args.recipes.split(",")
    results = {"meta": {"host": host_device(), "samples": args.samples, "steps": args.steps,
                        "mixed_target_bits": cfg.mixed_target_bits, "palette_bits": list(cfg.palette_bits),
                        "widths": list(WIDTHS)}, "simulated": [], "bundles": {}, "plans": {}}
    for width in WIDTHS:
        pipe = open_model(MODEL, width=width)
        plans = {}
        if "mixed" in recipes:
            for name in COMPONENTS:
                module = export_module(pipe, name)
                rows = calibration_rows(pipe, name, args.calib_root / f"calib-w{width if name == 'unet' else 1.0}")
                plan, _ = cr.mixed_plan_for(module, component_spec(pipe, name), rows, cfg.palette_bits,
                                            cfg.mixed_target_bits, cfg.min_palettize_weights)
                plans[(width, name)] = plan
                results["plans"][f"{width:g}/{name}"] = plan.to_dict()
        for recipe in recipes:
            t0 = time.perf_counter()
            with recipe_context(recipe, pipe, args.calib_root, width, cfg, plans):
                row = quality.score_pipe(pipe, args.steps).row
            results["simulated"].append({"recipe": recipe, "width": width, "steps": args.steps,
                                         "prompt_accuracy": row.get("prompt_accuracy"),
                                         "prompt_accuracy_ci95": row.get("prompt_accuracy_ci95"),
                                         "psnr": row["quality"], "seconds": round(time.perf_counter() - t0, 1)})
            print(json.dumps(results["simulated"][-1]), flush=True)
    if not args.no_export:
        for recipe in [r for r in recipes if r != "fp16"] + ["fp16"]:
            out = args.work / recipe
            t0 = time.perf_counter()
            if not (out / "manifest.json").is_file():
                export_bundle(ExportRequest(model_dir=MODEL, out=out, target="coreml",
                                            profile=dataclasses.replace(profile, precision=recipe), widths=WIDTHS,
                                            calib_dir=args.calib_root / "calib-w1.0",
                                            unet_calib_dirs=tuple((w, args.calib_root / f"calib-w{w}") for w in WIDTHS),
                                            steps=(args.steps,), force=True))
            m = json.loads((out / "manifest.json").read_text())
            comps = m["components"]
            total = sum(c["bytes"] for k, c in comps.items() if k != "unet") + \
                sum(u["bytes"] for u in comps["unet"]["widths"].values())
            results["bundles"][recipe] = {"bytes": total, "export_s": round(time.perf_counter() - t0, 1),
                                          "minimum_deployment_target": comps["text_encoder"]["minimum_deployment_target"],
                                          "unet_bytes": {w: u["bytes"] for w, u in comps["unet"]["widths"].items()},
                                          "average_bits": {w: u.get("palette_plan", {}).get("average_bits")
                                                           for w, u in comps["unet"]["widths"].items()}}
            print(recipe, results["bundles"][recipe], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coreml_recipes.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "coreml_recipes.md").write_text(markdown(results))
    print(markdown(results))


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = ["# Core ML recipes (digits model, three widths)", "",
             f"{meta['host']}. Quality: torch simulation of each recipe on all three components (Core ML cannot "
             f"predict on Linux; the packages are checked structurally), {meta['samples']} images per width, "
             f"{meta['steps']} steps, seed 0; accuracy: held-out digit classifier (Wilson 95%); PSNR against the float "
             f"model at full width and 20 steps (mean, 95% interval). Mixed-bit: palette bits {meta['palette_bits']}, "
             f"target average {meta['mixed_target_bits']} bits per palettized weight.", "",
             "| recipe | width | accuracy [95%] | PSNR dB [95%] (n) |", "|---|---:|---|---|"]
    for r in results["simulated"]:
        q = r["psnr"]
        lo, hi = r["prompt_accuracy_ci95"]
        lines.append(f"| {r['recipe']} | {r['width']:g} | {r['prompt_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{q['value']:.2f} [{q['ci95'][0]:.2f}, {q['ci95'][1]:.2f}] ({q['n']}) |")
    if results["bundles"]:
        lines += ["", "| bundle (three widths) | MiB | deployment target | UNet average bits (w1 / w0.75 / w0.5) |",
                  "|---|---:|---|---|"]
        for recipe, b in results["bundles"].items():
            bits = " / ".join(f"{v:.2f}" if v else "-" for v in b["average_bits"].values())
            lines.append(f"| {recipe} | {b['bytes'] / 2**20:.2f} | {b['minimum_deployment_target']} | {bits} |")
    base = {r["width"]: r["prompt_accuracy"] for r in results["simulated"] if r["recipe"] == "fp16"}
    if base:
        lines += ["", "Goal (issue 15: a bundle for three widths <= 6 MiB, simulated accuracy within 3 points of fp16):"]
        for recipe in dict.fromkeys(r["recipe"] for r in results["simulated"] if r["recipe"] != "fp16"):
            worst = min(r["prompt_accuracy"] - base[r["width"]] for r in results["simulated"] if r["recipe"] == recipe)
            size = results["bundles"].get(recipe, {}).get("bytes")
            size_text = f"{size / 2**20:.2f} MiB ({'holds' if size <= 6 * 2**20 else 'missed'})" if size else "not exported"
            lines.append(f"- {recipe}: worst width {worst * 100:+.1f} points vs fp16 "
                         f"({'holds' if worst >= -0.03 else 'missed'}); {size_text}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
