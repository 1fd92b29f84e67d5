"""Core ML recipes on the embedded digits model at three widths: W8 (int8 weights), W8A8 (int8 activations on
conv/linear inputs from the calibration rows + int8 weights) and mixed-bit palettization variants, against fp16.

Core ML cannot predict on Linux, so quality comes from the torch-side simulation of each recipe (the same
quantization applied to the torch modules of all three components: weights as Core ML stores them, activation
ranges from the same calibration rows); bytes come from the exported bundles (three widths). Per width:
held-out digit accuracy (Wilson 95%), PSNR against the float model (mean, 95% interval, n), and paired against
fp16 at the same width (same prompts, seeds and noise): the share of images whose read digit agrees (Wilson 95%),
the accuracy difference (percentile bootstrap 95% over images) and PSNR against the fp16 images.

A mixed variant is spelled mixed:BITS/PALETTE[/gGROUP]: target average BITS, palette bit widths PALETTE
(dash-separated), one look-up table per GROUP output channels (iOS18), e.g. mixed:5/4-6-8/g16; plain
``mixed`` is the profile's. Writes benchmarks/results/coreml_recipes.{json,md}.

    .venv/bin/python benchmarks/coreml_recipes.py --calib-root DIR [--samples 100] [--steps 8]
        [--recipes fp16,w8,w8a8,mixed:4.5/2-4-6-8] [--export w8,mixed:4.5/2-4-6-8]
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
BOOTSTRAP_DRAWS = 2000


def mixed_variant(recipe: str, cfg):
    """(target bits, palette bits, group size) of a mixed recipe spelling; the profile's for plain ``mixed``."""
    if recipe == "mixed":
        return cfg.mixed_target_bits, tuple(cfg.palette_bits), cfg.palette_group_size
    parts = recipe.split(":", 1)[1].split("/")
    palette = tuple(int(b) for b in parts[1].split("-")) if len(parts) > 1 else tuple(cfg.palette_bits)
    group = int(parts[2].lstrip("g")) if len(parts) > 2 else 0
    return float(parts[0]), palette, group


def recipe_profile(profile, recipe: str):
    """The profile that exports ``recipe`` (mixed variants: their bits, palette and group size)."""
    if not recipe.startswith("mixed"):
        return dataclasses.replace(profile, precision=recipe)
    target, palette, group = mixed_variant(recipe, profile.coreml)
    return dataclasses.replace(profile, precision="mixed", coreml=dataclasses.replace(
        profile.coreml, mixed_target_bits=target, palette_bits=palette, palette_group_size=group))


def paired(correct, base_correct, read, base_read, images, base_images) -> dict:
    """The recipe against fp16 on the same images: digit agreement, accuracy difference, PSNR to fp16's images."""
    from edgekit.quality.metrics import mean_ci95, psnr_per_image, wilson_ci95

    n = len(correct)
    agree = int((read == base_read).sum())
    diff = correct.astype(float) - base_correct.astype(float)
    rng = np.random.default_rng(0)
    draws = np.sort(diff[rng.integers(0, n, size=(BOOTSTRAP_DRAWS, n))].mean(axis=1))
    value, ci = mean_ci95(np.minimum(psnr_per_image(images, base_images), 100.0))
    return {"n": n, "agreement": agree / n, "agreement_ci95": list(wilson_ci95(agree, n)),
            "accuracy_diff": float(diff.mean()),
            "accuracy_diff_ci95": [float(draws[int(0.025 * BOOTSTRAP_DRAWS)]), float(draws[int(0.975 * BOOTSTRAP_DRAWS) - 1])],
            "fp16_right_recipe_wrong": int(((base_correct) & (~correct)).sum()),
            "fp16_wrong_recipe_right": int(((~base_correct) & (correct)).sum()),
            "psnr_vs_fp16": {"value": float(value), "ci95": [float(ci[0]), float(ci[1])], "n": n}}


def calibration_rows(pipe, name: str, calib_dir: Path) -> dict:
    from edgekit.calibration import CalibrationSet
    from edgekit.components import component_spec, inputs_from_calibration
    from edgekit.targets.base import CALIB_ROWS_INT8

    data = CalibrationSet.open(calib_dir, MODEL).load(name)
    n = len(next(iter(data.values())))
    index = np.linspace(0, n - 1, min(n, CALIB_ROWS_INT8)).round().astype(int)  # the rows export takes
    return inputs_from_calibration(component_spec(pipe, name), data, index)


