"""Key/value token downsampling (export --attention-downsample) on the embedded digits model, paired with the same
bundle without it: what it costs in quality, where quality means something (real weights).

Every variant is an ort-web bundle of the slimmable digits model at width 1 (precision --precision, default fp32),
differing only in the profile's attention_downsample factor; each is run by its own runtime (Python onnxruntime,
edgekit.runtime.sampler) on the same prompts, seeds and initial noise, on seeds nothing was tuned on (--seed,
default 2000; the factor was fixed before any image was looked at). Per (factor, steps), against factor 1 at the
same steps on the same images:
- paired digit-accuracy difference (held-out digit classifier) with Tango's and Newcombe's paired 95% intervals
  and a paired bootstrap (the interval helpers of benchmarks/int8_recipes.py);
- PSNR of the downsampled image against factor 1's, and PSNR of each against the float torch model (full width,
  its default steps; capped at 100 dB for identical images, so the fp32 baseline at the default steps reads ~100),
  each a mean with its Student-t 95% interval;
- latency of one image end to end, every variant and row once per round, rounds interleaved (one thread), median
  and 25..75%, the ratio to factor 1 (the same graph otherwise: fused attention in both).
At this size the highest-resolution level has 8x8 = 64 tokens, so speed here says little: the real-size table is
where the method's cost (4,096 tokens at SD-1.5's 64x64 latents) is measured.

    .venv/bin/python benchmarks/attention_downsample.py [--samples 300] [--seed 2000] [--steps 8,20] [--factors 1,2]

Writes benchmarks/results/attention_downsample.{json,md}.
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


def export(factor: int, precision: str, steps, work: Path, calib: Path | None) -> Path:
    from edgekit.profiles import shipped_profile
    from edgekit.targets.base import ExportRequest, export_bundle

    out = work / f"{precision}-kv{factor}"
    if (out / "manifest.json").is_file():
        return out
    profile = shipped_profile("web-ort").with_precision(precision).with_attention_downsample(factor)
    export_bundle(ExportRequest(model_dir=MODEL, out=out, target="ort-web", profile=profile, widths=(1.0,),
                                calib_dir=calib, steps=tuple(steps), force=True))
    return out


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = ["# Key/value token downsampling on the digits model, paired with the undownsampled bundle", "",
             f"Commit {meta['commit']}, `{meta['command']}`; {meta['host']}, {meta['threads']} thread; ort-web "
             f"{meta['precision']} bundles at width 1 run by Python onnxruntime; {meta['samples']} images per row "
             f"(seeds {meta['seed']}..{meta['seed'] + meta['samples'] - 1}, not tuned on); baseline: the same bundle "
             "with attention_downsample 1 (fused attention in both).", ""]
    lines += paired_table(data["paired"], "factor", "variant")
    if data["latency"]:
        lines += ["", f"Latency of one image end to end ({meta['rounds']} interleaved rounds, one thread):", "",
                  "| factor | steps | ms median [25..75%] | vs factor 1 (medians) | per-round ratio median [25..75%] |",
                  "|---:|---:|---|---:|---|"]
        for r in data["latency"]:
            q = r.get("per_round_ratio")
            lines.append(f"| {r['factor']} | {r['steps']} | {r['ms'][1]:.1f} [{r['ms'][0]:.1f}, {r['ms'][2]:.1f}] | "
                         + (f"{r['ratio_of_medians']:.2f} | {q[1]:.2f} [{q[0]:.2f}, {q[2]:.2f}] |" if q else "1 | - |"))
    lines += ["", "Bundles: " + "; ".join(f"factor {b['factor']}: UNet {b['unet_bytes']:,} bytes, rel-err vs torch "
                                           f"{b['unet_rel_err']:.2e}, pooled attentions {b['pooled']}"
                                           for b in data["bundles"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    from edgekit.quality.evaluator import ModelQuality
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--steps", default="8,20")
    ap.add_argument("--factors", default="1,2")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--calib", type=Path, default=None, help="calibration directory (int8 needs it)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit_attention_downsample"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    factors = [int(f) for f in args.factors.split(",")]
    if factors[0] != 1:
        sys.exit("--factors: the first must be 1, the baseline the others are paired with")
    bundles = {f: export(f, args.precision, steps, args.work, args.calib) for f in factors}
    quality = ModelQuality(MODEL, args.samples, args.seed)
    grid = quality.grid
    images = {(f, s): cached_images(bundles[f], f"kv{f}", grid, WIDTH, s, args.work / "images")
              for f in factors for s in steps}
    reference = quality.reference()
    scorer = quality.digits.scorer
    preds = {k: scorer.logits_and_features(v)[0].argmax(axis=1) for k, v in images.items()}
    rows = []
    for (f, s), img in images.items():
        if f != 1:
            rows.append({"factor": f, "steps": s, **paired(grid.labels, preds[(f, s)], preds[(1, s)], img,
                                                          images[(1, s)], reference)})
            print(json.dumps(rows[-1]), flush=True)
    latency = []
    if args.rounds:
        times = interleaved_latency({f"kv{f}": bundles[f] for f in factors},
                                    [(f"kv{f}", WIDTH, s) for s in steps for f in factors], grid, args.rounds)
        for (name, _, s), t in times.items():
            t, base = np.asarray(t), np.asarray(times[("kv1", WIDTH, s)])
            row = {"factor": int(name[2:]), "steps": s, "ms": [round(float(x), 1) for x in np.percentile(t, [25, 50, 75])]}
            if name != "kv1":
                row["ratio_of_medians"] = round(float(np.median(t) / np.median(base)), 3)
                row["per_round_ratio"] = [round(float(x), 3) for x in np.percentile(t / base, [25, 50, 75])]
            latency.append(row)
    facts = []
    for f, path in bundles.items():
        m = json.loads((path / "manifest.json").read_text())
        unet = m["components"]["unet"]["widths"][WIDTH]
        check = m["verification"]["unet"]["widths"][WIDTH]["checks"][0]
        facts.append({"factor": f, "unet_bytes": unet["bytes"], "unet_rel_err": check.get("rel_err"),
                      "pooled": len((unet.get("attention_downsample") or {}).get("attentions", []))})
    meta = {**run_record("benchmarks/attention_downsample.py " + " ".join(sys.argv[1:])), "threads": 1,
            "samples": args.samples, "seed": args.seed, "steps": steps, "factors": factors, "precision": args.precision,
            "rounds": args.rounds}
    data = {"meta": meta, "bundles": facts, "paired": rows, "latency": latency}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention_downsample.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "attention_downsample.md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
