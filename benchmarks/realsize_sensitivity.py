"""How well the bounded sensitivity measure (``local``: each unit's own output error, about two forwards in
all) agrees with the full one (``output``: the component's output error, one forward per unit), and what
each costs, on the embedded digits model's three components with real calibration rows.

Agreement: Spearman's rank correlation over the units, overlap of the top-k units, and overlap of the units
each keeps in float under the same float budget (edgekit.quantize.sensitivity.select_float_units).
Optionally (``--sd15-scale``) the time of both measures on a UNet of SD-1.5's layout at that channel scale
(random weights, 32x32 latents), for the cost side of the size rule.

    nice -n 5 .venv/bin/python benchmarks/realsize_sensitivity.py [--sd15-scale 0.25]
-> benchmarks/results/realsize_sensitivity.{json,md}
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
BUDGETS = (0.002, 0.01, 0.05)


def spearman(a: list[str], b: list[str]) -> float:
    """Rank correlation of two orderings of the same units (worst first)."""
    common = [u for u in a if u in b]
    ra = np.array([a.index(u) for u in common], dtype=float)
    rb = np.array([b.index(u) for u in common], dtype=float)
    ra, rb = np.argsort(np.argsort(ra)), np.argsort(np.argsort(rb))
    return float(np.corrcoef(ra, rb)[0, 1]) if len(common) > 2 else float("nan")


def compare(full: list[dict], local: list[dict]) -> dict:
    from edgekit.quantize.sensitivity import select_float_units

    a, b = [r["unit"] for r in full], [r["unit"] for r in local]
    out = {"units": len(a), "spearman": round(spearman(a, b), 3)}
    for k in (3, 5, 10):
        out[f"top{k}_overlap"] = f"{len(set(a[:k]) & set(b[:k]))}/{k}"
    for budget in BUDGETS:
        kept_full, kept_local = select_float_units(full, budget), select_float_units(local, budget)
        out[f"kept_float_{budget:g}"] = {"full": kept_full, "local": kept_local,
                                         "overlap": f"{len(set(kept_full) & set(kept_local))}/{len(kept_full)}"}
    return out


def digits_study(rows_full: int) -> dict:
    from edgekit.calibration import CalibrationConfig, CalibrationSet, capture
    from edgekit.components import component_spec, export_module, inputs_from_calibration
    from edgekit.pipeline import default_model_dir, load_pipeline
    from edgekit.quantize import split_rows
    from edgekit.quantize.sensitivity import rank

    model = default_model_dir()
    pipe = load_pipeline(model)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib"
        calib.mkdir()
        config = CalibrationConfig(prompts=tuple(f"a handwritten digit {w}" for w in ("zero", "three", "seven", "nine")),
                                   steps=8, guidance_scale=4.0, seed=0,
                                   max_rows={"text_encoder": 16, "unet": 64, "vae_decoder": 8}, batch_size=4)
        capture(pipe, config, calib, model)
        cset = CalibrationSet.open(calib, model)
        for name in ("unet", "text_encoder", "vae_decoder"):
            rows = cset.load(name)
            spec = component_spec(pipe, name)
            n = len(next(iter(rows.values())))
            calib_idx, _ = split_rows(n, 0.25, 0)
            inputs = inputs_from_calibration(spec, rows, calib_idx)
            module = export_module(pipe, name)
            sens = {k: v[:rows_full] for k, v in inputs.items()}
            t0 = time.perf_counter()
            full = rank(module, spec, inputs, sens, measure="output")
            t1 = time.perf_counter()
            local = rank(module, spec, inputs, sens, measure="local")
            t2 = time.perf_counter()
            results[name] = {"calibration_rows": len(calib_idx), "full_rows": rows_full,
                             "full_seconds": round(t1 - t0, 2), "local_seconds": round(t2 - t1, 2),
                             "local": compare(full, local),
                             "full_top5": [r["unit"] for r in full[:5]], "local_top5": [r["unit"] for r in local[:5]]}
            for budget in BUDGETS:  # the bounded measure depends on the budget it serves
                t0 = time.perf_counter()
                bounded = rank(module, spec, inputs, sens, measure="bounded", float_budget=budget)
                results[name][f"bounded_{budget:g}"] = {
                    "seconds": round(time.perf_counter() - t0, 2),
                    "output_measured_units": sum(r["measure"] == "output" for r in bounded),
                    **compare(full, bounded)}
            print(name, json.dumps(results[name]), flush=True)
    return results


def sd15_cost(scale: float) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    from edgekit.components import component_spec, example_inputs, export_module
    from edgekit.pipeline import load_pipeline
    from edgekit.quantize.sensitivity import rank
    from edgekit.zoo.sd15 import SD15_UNET, build_sd15_pipeline

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        build_sd15_pipeline(Path(tmp) / "p", reduced=True)
        pipe = load_pipeline(Path(tmp) / "p")
    channels = tuple(max(32, int(round(c * scale / 32)) * 32) for c in (320, 640, 1280, 1280))
    torch.manual_seed(0)
    pipe.register_modules(unet=UNet2DConditionModel(**{**SD15_UNET, "block_out_channels": channels, "sample_size": 32,
                                                       "cross_attention_dim": pipe.text_encoder.config.hidden_size}).eval())
    spec = component_spec(pipe, "unet")
    module = export_module(pipe, "unet")
    inputs = example_inputs(pipe, "unet", batch=8, seed=0)
    out = {"scale": scale, "unet_params": int(sum(p.numel() for p in module.parameters())), "latent": 32}
    t0 = time.perf_counter()
    local = rank(module, spec, inputs, inputs, measure="bounded", float_budget=0.002)
    out["bounded_seconds_2_rows"] = round(time.perf_counter() - t0, 1)
    out["bounded_output_measured_units"] = [r["unit"] for r in local if r["measure"] == "output"]
    t0 = time.perf_counter()
    with torch.no_grad():
        module(*[torch.from_numpy(inputs[n][:8]) for n in spec.input_names()])
    forward8 = time.perf_counter() - t0
    out["one_forward_8_rows_seconds"] = round(forward8, 2)
    out["units"] = len(local)
    # the output measure: one forward on 8 rows per unit, plus the range pass over the calibration rows
    out["output_measure_estimated_seconds"] = round(forward8 * len(local), 1)
    print(out, flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8, help="rows of the full (output) measure, as quantize uses")
    parser.add_argument("--sd15-scale", type=float, default=None)
    parser.add_argument("--skip-digits", action="store_true", help="keep the digits study of the last results")
    args = parser.parse_args()
    import torch

    torch.manual_seed(0)
    path = RESULTS / "realsize_sensitivity.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    result = {"digits": previous["digits"] if args.skip_digits and "digits" in previous else digits_study(args.rows)}
    if args.sd15_scale:
        result["sd15_cost"] = sd15_cost(args.sd15_scale)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "realsize_sensitivity.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Sensitivity ranking: the bounded (local) measure against the full (output) one", "",
             "Digits model, real calibration rows (4 prompts x 8 steps, guidance 4). *output*: component output",
             f"rel-err with one unit INT8, {args.rows} rows, one forward per unit; *local*: the unit's own output",
             "rel-err, 2 rows, about two forwards in all. Kept-float: units each keeps under the float budget.",
             "Written by `benchmarks/realsize_sensitivity.py`.", "",
             "| component | measure | units | Spearman | top-3 | top-5 | top-10 | kept 0.2% | kept 1% | kept 5% | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["digits"].items():
        rows = [("local", r["local"], r["local_seconds"])]
        rows += [(f"bounded @{b:g} ({r[f'bounded_{b:g}']['output_measured_units']} by output)", r[f"bounded_{b:g}"],
                  r[f"bounded_{b:g}"]["seconds"]) for b in BUDGETS]
        lines.append(f"| {name} | output ({args.rows} rows), the reference | {r['local']['units']} | 1 | | | | | | | "
                     f"{r['full_seconds']} |")
        for label, c, sec in rows:
            kept = " | ".join(c[f"kept_float_{b:g}"]["overlap"] for b in BUDGETS)
            lines.append(f"| {name} | {label} | {c['units']} | {c['spearman']} | {c['top3_overlap']} | "
                         f"{c['top5_overlap']} | {c['top10_overlap']} | {kept} | {sec} |")
    lines += ["", "Kept-float overlap: units both keep / units the output measure keeps. A bounded row serves the",
              "budget it is named with; its other kept columns are shown for completeness."]
    lines += ["", "Top 5 units (output measure / local measure):", ""]
    for name, r in result["digits"].items():
        lines.append(f"- {name}: {', '.join(r['full_top5'])} / {', '.join(r['local_top5'])}")
    if "sd15_cost" in result:
        c = result["sd15_cost"]
        lines += ["", f"Cost on a UNet of SD-1.5's layout at channel scale {c['scale']} ({c['unet_params'] / 1e6:.0f}M "
                  f"parameters, 32x32 latents): bounded measure at the default 0.2% budget {c['bounded_seconds_2_rows']} s "
                  f"on 2 rows ({len(c['bounded_output_measured_units'])} units by output error: "
                  f"{', '.join(c['bounded_output_measured_units'])}); one forward on 8 "
                  f"rows {c['one_forward_8_rows_seconds']} s, so the output measure needs about "
                  f"{c['output_measure_estimated_seconds']} s ({c['units']} units), before its range pass."]
    (RESULTS / "realsize_sensitivity.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