def memoized_palettized(palettized):
    """``palettized`` remembering its results by the weight's bytes: the text encoder's and VAE decoder's weights
    are the same at every width, and recipes share most layers' bit widths (k-means is the slow part here)."""
    import hashlib

    memo = {}

    def wrapper(weight, nbits, group_size=0):
        key = (hashlib.sha1(weight.detach().cpu().numpy().tobytes()).hexdigest(), tuple(weight.shape), nbits,
               group_size)
        if key not in memo:
            memo[key] = palettized(weight, nbits, group_size)
        return memo[key]
    return wrapper


def recipe_context(recipe: str, pipe, calib_root: Path, width: float, plans: dict):
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
        elif recipe.startswith("mixed"):
            stack.enter_context(cr.simulate_mixed(module, plans[(recipe, width, name)]))
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
    ap.add_argument("--seed", type=int, default=0, help="image i of a width takes seed + i (screens used 0)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--recipes", default="fp16,w8,w8a8,mixed")
    ap.add_argument("--export", default=None, help="recipes to export as bundles (default: all of --recipes)")
    ap.add_argument("--no-export", action="store_true", help="torch simulation only")
    ap.add_argument("--widths", default=",".join(f"{w:g}" for w in WIDTHS),
                    help="widths to simulate (none: export only)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--plans", type=Path, default=None,
                    help="an earlier results file, or an exported mixed bundle, whose plans (same recipe or same "
                         "target bits and group size, width, component) are reused instead of measuring the "
                         "per-layer sensitivity again (plans depend on the calibration rows, not on the seeds)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 on a host loaded by other jobs)")
    ap.add_argument("--run", default="", help="label of this run in the rows it measures (e.g. a commit)")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="measure nothing: merge these results files (a later file's row replaces an earlier one "
                         "of the same recipe, width and seeds; bundles and plans by name) into --out")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        results = merge([json.loads(p.read_text()) for p in args.merge])
        (args.out / "coreml_recipes.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "coreml_recipes.md").write_text(markdown(results))
        return
    torch.set_num_threads(args.threads)
    cr.palettized = memoized_palettized(cr.palettized)
    profile = shipped_profile("ios-coreml")
    cfg = profile.coreml
    quality = ModelQuality(MODEL, samples=args.samples, seed=args.seed)
    quality.reference()
    labels = np.asarray(quality.grid.labels)
    recipes = args.recipes.split(",")
    if recipes[0] != "fp16":
        raise SystemExit("--recipes: fp16 comes first (the paired measures compare with it)")
    results = {"meta": {"host": host_device(), "samples": args.samples, "seed": args.seed, "steps": args.steps,
                        "run": args.run,
                        "profile_mixed_target_bits": cfg.mixed_target_bits, "profile_palette_bits": list(cfg.palette_bits),
                        "widths": list(WIDTHS), "bootstrap_draws": BOOTSTRAP_DRAWS},
               "simulated": [], "bundles": {}, "plans": {}, "sensitivity": {}}
    mixed = [r for r in recipes if r.startswith("mixed")]
    probe_bits = tuple(sorted({b for r in mixed for b in mixed_variant(r, cfg)[1]}))
    reused = known_plans(args.plans, [r for r in recipes if r.startswith("mixed")], cfg) if args.plans else {}
    sensitivities = {}  # the text encoder's and VAE decoder's do not depend on the UNet's width
    for width in ([] if args.widths == "none" else [float(w) for w in args.widths.split(",")]):
        pipe = open_model(MODEL, width=width)
        plans = {}
        for recipe in mixed:
            target, palette, group = mixed_variant(recipe, cfg)
            for name in COMPONENTS:
                module = export_module(pipe, name)
                key = (group, name, width if name == "unet" else None)
                rows = calibration_rows(pipe, name, args.calib_root / f"calib-w{width if name == 'unet' else 1.0}")
                sizes = {p: m.weight.numel() for p, m in
                         cr.palettizable(module, cfg.min_palettize_weights, component_spec(pipe, name), rows).items()}
                known = reused.get(f"{recipe} {width:g}/{name}")
                if known is not None:
                    plan = cr.MixedPlan(bits=known["bits"], average_bits=known["average_bits"],
                                        target_bits=known["target_bits"], group_size=known["group_size"])
                    if set(plan.bits) != set(sizes) or plan.target_bits != target or plan.group_size != group:
                        raise SystemExit(f"--plans: {recipe} {width:g}/{name} does not match this model's layers")
                elif target <= min(palette):  # every layer at the smallest width (as mixed_plan_for): nothing to do
                    plan = cr.MixedPlan(bits={p: min(palette) for p in sizes}, average_bits=float(min(palette)),
                                        target_bits=target, group_size=group)
                else:
                    if key not in sensitivities:  # the per-layer PSNR does not depend on the target
                        n = len(next(iter(rows.values())))
                        probe = {k: v[np.linspace(0, n - 1, min(n, 8)).round().astype(int)] for k, v in rows.items()}
                        sensitivities[key] = cr.layer_sensitivity(module, component_spec(pipe, name), probe, probe_bits,
                                                                  cfg.min_palettize_weights, group)
                    plan = cr.plan_mixed(sensitivities[key], sizes, palette, target, group)
                    results["sensitivity"][f"g{group} {width:g}/{name}"] = sensitivities[key]
                plans[(recipe, width, name)] = plan
                results["plans"][f"{recipe} {width:g}/{name}"] = plan.to_dict()
        base = None
        for recipe in recipes:
            t0 = time.perf_counter()
            with recipe_context(recipe, pipe, args.calib_root, width, plans):
                images = quality.generate(pipe, args.steps)
            row = quality.score(images).row
            read = quality.digits.scorer.logits_and_features(images)[0].argmax(axis=1)
            correct = read == labels
            entry = {"recipe": recipe, "width": width, "steps": args.steps, "n": args.samples, "run": args.run,
                     "seeds": [args.seed, args.seed + args.samples - 1],
                     "prompt_accuracy": row.get("prompt_accuracy"), "prompt_accuracy_ci95": row.get("prompt_accuracy_ci95"),
                     "psnr": row["quality"], "seconds": round(time.perf_counter() - t0, 1)}
            if recipe == "fp16":
                base = (correct, read, images)
            else:
                entry["paired_vs_fp16"] = paired(correct, base[0], read, base[1], images, base[2])
            results["simulated"].append(entry)
            print(json.dumps(entry), flush=True)
        (args.out / "coreml_recipes.partial.json").write_text(json.dumps(results, indent=2) + "\n")
    exports = [] if args.no_export else (args.export.split(",") if args.export else recipes)
    for recipe in [r for r in exports if r != "fp16"] + (["fp16"] if exports else []):
        out = args.work / recipe.replace(":", "_").replace("/", "_")
        t0 = time.perf_counter()
        if not (out / "manifest.json").is_file():
            export_bundle(ExportRequest(model_dir=MODEL, out=out, target="coreml",
                                        profile=recipe_profile(profile, recipe), widths=WIDTHS,
                                        calib_dir=args.calib_root / "calib-w1.0",
                                        unet_calib_dirs=tuple((w, args.calib_root / f"calib-w{w}") for w in WIDTHS),
                                        steps=(args.steps,), force=True))
        results["bundles"][recipe] = bundle_facts(out)
        results["bundles"][recipe]["export_s"] = round(time.perf_counter() - t0, 1)
        if recipe.startswith("mixed"):  # the exported plans are the ones the simulation used
            comps = json.loads((out / "manifest.json").read_text())["components"]
            exported = {f"{float(w):g}/unet": u["palette_plan"]["bits"] for w, u in comps["unet"]["widths"].items()}
            exported.update({f"{w:g}/{k}": comps[k]["palette_plan"]["bits"] for k in ("text_encoder", "vae_decoder")
                             for w in WIDTHS})
            simulated = {k.split(" ", 1)[1]: v["bits"] for k, v in results["plans"].items() if k.split(" ")[0] == recipe}
            results["bundles"][recipe]["plans_match_simulation"] = {
                k: exported.get(k) == v for k, v in simulated.items()}
        print(recipe, results["bundles"][recipe], flush=True)
        (args.out / "coreml_recipes.partial.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "coreml_recipes.partial.json").unlink(missing_ok=True)
    (args.out / "coreml_recipes.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "coreml_recipes.md").write_text(markdown(results))
    print(markdown(results))


def known_plans(path: Path, recipes: list[str], cfg) -> dict:
    """Plans by "recipe width/component" from a results file, or from an exported bundle's manifest for each of
    ``recipes`` whose target bits and group size are the bundle's."""
    if path.is_file():
        return json.loads(path.read_text())["plans"]
    comps = json.loads((path / "manifest.json").read_text())["components"]
    entries = {**{(float(w), "unet"): u for w, u in comps["unet"]["widths"].items()},
               **{(w, k): comps[k] for k in ("text_encoder", "vae_decoder") for w in WIDTHS}}
    out = {}
    for recipe in recipes:
        target, _, group = mixed_variant(recipe, cfg)
        for (width, name), entry in entries.items():
            plan = entry.get("palette_plan")
            if plan and plan["target_bits"] == target and plan["group_size"] == group:
                out[f"{recipe} {width:g}/{name}"] = plan
    return out


def merge(parts: list[dict]) -> dict:
    """One results dict from several runs' (in order: a later row of the same recipe, width and seeds replaces an
    earlier one); rows keep the run that measured them, the meta is the last run's with every run's listed."""
    rows, bundles, plans, sensitivity = {}, {}, {}, {}
    for part in parts:
        meta = part["meta"]
        for r in part["simulated"]:
            r = {"n": meta["samples"], "seeds": [meta.get("seed", 0), meta.get("seed", 0) + meta["samples"] - 1],
                 "run": meta.get("run", ""), **r}
            rows[(r["recipe"], r["width"], tuple(r["seeds"]))] = r
        bundles.update(part["bundles"])
        plans.update(part["plans"])
        sensitivity.update(part.get("sensitivity", {}))
    runs = [m for p in parts for m in p["meta"].get("runs", [p["meta"]])]
    return {"meta": {**{k: v for k, v in runs[-1].items() if k != "runs"}, "runs": runs},
            "simulated": list(rows.values()), "bundles": bundles, "plans": plans, "sensitivity": sensitivity}


def bundle_facts(out: Path) -> dict:
    """Bytes of an exported bundle: in all (each component's package once, the UNet once per width) and per
    component, with the deployment target and the palettized UNets' average bits."""
    comps = json.loads((out / "manifest.json").read_text())["components"]
    unet = comps["unet"]["widths"]
    return {"bytes": sum(c["bytes"] for k, c in comps.items() if k != "unet") + sum(u["bytes"] for u in unet.values()),
            "component_bytes": {**{k: c["bytes"] for k, c in comps.items() if k != "unet"},
                                **{f"unet@{w}": u["bytes"] for w, u in unet.items()}},
            "minimum_deployment_target": sorted({c["minimum_deployment_target"] for k, c in comps.items() if k != "unet"}
                                                | {u["minimum_deployment_target"] for u in unet.values()})[-1],
            "average_bits": {k: c.get("palette_plan", {}).get("average_bits")
                             for k, c in [*((k, c) for k, c in comps.items() if k != "unet"),
                                          *((f"unet@{w}", u) for w, u in unet.items())]}}


def goal_row(rows: list, recipe: str, width: float, seeds=None):
    """The row of ``recipe`` at ``width`` the goal reads: with ``seeds``, the one on those seeds; else the paired
    one with the most images (an unpaired one when none is paired)."""
    rows = [r for r in rows if r["recipe"] == recipe and r["width"] == width
            and (seeds is None or r.get("seeds") == seeds)]
    return max(rows, key=lambda r: ("paired_vs_fp16" in r or recipe == "fp16", r.get("n", 0)), default=None)


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = ["# Core ML recipes (digits model, three widths)", "",
             f"{meta['host']}. Quality: torch simulation of each recipe on all three components (Core ML cannot "
             f"predict on Linux; the packages are checked structurally), n images per width (image i of a row "
             f"takes seed first + i; seeds 0..99 are the screen that chose the recipes), {meta['steps']} steps; "
             f"run: the commit or run that measured the row; accuracy: held-out digit classifier (Wilson 95%); "
             f"PSNR against the float model at full width and 20 steps (mean, 95% interval). Paired with fp16 at the same width (same prompts, "
             f"seeds and noise): digit agreement (Wilson 95%), accuracy difference in points (percentile bootstrap "
             f"95% over images, {meta['bootstrap_draws']} draws), PSNR against the fp16 images. mixed:BITS/PALETTE[/gN]: "
             "target average bits per palettized weight, the bit widths a layer may get (each layer's from its "
             "measured output PSNR vs float on 8 calibration rows), one look-up table per N output channels "
             "(iOS18; none: one per weight). Palettized: every conv/linear weight over 2048 values of all three "
             "components.", "",
             "| recipe | width | n (seeds) | run | accuracy [95%] | PSNR vs float dB [95%] | agrees with fp16 [95%] | "
             "accuracy - fp16, points [95%] | PSNR vs fp16 dB [95%] |", "|---|---:|---|---|---|---|---|---|---|"]
    for r in results["simulated"]:
        q = r["psnr"]
        lo, hi = r["prompt_accuracy_ci95"]
        seeds = r.get("seeds", [0, meta["samples"] - 1])
        cells = [r["recipe"], f"{r['width']:g}", f"{r.get('n', meta['samples'])} ({seeds[0]}..{seeds[1]})",
                 r.get("run", "-"), f"{r['prompt_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]",
                 f"{q['value']:.2f} [{q['ci95'][0]:.2f}, {q['ci95'][1]:.2f}]"]
        p = r.get("paired_vs_fp16")
        if p:
            d, dci, pq = p["accuracy_diff"], p["accuracy_diff_ci95"], p["psnr_vs_fp16"]
            cells += [f"{p['agreement']:.3f} [{p['agreement_ci95'][0]:.3f}, {p['agreement_ci95'][1]:.3f}]",
                      f"{d * 100:+.1f} [{dci[0] * 100:+.1f}, {dci[1] * 100:+.1f}] "
                      f"({p['fp16_right_recipe_wrong']} lost, {p['fp16_wrong_recipe_right']} gained)",
                      f"{pq['value']:.2f} [{pq['ci95'][0]:.2f}, {pq['ci95'][1]:.2f}]"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if results["bundles"]:
        names = list(next(iter(results["bundles"].values()))["component_bytes"])
        lines += ["", "Bundles (three widths; the text encoder and VAE decoder are shipped once, the UNet once per "
                      "width), bytes from the exported packages:", "",
                  "| bundle | MiB | " + " | ".join(f"{n} MiB (avg bits)" for n in names) + " | deployment target |",
                  "|---|---:|" + "---:|" * len(names) + "---|"]
        for recipe, b in results["bundles"].items():
            cells = [f"{b['component_bytes'][n] / 2**20:.2f}" + (f" ({b['average_bits'][n]:.2f})"
                                                                 if b["average_bits"].get(n) else "") for n in names]
            lines.append(f"| {recipe} | {b['bytes'] / 2**20:.2f} | " + " | ".join(cells) +
                         f" | {b['minimum_deployment_target']} |")
    if any(r["recipe"] != "fp16" for r in results["simulated"]):
        lines += ["", "Goal (issue 15: a bundle for three widths <= 6 MiB whose simulated accuracy is within 3 points "
                      "of fp16 at every width; per width the paired row with the most images, point estimate and "
                      "paired 95% interval):"]
        for recipe in dict.fromkeys(r["recipe"] for r in results["simulated"] if r["recipe"] != "fp16"):
            per_width, ok = [], True
            for width in sorted({r["width"] for r in results["simulated"] if r["recipe"] == recipe}, reverse=True):
                r = goal_row(results["simulated"], recipe, width)
                p = r.get("paired_vs_fp16")
                if p:
                    d, ci = p["accuracy_diff"], p["accuracy_diff_ci95"]
                    per_width.append(f"w{width:g} {d * 100:+.1f} [{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}] (n={p['n']})")
                else:
                    base = goal_row(results["simulated"], "fp16", width, r.get("seeds"))
                    d = r["prompt_accuracy"] - base["prompt_accuracy"] if base else float("nan")
                    per_width.append(f"w{width:g} {d * 100:+.1f} (unpaired, n={r.get('n', meta['samples'])})")
                ok = ok and d >= -0.03
            missing = [w for w in meta["widths"] if not any(r["recipe"] == recipe and r["width"] == w
                                                            for r in results["simulated"])]
            size = results["bundles"].get(recipe, {}).get("bytes")
            size_text = (f"{size / 2**20:.2f} MiB ({'holds' if size <= 6 * 2**20 else 'missed'})" if size
                         else "bundle not exported")
            holds = ok and not missing and size is not None and size <= 6 * 2**20
            unmeasured = f"; widths not measured: {', '.join(f'{w:g}' for w in missing)}" if missing else ""
            lines.append(f"- {recipe}: points vs fp16 {'; '.join(per_width)} "
                         f"({'within 3 points' if ok else 'missed'}{unmeasured}); {size_text}; "
                         f"goal {'holds' if holds else 'not shown' if missing and ok else 'missed'}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
