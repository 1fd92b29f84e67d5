"""Screen of LiteRT INT8 activation modes for one width's UNet, paired with the fp16 bundle's images.

Each recipe quantizes the width's float32 UNet (.tflite) through edgekit.targets.tflite.quantize (the export's code
path: int8 weights on the profile's conv/FC ops, the timestep embedding float), calibrated on 64 rows of the width's
calibration set (even indices, batches of 2, as the export's 32 representative batches); then:
- UNet rel-err against torch on 16 held-out calibration rows (odd indices) and ms per batch-2 call (one thread);
- images: the recipe's UNet with the INT8 bundle's text encoder and VAE decoder, on the first --samples images of the
  grid (image i asks digit i % 10 with seed --seed + i), paired with the fp16 bundle's images of the same grid (a
  cached .npy of at least --samples images from benchmarks/int8_recipes.py), with int8_recipes.paired_row.
Recipes: int8 / int16 / dynamic (int8_recipe.widths ``activations``), and weight-only int8 (float activations: the
error of the weights alone). Writes one JSON.

    .venv/bin/python benchmarks/int8_unet_screen.py --float-unet W05.tflite --calib-dir DIR/calib-w0.5 \
        --bundle WORK/int8-recipe --fp16-images WORK/images/fp16/w0.50_s8_seed1000_n1000_*.npy --steps 8 --samples 300
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "edgekit" / "zoo" / "tiny_digits" / "slim"
sys.path.insert(0, str(ROOT / "benchmarks"))


def build(recipe: str, float_unet: Path, out: Path, rows: dict, profile) -> dict:
    from edgekit.targets.tflite import quantize

    if recipe == "weight-only":
        from ai_edge_quantizer import quantizer as aeq
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
        from ai_edge_quantizer.qtyping import TFLOperationName

        q = aeq.Quantizer(str(float_unet))
        for op in profile.int8_recipe.int8_ops:
            q.add_weight_only_config(".*", TFLOperationName(op), num_bits=8)
        scope = ".*(" + "|".join(profile.int8_float_scopes) + ").*"
        q.update_quantization_recipe(scope, TFLOperationName.ALL_SUPPORTED, algorithm_key=AlgorithmName.NO_QUANTIZE)
        out.write_bytes(bytes(q.quantize(enable_progress_report=False).quantized_model))
        return {"recipe": "weight-only int8 on " + ", ".join(profile.int8_recipe.int8_ops) + ", float activations"}
    plan = {"int8_ops": list(profile.int8_recipe.int8_ops), "activations": recipe}
    return quantize(float_unet, out, "int8", rows, 2, float_scopes=profile.int8_float_scopes, plan=plan)


def main() -> None:
    import int8_recipes as bench

    from edgekit.calibration import CalibrationSet
    from edgekit.components import component_spec, export_module, inputs_from_calibration, run_torch
    from edgekit.loader import open_model
    from edgekit.profiles import shipped_profile
    from edgekit.quality import digits, relative_error
    from edgekit.quality.digit_classifier import DigitScorer
    from edgekit.runtime.runners import LiteRTRunner
    from edgekit.runtime.sampler import BundleSampler, Components, sample

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--float-unet", type=Path, required=True, help="float32 .tflite of the width's UNet")
    ap.add_argument("--calib-dir", type=Path, required=True)
    ap.add_argument("--width", type=float, default=0.5)
    ap.add_argument("--bundle", type=Path, required=True, help="INT8 tflite bundle: its text encoder and VAE decoder")
    ap.add_argument("--fp16-images", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--recipes", default="int8,int16,dynamic,weight-only")
    ap.add_argument("--work", type=Path, default=Path("/tmp/edgekit_int8_unet_screen"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_unet_screen.json")
    args = ap.parse_args()

    profile = shipped_profile("android-tflite")
    pipe = open_model(MODEL, width=args.width)
    spec = component_spec(pipe, "unet")
    data = CalibrationSet.open(args.calib_dir, MODEL).load("unet")
    idx = np.arange(len(next(iter(data.values()))))
    cal, held = inputs_from_calibration(spec, data, idx[::2][:64]), inputs_from_calibration(spec, data, idx[1::2][:16])
    reference = run_torch(export_module(pipe, "unet"), spec, held)

    sampler = BundleSampler(args.bundle, threads=1)
    key = f"{args.width:.2f}"
    comps = sampler.components(key)
    names = [t["name"] for t in sampler.manifest["components"]["unet"]["widths"][key]["inputs"]]
    guidance, mode, timestep_cond = sampler.guidance()
    prompts, seeds, labels = digits.grid(args.samples, args.seed)
    labels = np.asarray(labels)
    fp16_images = np.load(args.fp16_images)[:args.samples]
    scorer = DigitScorer.load()
    fp16_pred = scorer.logits_and_features(fp16_images)[0].argmax(1)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for recipe in args.recipes.split(","):
        path = args.work / f"unet_{recipe}.tflite"
        facts = build(recipe, args.float_unet, path, cal, profile)
        runner = LiteRTRunner(path)
        got = np.concatenate([runner.run({k: v[i:i + 2] for k, v in held.items()}) for i in range(0, 16, 2)])
        one = {k: v[:2] for k, v in held.items()}
        runner.run(one)
        t0 = time.perf_counter()
        for _ in range(20):
            runner.run(one)
        ms = (time.perf_counter() - t0) / 20 * 1000

        def unet(*arrays, runner=runner):
            return runner.run(dict(zip(names, arrays)))

        t0 = time.perf_counter()
        images, _ = sample(Components(text_encoder=comps.text_encoder, unet=unet, vae_decoder=comps.vae_decoder),
                           sampler.encode, sampler.table(args.steps), list(prompts), list(seeds), guidance,
                           sampler.latent_shape, sampler.scaling_factor, mode=mode, timestep_cond=timestep_cond)
        generate_s = time.perf_counter() - t0
        pred = scorer.logits_and_features(images)[0].argmax(1)
        row = bench.paired_row(labels, pred, fp16_pred, images, fp16_images, None)
        row.pop("psnr_vs_float_diff_db")
        rows.append({"recipe": recipe, "label": facts["recipe"], "unet_bytes": path.stat().st_size,
                     "unet_rel_err_vs_torch": round(float(relative_error(got, reference)), 4),
                     "ms_per_call_batch2": round(ms, 2), "generate_s": round(generate_s, 1), **row})
        print(json.dumps(rows[-1]), flush=True)
    meta = {"width": args.width, "steps": args.steps, "samples": args.samples, "seed": args.seed,
            "calibration_rows": 64, "held_out_rows": 16, "threads": 1,
            "command": "benchmarks/int8_unet_screen.py " + " ".join(sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
