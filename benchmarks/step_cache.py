"""Step caching (export --cache, DeepCache) on the embedded digits model, paired with the uncached loop of the same
bundle: what it costs in quality, where quality means something (real weights), and what it saves end to end.

One ort-web bundle of the slimmable digits model at width 1 (precision --precision, default fp32) offering cache
intervals 1 and --intervals; every interval runs that bundle's own loop (Python onnxruntime,
edgekit.runtime.sampler following the manifest's plan) on the same prompts, seeds and initial noise, on seeds
nothing was tuned on (--seed, default 3000; the intervals were fixed before any image was looked at). Per
(interval, steps), against interval 1 at the same steps on the same images:
- paired digit-accuracy difference (held-out digit classifier) with Tango's and Newcombe's paired 95% intervals
  and a paired bootstrap (the interval helpers of benchmarks/int8_recipes.py);
- PSNR of the cached image against interval 1's, and PSNR of each against the float torch model (full width, its
  default steps), each a mean with its Student-t 95% interval;
- latency of one image end to end (tokenizer, text encoder, the UNet loop with guidance, VAE decoder), every
  (interval, steps) row once per round, rounds interleaved, one thread; median and 25..75%, and the speed-up over
  interval 1 at the same steps (the baseline every ratio divides by: the same bundle's plain loop).
Also the graphs' sizes and one call of each UNet graph (plain, full with feature, shallow), interleaved.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_cache.py [--samples 300] [--seed 3000] [--steps 8,20]
        [--intervals 2,3,5] [--rounds 7]

Writes benchmarks/results/step_cache.{json,md} (step_cache_int8.* for --precision int8: the full graph quantized from
the UNet's calibration rows, the shallow one from rows the export captures on the cached loop).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_recipes import cached_images, interleaved_latency  # noqa: E402
from paired import paired, paired_table, run_record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "edgekit" / "zoo" / "tiny_digits" / "slim"
WIDTH = "1.00"


def export(intervals, precision: str, steps, work: Path, calib: Path | None) -> Path:
    from edgekit.profiles import shipped_profile, with_cache
    from edgekit.targets.base import ExportRequest, export_bundle

    out = work / f"{precision}-cache{'_'.join(map(str, intervals))}"
    if (out / "manifest.json").is_file():
        return out
    profile = with_cache(shipped_profile("web-ort").with_precision(precision), list(intervals))
    export_bundle(ExportRequest(model_dir=MODEL, out=out, target="ort-web", profile=profile, widths=(1.0,),
                                calib_dir=calib, steps=tuple(steps), force=True))
    return out


def graph_latency(bundle: Path, rounds: int) -> list[dict]:
    """One call of each UNet graph at batch 2 (a guidance pair), interleaved, one thread."""
    from edgekit.bundle import load_array, read_manifest
    from edgekit.runtime.bench import time_rounds
    from edgekit.runtime.runners import runner_for

    m = read_manifest(bundle)
    out = []
    runners, feeds = {}, {}
    for name in ("unet", "unet_full", "unet_shallow"):
        entry = m["components"][name]["widths"][WIDTH]
        runners[name] = runner_for(bundle, entry, threads=1)
        data = m["verification"][name]["widths"][WIDTH]["data"]["inputs"]
        feeds[name] = {k: load_array(bundle, v) for k, v in data.items()}
    times = time_rounds(lambda k, _r: runners[k].run(feeds[k]), list(runners), rounds * 5)
    base = np.median(times["unet"])
    for name, t in times.items():
        entry = m["components"][name]["widths"][WIDTH]
        out.append({"graph": name, "bytes": entry["bytes"], "ms": [round(float(x), 3) for x in np.percentile(t, [25, 50, 75])],
                    "vs_unet": round(float(np.median(t) / base), 3)})
    return out


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = ["# Step caching (DeepCache) on the digits model, paired with the uncached loop", "",
             f"Commit {meta['commit']}, `{meta['command']}`; {meta['host']}, {meta['threads']} thread "
             f"(OMP_NUM_THREADS=1, onnxruntime intra-op threads 1); one ort-web {meta['precision']} bundle at width 1 "
             f"run by Python onnxruntime; {meta['samples']} images per row (seeds {meta['seed']}.."
             f"{meta['seed'] + meta['samples'] - 1}, not tuned on). Baseline every difference and ratio is against: "
             "cache interval 1 (the same bundle's plain loop, the plain UNet graph every step) at the same steps."
             + (f" INT8 calibration (edgekit calibrate, its meta.json config): {meta['calibration']}; the full graph "
                "quantized from its UNet rows, the shallow graph from rows the export captured on the cached loop."
                if meta.get("calibration") else ""), ""]
    lines += paired_table(data["paired"], "interval", "cached")
    if data["latency"]:
        lines += ["", f"Latency of one image end to end ({meta['rounds']} interleaved rounds, one thread; speed-up = "
                      "interval 1's median / this row's median at the same steps):", "",
                  "| interval | steps | full / shallow steps | ms median [25..75%] | speed-up (medians) | per-round "
                  "speed-up median [25..75%] |", "|---:|---:|---|---|---:|---|"]
        for r in data["latency"]:
            q = r.get("per_round_speedup")
            lines.append(f"| {r['interval']} | {r['steps']} | {r['full_steps']} / {r['steps'] - r['full_steps']} | "
                         f"{r['ms'][1]:.1f} [{r['ms'][0]:.1f}, {r['ms'][2]:.1f}] | "
                         + (f"{r['speedup_of_medians']:.2f} | {q[1]:.2f} [{q[0]:.2f}, {q[2]:.2f}] |" if q else "1 | - |"))
    if data.get("graphs"):
        lines += ["", "One call of each UNet graph (batch 2, interleaved, one thread):", "",
                  "| graph | bytes | ms median [25..75%] | vs plain unet |", "|---|---:|---|---:|"]
        for g in data["graphs"]:
            lines.append(f"| {g['graph']} | {g['bytes']:,} | {g['ms'][1]:.3f} [{g['ms'][0]:.3f}, {g['ms'][2]:.3f}] | "
                         f"{g['vs_unet']:.3f} |")
    lines += ["", "Verification against torch (rel-err, onnxruntime CPU): " + "; ".join(
        f"{k} {v:.2e}" for k, v in data["verification"].items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    from edgekit.quality.evaluator import ModelQuality
    from edgekit.step_cache import cache_plan

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--steps", default="8,20")
    ap.add_argument("--intervals", default="2,3,5")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--calib", type=Path, default=None, help="calibration directory (int8 needs it)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit_step_cache"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    intervals = [1] + [int(n) for n in args.intervals.split(",") if int(n) != 1]
    bundle = export(intervals, args.precision, steps, args.work, args.calib)
    quality = ModelQuality(MODEL, args.samples, args.seed)
    grid = quality.grid
    images = {(n, s): cached_images(bundle, "cache", grid, WIDTH, s, args.work / "images", interval=n)
              for n in intervals for s in steps}
    reference = quality.reference()
    scorer = quality.digits.scorer
    preds = {k: scorer.logits_and_features(v)[0].argmax(axis=1) for k, v in images.items()}
    rows = []
    for (n, s), img in images.items():
        if n != 1:
            rows.append({"interval": n, "steps": s, **paired(grid.labels, preds[(n, s)], preds[(1, s)], img,
                                                            images[(1, s)], reference)})
            print(json.dumps(rows[-1]), flush=True)
    latency, graphs = [], []
    if args.rounds:
        keys = [("cache", WIDTH, s, n) for s in steps for n in intervals]
        times = interleaved_latency({"cache": bundle}, keys, grid, args.rounds)
        for (_, _, s, n), t in times.items():
            t, base = np.asarray(t), np.asarray(times[("cache", WIDTH, s, 1)])
            row = {"interval": n, "steps": s, "full_steps": cache_plan(n, s).count("full"),
                   "ms": [round(float(x), 1) for x in np.percentile(t, [25, 50, 75])]}
            if n != 1:
                row["speedup_of_medians"] = round(float(np.median(base) / np.median(t)), 3)
                row["per_round_speedup"] = [round(float(x), 3) for x in np.percentile(base / t, [25, 50, 75])]
            latency.append(row)
            print(json.dumps(row), flush=True)
        graphs = graph_latency(bundle, args.rounds)
    m = json.loads((bundle / "manifest.json").read_text())
    verification = {name: m["verification"][name]["widths"][WIDTH]["checks"][0]["rel_err"]
                    for name in ("unet", "unet_full", "unet_shallow")}
    if args.calib is not None:
        meta_calib = json.loads((args.calib / "meta.json").read_text())["config"]
        calib_note = {k: meta_calib.get(k) for k in ("steps", "samples", "guidance_scale", "seed")}
    else:
        calib_note = None
    meta = {**run_record("OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_cache.py " + " ".join(sys.argv[1:])),
            "calibration": calib_note, "threads": 1, "samples": args.samples, "seed": args.seed, "steps": steps,
            "intervals": intervals, "precision": args.precision, "rounds": args.rounds,
            "baseline": "cache interval 1 of the same bundle at the same steps"}
    data = {"meta": meta, "paired": rows, "latency": latency, "graphs": graphs, "verification": verification}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "step_cache" if args.precision == "fp32" else f"step_cache_{args.precision}"
    (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
