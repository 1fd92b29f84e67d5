"""Side-by-side INT8 benchmark of the UNet, in one run on one machine: FP32 ONNX vs ORT dynamic INT8 (what
users do instead) vs each edgekit quantize method.

For every variant: UNet bytes on disk (and the ratio to FP32 ONNX), CPU latency of one UNet call at the
guidance batch of one image (2 rows) as a ratio to FP32 ONNX (median of interleaved rounds, so every
variant sees the same machine load), held-out rel-err vs FP32 torch, and end-to-end prompt accuracy and
Frechet distance with only the UNet swapped (text encoder and VAE stay FP32 for every row, so the
quality column isolates the UNet's quantization).

    .venv/bin/python benchmarks/quantize.py [--samples-per-digit 10] [--calib DIR]

Writes benchmarks/results/quantize.json and quantize.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"

NO_BUDGET = {"float_budget": 0.0}
VARIANTS = [  # (row name, method, options)
    ("ort-static A8W8 int8 minmax", "ort-static", {"calibrate_method": "minmax", "activations": "int8", **NO_BUDGET}),
    ("ort-static A8W8 uint8 minmax", "ort-static", {"calibrate_method": "minmax", "activations": "uint8", **NO_BUDGET}),
    ("ort-static A8W8 uint8 minmax, float budget 0.2% (CLI default)", "ort-static",
     {"calibrate_method": "minmax", "activations": "uint8", "float_budget": 0.002}),
    ("ort-static A8W8 int8 percentile", "ort-static",
     {"calibrate_method": "percentile", "activations": "int8", **NO_BUDGET}),
    ("ort-static A16W8 minmax", "ort-static", {"calibrate_method": "minmax", "activations": "int16", **NO_BUDGET}),
    ("fx (torch INT8)", "fx", NO_BUDGET),
    ("nncf (transformer model type)", "nncf", NO_BUDGET),
]


def capture_calibration(model_dir: Path, out: Path, steps: int, guidance: float) -> Path:
    from edgekit.calibration import CalibrationConfig, capture, read_prompts
    from edgekit.calibration import default_prompts_file
    from edgekit.pipeline import load_pipeline

    prompts = read_prompts(default_prompts_file())
    config = CalibrationConfig(prompts=tuple(prompts), steps=steps, guidance_scale=guidance, seed=1234,
                               max_rows={"text_encoder": 64, "unet": 512, "vae_decoder": 64})
    out.mkdir(parents=True)
    capture(load_pipeline(model_dir), config, out, model_dir)
    return out


def bench_session(path: Path):
    """An ORT CPU session whose threads do not spin after a run: the torch rows are timed right after the
    ORT rows on the same two cores, and spinning ORT workers would be charged to torch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def timed_rounds(runners: dict, inputs: dict, rounds: int, calls: int) -> dict:
    """Median ms per call of each runner, measured in interleaved rounds."""
    for run in runners.values():
        for _ in range(3):
            run(inputs)
    samples = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            started = time.perf_counter()
            for _ in range(calls):
                run(inputs)
            samples[name].append((time.perf_counter() - started) * 1000 / calls)
    return {name: float(np.median(v)) for name, v in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--calib", type=Path, default=None, help="reuse a calibration directory of --model")
    parser.add_argument("--samples-per-digit", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--variants", default=None, help="comma-separated subset of the method rows (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import onnxruntime
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekit.calibration import CalibrationSet
    from edgekit.components import component_spec, export_module, inputs_from_calibration, run_torch
    from edgekit.loader import open_model
    from edgekit.onnx_export import run_onnx
    from edgekit.pipeline import check_model_dir, load_pipeline, sampling_defaults
    from edgekit.quality import relative_error
    from edgekit.quality.digit_classifier import evaluate_digits
    from edgekit.quantize import QuantizeOptions, quantize_model, split_rows
    from edgekit.quantize.artifact import install_onnx_component
    from edgekit.quantize.ort_static import export_fp32_onnx

    model_dir = check_model_dir(args.model)
    defaults = sampling_defaults(model_dir)
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-qbench-"))
    started_all = time.perf_counter()
    calib_dir = args.calib or capture_calibration(model_dir, tmp / "calib", defaults.steps, defaults.guidance_scale)
    calib = CalibrationSet.open(calib_dir, model_dir)
    float_pipe = load_pipeline(model_dir)
    spec = component_spec(float_pipe, "unet")
    rows = calib.load("unet")
    n = len(rows["timestep"])
    options = QuantizeOptions()
    _, held = split_rows(n, options.holdout, options.seed)
    held_inputs = inputs_from_calibration(spec, rows, held)
    reference = run_torch(export_module(float_pipe, "unet"), spec, held_inputs)
    # One image's guidance batch (unconditional + conditional rows of the same step).
    pair = {k: v[:2] for k, v in held_inputs.items()}

    fp32_path = tmp / "fp32" / "unet.onnx"
    export_fp32_onnx(float_pipe, "unet", fp32_path)
    dynamic_path = tmp / "dynamic" / "unet.onnx"
    dynamic_path.parent.mkdir(parents=True)
    t0 = time.perf_counter()
    quantize_dynamic(str(fp32_path), str(dynamic_path), weight_type=QuantType.QInt8)
    dynamic_seconds = time.perf_counter() - t0

    rows_out = []
    onnx_paths = {"FP32 ONNX": fp32_path, "ORT dynamic INT8": dynamic_path}
    runners = {}
    quant_info = {"FP32 ONNX": {"seconds": 0.0}, "ORT dynamic INT8": {"seconds": round(dynamic_seconds, 2)}}
    pipes = {}
    for name, path in onnx_paths.items():
        session = bench_session(path)
        runners[name] = (lambda s: (lambda x: run_onnx(s, x)))(session)
        pipe = load_pipeline(model_dir)
        install_onnx_component(pipe, "unet", path)
        pipes[name] = pipe
    wanted = VARIANTS if args.variants is None else [v for v in VARIANTS if v[0] in args.variants.split(",")]
    for name, method, opts in wanted:
        out = tmp / name.replace(" ", "_").replace("(", "").replace(")", "")
        print(f"quantizing {name} ...", file=sys.stderr, flush=True)
        manifest = quantize_model(model_dir, calib_dir, method, out, components=("unet",),
                                  options=QuantizeOptions(**opts))
        info = manifest["components"]["unet"]
        quant_info[name] = {"seconds": info["seconds"], "heldout_rel_err": info["heldout_rel_err"],
                            "report": info["report"], "most_sensitive": [r["unit"] for r in info["sensitivity"][:3]]}
        pipe = open_model(out)
        pipes[name] = pipe
        if info["kind"] == "onnx":
            onnx_paths[name] = out / info["files"][0]
            session = bench_session(onnx_paths[name])
            runners[name] = (lambda s: (lambda x: run_onnx(s, x)))(session)
        else:
            module = export_module(pipe, "unet")
            runners[name] = (lambda m: (lambda x: run_torch(m, spec, x)))(module)
            quant_info[name]["bytes"] = sum((out / f).stat().st_size for f in info["files"])
    torch_fp32 = export_module(float_pipe, "unet")
    runners["FP32 torch (eager)"] = lambda x: run_torch(torch_fp32, spec, x)

    print("timing ...", file=sys.stderr, flush=True)
    latency = timed_rounds(runners, pair, args.rounds, args.calls)
    fp32_bytes = fp32_path.stat().st_size
    fp32_ms = latency["FP32 ONNX"]
    for name, run in runners.items():
        if name == "FP32 torch (eager)":
            size = None
        elif name in onnx_paths:
            size = onnx_paths[name].stat().st_size
        else:
            size = quant_info[name]["bytes"]
        err = relative_error(run(held_inputs), reference)
        row = {"variant": name, "unet_bytes": size, "bytes_ratio": None if size is None else size / fp32_bytes,
               "ms_per_unet_call": latency[name], "latency_ratio": latency[name] / fp32_ms,
               "heldout_rel_err": err, "quantize_seconds": quant_info.get(name, {}).get("seconds")}
        if name in quant_info and "report" in quant_info[name]:
            row["most_sensitive"] = quant_info[name]["most_sensitive"]
        rows_out.append(row)

    for row in rows_out:
        name = row["variant"]
        pipe = pipes.get(name, float_pipe)
        print(f"evaluating {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        report = evaluate_digits(pipe, defaults.steps, args.samples_per_digit, 0, defaults.guidance_scale)
        row.update({"prompt_accuracy": report.prompt_accuracy, "frechet_distance": report.frechet_distance,
                    "frechet_floor": report.frechet_floor,
                    "frechet_floor_std": getattr(report, "frechet_floor_std", None),
                    "eval_seconds": round(time.perf_counter() - t0, 1)})

    fp32_acc = next(r["prompt_accuracy"] for r in rows_out if r["variant"] == "FP32 ONNX")
    dyn = next(r for r in rows_out if r["variant"] == "ORT dynamic INT8")
    static_rows = [r for r in rows_out if r["variant"] not in ("FP32 ONNX", "ORT dynamic INT8", "FP32 torch (eager)")]
    # Two readings of "quality": the end-to-end numbers (prompt accuracy and FD; at 100 images FD moves
    # by a few points between equally good models, see frechet_floor_std), and the held-out rel-err of
    # the UNet output, which separates the methods far more finely.
    goals = {
        "static_beats_dynamic_on_latency_and_end_to_end_quality": [
            r["variant"] for r in static_rows if r["latency_ratio"] < dyn["latency_ratio"]
            and r["prompt_accuracy"] >= dyn["prompt_accuracy"] and r["frechet_distance"] <= dyn["frechet_distance"]],
        "static_beats_dynamic_on_latency_and_heldout_error": [
            r["variant"] for r in static_rows if r["latency_ratio"] < dyn["latency_ratio"]
            and r["prompt_accuracy"] >= dyn["prompt_accuracy"] and r["heldout_rel_err"] < dyn["heldout_rel_err"]],
        "int8_unet_bytes_at_most_0.27x": [r["variant"] for r in static_rows if r["bytes_ratio"] <= 0.27],
        "accuracy_within_3_points_of_fp32": [r["variant"] for r in static_rows
                                             if r["prompt_accuracy"] >= fp32_acc - 0.03],
    }
    result = {
        "model": str(model_dir), "calibration": str(calib_dir), "calibration_rows": n, "heldout_rows": int(len(held)),
        "steps": defaults.steps, "guidance_scale": defaults.guidance_scale,
        "samples_per_digit": args.samples_per_digit, "latency_batch": 2,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch_threads": torch.get_num_threads(), "onnxruntime": onnxruntime.__version__,
                    "torch": torch.__version__},
        "rows": rows_out, "goals_met_by": goals, "seconds": round(time.perf_counter() - started_all, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quantize.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# UNet INT8: FP32 ONNX vs ORT dynamic vs edgekit quantize methods",
        "",
        f"Model {model_dir.name}, {n} calibration rows ({len(held)} held out), {defaults.steps} steps, guidance "
        f"{defaults.guidance_scale}, {args.samples_per_digit * 10} images per row, latency = one UNet call at batch 2 "
        f"(median of {args.rounds} interleaved rounds x {args.calls} calls, {platform.processor() or 'CPU'}, "
        f"torch threads {torch.get_num_threads()}). Only the UNet differs between rows.",
        "",
        "| variant | UNet MB | bytes vs FP32 | ms/call | latency vs FP32 ONNX | held-out rel-err | prompt acc | FD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows_out:
        size = "-" if r["unet_bytes"] is None else f"{r['unet_bytes'] / 1e6:.2f}"
        ratio = "-" if r["bytes_ratio"] is None else f"{r['bytes_ratio']:.3f}x"
        lines.append(f"| {r['variant']} | {size} | {ratio} | {r['ms_per_unet_call']:.2f} | {r['latency_ratio']:.2f}x | "
                     f"{r['heldout_rel_err']:.4f} | {r['prompt_accuracy']:.2f} | {r['frechet_distance']:.2f} |")
    floor, floor_std = rows_out[0]["frechet_floor"], rows_out[0].get("frechet_floor_std")
    spread = "" if floor_std is None else f" (std {floor_std:.2f} over resamples: FD differences of a few points are noise)"
    lines += ["", f"Frechet floor (real vs real, same count): {floor:.2f}{spread}.", "", "Goals met by:", ""]
    lines += [f"- {k}: {', '.join(v) or 'none'}" for k, v in goals.items()]
    lines.append("")
    (args.out / "quantize.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
