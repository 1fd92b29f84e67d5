"""LiteRT INT8 recipes on the embedded digits model at three widths: fp16, the old full-integer recipe (every op
int8) and the profile's recipe, each exported as a whole tflite bundle and measured with its own runtime.

Per (width, steps) row: held-out digit accuracy (Wilson 95% interval), PSNR against the float model (mean with
its 95% interval, n images), LiteRT latency of one image (median of interleaved rounds); per bundle: bytes and
the UNet's rel-err against torch on the verification rows. Writes benchmarks/results/int8_recipes.{json,md}.

    .venv/bin/python benchmarks/int8_recipes.py --calib-root DIR [--samples 100] [--steps 4,8,20]

DIR holds calib-w1.0, calib-w0.75, calib-w0.5 (edgekit calibrate --width W --out DIR/calib-wW); bundles are
kept in --work and reused when present.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "edgekit" / "zoo" / "tiny_digits" / "slim"
WIDTHS = (1.0, 0.75, 0.5)


def variants(profile):
    from edgekit.profiles import LiteRTInt8Recipe

    old = dataclasses.replace(profile, precision="int8", int8_recipe=LiteRTInt8Recipe())
    return {"fp16": dataclasses.replace(profile, precision="fp16"),
            "int8-all-ops": old,
            "int8-recipe": dataclasses.replace(profile, precision="int8")}


def export(name, profile, work: Path, calib_root: Path, steps) -> Path:
    from edgekit.targets.base import ExportRequest, export_bundle

    out = work / name
    if (out / "manifest.json").is_file():  # an earlier export (possibly of fewer widths or steps) is measured as it is
        return out
    t0 = time.perf_counter()
    export_bundle(ExportRequest(model_dir=MODEL, out=out, target="tflite", profile=profile, widths=WIDTHS,
                                calib_dir=calib_root / "calib-w1.0",
                                unet_calib_dirs=tuple((w, calib_root / f"calib-w{w}") for w in WIDTHS),
                                steps=tuple(steps), force=True))
    print(f"exported {name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def summarize(name: str, bundle: Path, rows: list[dict]) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    comps = manifest["components"]
    unets = comps["unet"]["widths"]
    checks = manifest["verification"]["unet"]["widths"]
    total = sum(c["bytes"] for k, c in comps.items() if k != "unet") + sum(u["bytes"] for u in unets.values())
    return {"variant": name, "bundle_bytes": total,
            "unet": {w: {"bytes": u["bytes"], "recipe": u.get("recipe"),
                         "int8_recipe": u.get("int8_recipe"),
                         "rel_err_vs_torch": checks[w]["checks"][0].get("rel_err")} for w, u in unets.items()},
            "rows": [{k: r[k] for k in ("width", "steps", "latency_ms", "latency_spread_ms", "latency_rounds",
                                        "prompt_accuracy", "prompt_accuracy_ci95", "quality")} for r in rows]}


def unet_call_latency(work: Path, names, rounds: int = 15) -> dict:
    """Per width, the milliseconds of one UNet call (batch 2, one thread) of each variant, interleaved call by
    call so every variant sees the same machine load: [25%, median, 75%]."""
    import numpy as np

    from edgekit.bundle import read_manifest
    from edgekit.runtime.runners import LiteRTRunner

    out = {}
    for w in ("1.00", "0.75", "0.50"):
        runners = {}
        for name in names:
            bundle = work / name
            entry = read_manifest(bundle)["components"]["unet"]["widths"].get(w)
            if entry is None:
                continue
            rng = np.random.default_rng(0)
            feed = {t["name"]: (np.full(t["shape"], 500, np.float32) if t["name"] == "timestep"
                                else rng.standard_normal(t["shape"]).astype(np.float32)) for t in entry["inputs"]}
            runners[name] = (LiteRTRunner(bundle / entry["file"], threads=1), feed)
        times = {name: [] for name in runners}
        for runner, feed in runners.values():
            runner.run(feed)  # warm-up
        for _ in range(rounds):
            for name, (runner, feed) in runners.items():
                t0 = time.perf_counter()
                runner.run(feed)
                times[name].append((time.perf_counter() - t0) * 1000)
        out[w] = {name: [round(float(np.percentile(t, q)), 2) for q in (25, 50, 75)] for name, t in times.items()}
    return out


def markdown(results: list[dict], meta: dict) -> str:
    lines = ["# LiteRT INT8 recipes (digits model, three widths)", "",
             f"{meta['host']}; {meta['samples']} images per row (digits balanced), seed 0; PSNR against the float "
             "model at full width and 20 steps (mean, 95% interval); accuracy: held-out digit classifier (Wilson 95%); "
             f"latency: one image end to end in ai_edge_litert, median of {meta['repeats']} interleaved rounds.", ""]
    fp16 = next((r for r in results if r["variant"] == "fp16"), None)
    if fp16 is None:
        return "\n".join(lines + ["(fp16 not measured yet: no comparison)"]) + "\n"
    lines += ["## Bundles", "", "| variant | UNet widths | bundle MiB | vs fp16 | UNet rel-err vs torch (per width) |",
              "|---|---|---:|---:|---|"]
    for r in results:
        order = sorted(r["unet"], key=float, reverse=True)
        errs = " / ".join(f"{r['unet'][w]['rel_err_vs_torch']:.3g}" for w in order)
        lines.append(f"| {r['variant']} | {', '.join(order)} | {r['bundle_bytes'] / 2**20:.2f} | "
                     f"{r['bundle_bytes'] / fp16['bundle_bytes']:.2f} | {errs} |")
    lines += ["", "## Rows", "", "| variant | width | steps | accuracy [95%] | PSNR dB [95%] (n) | latency ms [25..75%] |",
              "|---|---:|---:|---|---|---|"]
    for r in results:
        for row in r["rows"]:
            q = row["quality"]
            lo, hi = row["prompt_accuracy_ci95"]
            lines.append(f"| {r['variant']} | {row['width']:g} | {row['steps']} | {row['prompt_accuracy']:.3f} "
                         f"[{lo:.3f}, {hi:.3f}] | {q['value']:.2f} [{q['ci95'][0]:.2f}, {q['ci95'][1]:.2f}] ({q['n']}) "
                         f"| {row['latency_ms']:.1f} [{row['latency_spread_ms'][0]:.1f}, {row['latency_spread_ms'][1]:.1f}] |")
    if meta.get("unet_call_ms"):
        lines += ["", f"Row latencies above were measured one variant after another while the shared machine's load "
                      "changed (load average 5 to 17): compare them within a variant only. Interleaved UNet calls "
                      f"(batch 2, one thread, {meta.get('unet_call_rounds')} rounds, same moments for every variant), "
                      "ms [25%, median, 75%]:", "", "| width | " + " | ".join(r["variant"] for r in results) + " |",
                  "|---:|" + "---|" * len(results)]
        for w, by in meta["unet_call_ms"].items():
            lines.append(f"| {float(w):g} | " + " | ".join(
                (f"{by[r['variant']][1]:.2f} [{by[r['variant']][0]:.2f}, {by[r['variant']][2]:.2f}]"
                 if r["variant"] in by else "-") for r in results) + " |")
    lines += ["", "## Goal (issue: every row within 3 points of fp16's accuracy, bundle <= 0.6x fp16 bytes)", ""]
    base = {(row["width"], row["steps"]): row["prompt_accuracy"] for row in fp16["rows"]}
    for r in results:
        if r["variant"] == "fp16":
            continue
        worst = min(row["prompt_accuracy"] - base[(row["width"], row["steps"])] for row in r["rows"])
        ratio = r["bundle_bytes"] / fp16["bundle_bytes"]
        lines.append(f"- {r['variant']}: worst row {worst * 100:+.1f} points vs fp16 "
                     f"({'holds' if worst >= -0.03 else 'missed'}); bytes {ratio:.2f}x fp16 "
                     f"({'holds' if ratio <= 0.6 else 'missed'})")
    return "\n".join(lines) + "\n"


def main() -> None:
    from edgekit.profiles import shipped_profile
    from edgekit.runtime.bench import BenchConfig, host_device, measure

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib-root", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit_int8_recipes"))
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--steps", default="4,8,20")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--variants", default="fp16,int8-all-ops,int8-recipe")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--latency-only", action="store_true",
                    help="re-time interleaved UNet calls of the bundles in --work; rows from the earlier JSON")
    args = ap.parse_args()
    if args.latency_only:
        data = json.loads((args.out / "int8_recipes.json").read_text())
        data["meta"]["unet_call_ms"] = unet_call_latency(args.work, [r["variant"] for r in data["results"]])
        data["meta"]["unet_call_rounds"] = 15
        (args.out / "int8_recipes.json").write_text(json.dumps(data, indent=2) + "\n")
        (args.out / "int8_recipes.md").write_text(markdown(data["results"], data["meta"]))
        return
    steps = [int(s) for s in args.steps.split(",")]
    chosen = variants(shipped_profile("android-tflite"))
    results = []
    for name in args.variants.split(","):
        bundle = export(name, chosen[name], args.work, args.calib_root, steps)
        offered = json.loads((bundle / "manifest.json").read_text())["sampling"]["schedules"]
        rows, _ = measure(bundle, BenchConfig(steps=tuple(s for s in steps if str(s) in offered),
                                              samples=args.samples, repeats=args.repeats,
                                              reference_model=MODEL, threads=1))
        results.append(summarize(name, bundle, rows))
        print(json.dumps(results[-1]["rows"])[:400], flush=True)
    meta = {"host": host_device(), "python": platform.python_version(), "samples": args.samples,
            "repeats": args.repeats, "steps": steps, "widths": list(WIDTHS), "threads": 1}
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = args.out / "int8_recipes.json"
    if earlier.is_file():  # variants measured by an earlier run (same settings) are kept
        old = json.loads(earlier.read_text())
        if {k: old["meta"].get(k) for k in ("samples", "steps", "widths")} == \
                {k: meta[k] for k in ("samples", "steps", "widths")}:
            ran = {r["variant"] for r in results}
            results = [r for r in old["results"] if r["variant"] not in ran] + results
    order = ["fp16", "int8-all-ops", "int8-recipe"]
    results.sort(key=lambda r: order.index(r["variant"]) if r["variant"] in order else len(order))
    (args.out / "int8_recipes.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (args.out / "int8_recipes.md").write_text(markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
