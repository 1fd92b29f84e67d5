"""Export timings and sizes, side by side in one run (never asserted in tests).

Two studies, each step in its own subprocess so that its peak RSS is its own:

  converters   The UNet of a model through both TFLite routes, litert-torch and onnx2tf (with the
               GroupNorm/GELU rewrites of edgekit.targets.patches): conversion time, operator set,
               Flex ops, whether the stock LiteRT interpreter loads it, error vs torch, size.
               -> benchmarks/results/export_tflite_converters.{json,md}
  targets      Every (target, precision) bundle of a model (default: the embedded tiny digits model),
               INT8 calibrated on `edgekit calibrate` shards: export time, bundle size, per-component
               error vs torch in each runtime that ran here.
               -> benchmarks/results/export_targets.{json,md}
  real-scale   A pipeline of real SD-1.5 layer sizes (860M-parameter UNet, random weights, config written
               locally): the UNet to ort-web fp32 (external data, split below the browser's 2 GB) and
               fp16, to tflite fp16 (fp32 cannot fit a 2 GB flatbuffer) and to Core ML fp16.
               -> benchmarks/results/export_real_scale.{json,md}

    .venv/bin/python benchmarks/export_real_scale.py converters [--model DIR]
    .venv/bin/python benchmarks/export_real_scale.py targets [--model DIR]
    .venv/bin/python benchmarks/export_real_scale.py real-scale [--steps ort-fp32,ort-fp16,tflite-fp16,coreml-fp16]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _job(batch: int, pipe, name="unet"):
    from edgekit.targets.base import ComponentJob

    return ComponentJob(pipe, name, 1.0, "unet", batch, "fp32")


def _unet_check(pipe, path: Path, layout: str) -> dict:
    from edgekit.components import component_spec, example_inputs, export_module, run_torch
    from edgekit.runtime.runners import LiteRTRunner, compare

    spec = component_spec(pipe, "unet")
    inputs = example_inputs(pipe, "unet", batch=2, seed=1)
    expected = run_torch(export_module(pipe, "unet"), spec, inputs)
    runner = LiteRTRunner(path)
    feed = {k: (v.transpose(0, 2, 3, 1) if layout == "NHWC" and v.ndim == 4 else v) for k, v in inputs.items()}
    actual = runner.run(feed)
    if layout == "NHWC" and actual.ndim == 4:
        actual = actual.transpose(0, 3, 1, 2)
    return {"runtime": runner.runtime, **compare(actual, expected)}


def one_converter(model: str, converter: str, out: str) -> dict:
    from edgekit.components import export_module
    from edgekit.loader import open_model
    from edgekit.targets.tflite import CONVERTERS, tflite_ops

    pipe = open_model(model)
    path = Path(out)
    t0 = time.perf_counter()
    facts = CONVERTERS[converter](_job(2, pipe), export_module(pipe, "unet"), path)
    seconds = time.perf_counter() - t0
    ops = tflite_ops(path)
    result = {"converter": facts["converter"], "layout": facts["layout"], "convert_s": round(seconds, 1),
              "bytes": path.stat().st_size, "op_types": len(ops), "ops": ops,
              "flex_ops": [o for o in ops if o.startswith("Flex")],
              "params": int(sum(p.numel() for p in pipe.unet.parameters()))}
    try:
        result.update(_unet_check(pipe, path, facts["layout"]))
        result["loads_in_stock_litert"] = True
    except Exception as exc:  # the measurement records a refusal instead of stopping the study
        result["loads_in_stock_litert"] = False
        result["error"] = str(exc).splitlines()[0]
    return result


def one_real_scale(step: str, model: str, out_dir: str) -> dict:
    import torch

    from edgekit.loader import open_model
    from edgekit.profiles import shipped_profile
    from edgekit.targets import get_target
    from edgekit.targets.base import ComponentJob

    torch.set_num_threads(2)
    pipe = open_model(model)
    target_name, precision = step.split("-")
    target = get_target({"ort": "ort-web", "tflite": "tflite", "coreml": "coreml"}[target_name])
    profile = shipped_profile({"ort-web": "web-ort", "tflite": "android-tflite", "coreml": "ios-coreml"}[target.name])
    profile = profile.with_precision(precision)
    batch = None if target.name == "ort-web" else profile.unet_batch
    stage = Path(out_dir) / step
    stage.mkdir(parents=True)
    job = ComponentJob(pipe, "unet", 1.0, "unet/w1.00", batch, precision)
    t0 = time.perf_counter()
    entry = target.write(job, stage, profile)
    seconds = time.perf_counter() - t0
    files = [p for p in stage.rglob("*") if p.is_file()]
    result = {"step": step, "target": target.name, "precision": precision, "export_s": round(seconds, 1),
              "bytes": sum(p.stat().st_size for p in files), "files": len(files),
              "largest_file_bytes": max(p.stat().st_size for p in files),
              "params": int(sum(p.numel() for p in pipe.unet.parameters())),
              "external_data": entry.get("external_data"), "join": entry.get("join")}
    if target.name == "ort-web":
        # one UNet call in onnxruntime at batch 2 vs torch (the check export runs), timed
        from edgekit.components import component_spec, example_inputs, export_module, run_torch
        from edgekit.runtime.runners import OrtRunner, compare

        inputs = example_inputs(pipe, "unet", batch=2, seed=1)
        expected = run_torch(export_module(pipe, "unet"), component_spec(pipe, "unet"), inputs)
        t1 = time.perf_counter()
        runner = OrtRunner(stage / entry["file"], threads=2)
        actual = runner.run(inputs)
        result["ort_load_and_run_s"] = round(time.perf_counter() - t1, 1)
        result.update(compare(actual, expected))
    elif target.name == "coreml":
        result["ops"] = sum(entry["ops"].values())
        result["const_dtypes"] = entry["const_dtypes"]
    else:
        result["flex_ops"] = entry["flex_ops"]
    return result


def _child(args: list[str], timeout: float) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        # onnx2tf prints its diagnosis on stdout, Python tracebacks go to stderr
        lines = [l for l in (proc.stdout + "\n" + proc.stderr).strip().splitlines() if l.strip()] or ["no output"]
        # onnx2tf names the ONNX node it stopped at; keep that and the exception line
        keys = [l.strip().replace("\x1b[31m", "").replace("\x1b[0m", "") for l in lines
                if "onnx_op_name" in l or l.startswith(("ValueError", "TypeError", "RuntimeError"))]
        error = " | ".join(dict.fromkeys(keys)) if keys else lines[-1]
        return {"failed": True, "error": error[:600], "wall_s": round(wall, 1), "returncode": proc.returncode}
    result = json.loads(lines[-1])
    result["wall_s"] = round(wall, 1)
    return result


def _machine() -> dict:
    import psutil

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "note": "machine shared with other jobs while measuring; times are indicative, compare within a run"}


def study_converters(model: str | None) -> dict:
    from edgekit.pipeline import check_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        if model is None:
            from edgekit.zoo.sd15 import build_sd15_pipeline

            model = str(build_sd15_pipeline(Path(tmp) / "sd15r", reduced=True))
            label = "SD-1.5 architecture, reduced widths (edgekit.zoo.sd15, random weights)"
        else:
            label = str(check_model_dir(model))
        rows = {}
        for converter in ("litert-torch", "onnx2tf"):
            rows[converter] = _child(["--one-converter", model, converter, str(Path(tmp) / f"{converter}.tflite")],
                                     timeout=3600)
    both = [r for r in rows.values() if not r.get("failed")]
    ratio = (rows["onnx2tf"]["convert_s"] / rows["litert-torch"]["convert_s"]) if len(both) == 2 else None
    return {"study": "tflite converters on the UNet", "model": label, "machine": _machine(), "results": rows,
            "onnx2tf_over_litert_torch_convert_time": round(ratio, 2) if ratio else None}


def study_real_scale(steps: list[str]) -> dict:
    from edgekit.zoo.sd15 import build_sd15_pipeline

    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("EDGEKIT_BENCH_TMP")) as tmp:
        t0 = time.perf_counter()
        model = build_sd15_pipeline(Path(tmp) / "sd15", reduced=False)
        build_s = time.perf_counter() - t0
        for step in steps:
            rows.append(_child(["--one-real-scale", step, str(model), tmp], timeout=3600))
            rows[-1].setdefault("step", step)
    return {"study": "SD-1.5-size UNet export", "build_pipeline_s": round(build_s, 1), "machine": _machine(),
            "results": rows}


TARGET_PRECISIONS = [("ort-web", "fp32"), ("ort-web", "fp16"), ("ort-web", "int8"), ("tflite", "fp32"),
                     ("tflite", "fp16"), ("tflite", "int8"), ("coreml", "fp16"), ("coreml", "w8"),
                     ("coreml", "palettize6")]


def study_targets(model: str | None) -> dict:
    from edgekit.bundle import component_entries, entry_label, lookup
    from edgekit.pipeline import check_model_dir, default_model_dir

    model = str(check_model_dir(model or default_model_dir()))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgekit.cli", "calibrate", "--model", model, "--samples", "20",
                        "--out", str(calib)], check=True, capture_output=True)
        calibrate_s = time.perf_counter() - t0
        for target, precision in TARGET_PRECISIONS:
            out = Path(tmp) / f"{target}-{precision}"
            argv = ["export", "--model", model, "--target", target, "--precision", precision, "--out", str(out)]
            if precision == "int8":
                argv += ["--calib", str(calib)]
            t1 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "edgekit.cli", *argv], capture_output=True, text=True)
            row = {"target": target, "precision": precision, "export_s": round(time.perf_counter() - t1, 1)}
            if proc.returncode != 0:
                row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:400]
                rows.append(row)
                continue
            m = json.loads((out / "manifest.json").read_text())
            row["bundle_bytes"] = sum(f["bytes"] for f in m["files"].values())
            row["components"] = {}
            for name, width, entry in component_entries(m):
                record = lookup(m["verification"], name, width)
                row["components"][entry_label(name, width)] = {
                    "bytes": entry["bytes"], "tolerance": record["tolerance"],
                    "checks": {c["runtime"]: (c["rel_err"] if "rel_err" in c else c.get("skipped", "structure ok"))
                               for c in record["checks"]}}
            rows.append(row)
    return {"study": "every target and precision", "model": model, "calibrate_s": round(calibrate_s, 1),
            "machine": _machine(), "results": rows}


def _md_targets(r: dict) -> str:
    lines = [f"# Bundles of {r['model']} (INT8 calibrated on 20 generated images)", "",
             "| target | precision | export s | bundle MiB | component | MiB | rel-err vs torch (runtime) |",
             "|---|---|---|---|---|---|---|"]
    for x in r["results"]:
        if "error" in x:
            lines.append(f"| {x['target']} | {x['precision']} | {x['export_s']} | failed: {x['error']} | | | |")
            continue
        first = True
        for label, c in x["components"].items():
            checks = "; ".join(f"{v:.1e} ({k.split(' (')[0]})" if isinstance(v, float) else f"{v} ({k.split(' (')[0]})"
                               for k, v in c["checks"].items())
            head = f"| {x['target']} | {x['precision']} | {x['export_s']} | {x['bundle_bytes'] / 2**20:.2f} |" if first \
                else "| | | | |"
            lines.append(f"{head} {label} | {c['bytes'] / 2**20:.2f} | {checks} |")
            first = False
    return "\n".join(lines) + "\n"


def _md_converters(r: dict) -> str:
    lines = [f"# TFLite converters on the UNet ({r['model']})", "",
             "| converter | convert s | size MiB | op types | Flex ops | stock LiteRT loads | rel-err vs torch | layout | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, x in r["results"].items():
        if x.get("failed"):
            lines.append(f"| {name} | failed: {x['error']} | | | | | | | |")
            continue
        err = f"{x['rel_err']:.2e}" if "rel_err" in x else x.get("error", "")
        lines.append(f"| {x['converter']} | {x['convert_s']} | {x['bytes'] / 2**20:.1f} | {x['op_types']} | "
                     f"{', '.join(x['flex_ops']) or 'none'} | {x['loads_in_stock_litert']} | {err} | {x['layout']} | "
                     f"{x['peak_rss_mb']:.0f} |")
    if r.get("onnx2tf_over_litert_torch_convert_time"):
        lines += ["", f"onnx2tf takes {r['onnx2tf_over_litert_torch_convert_time']}x the conversion time of litert-torch."]
    return "\n".join(lines) + "\n"


def _md_real_scale(r: dict) -> str:
    lines = [f"# SD-1.5-size UNet export (pipeline built locally in {r['build_pipeline_s']} s)", "",
             "| step | export s | peak RSS MiB | total MiB | files | largest file MiB | check |",
             "|---|---|---|---|---|---|---|"]
    for x in r["results"]:
        if x.get("failed"):
            lines.append(f"| {x['step']} | failed after {x['wall_s']} s: {x['error']} | | | | | |")
            continue
        check = f"ORT rel-err {x['rel_err']:.1e}" if "rel_err" in x else \
            (f"{x['ops']} ops, consts {x['const_dtypes']}" if "ops" in x else f"Flex ops: {x.get('flex_ops') or 'none'}")
        lines.append(f"| {x['step']} | {x['export_s']} | {x['peak_rss_mb']:.0f} | {x['bytes'] / 2**20:.0f} | {x['files']} | "
                     f"{x['largest_file_bytes'] / 2**20:.0f} | {check} |")
    joins = {x.get("join") for x in r["results"] if x.get("join")}
    if joins:
        lines += ["", "How the runtime joins split weights: " + "; ".join(sorted(joins))]
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--one-converter":
        result = one_converter(*sys.argv[2:5])
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--one-real-scale":
        result = one_real_scale(*sys.argv[2:5])
        result["peak_rss_mb"] = _peak_rss_mb()
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["converters", "targets", "real-scale"])
    parser.add_argument("--model", default=None, help="converters: model directory (default: SD-1.5 reduced)")
    parser.add_argument("--steps", default="ort-fp32,ort-fp16,tflite-fp16,coreml-fp16")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.study == "converters":
        result = study_converters(args.model)
        name, md = "export_tflite_converters", _md_converters(result)
    elif args.study == "targets":
        result = study_targets(args.model)
        name, md = "export_targets", _md_targets(result)
    else:
        result = study_real_scale(args.steps.split(","))
        name, md = "export_real_scale", _md_real_scale(result)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
