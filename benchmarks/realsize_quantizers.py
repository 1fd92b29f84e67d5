"""Peak memory and time of the NNCF and torch-FX quantizers (and ORT static's histogram calibrations) on UNets
of SD-1.5's layout at small scales, and what that predicts for the real 860M-parameter UNet.

Each (method, scale) runs in its own subprocess, one at a time, so its peak RSS (os.wait4's ru_maxrss) is its
own; inside it a sampler (benchmarks/realsize_quantize_memory.PhasePeaks) records the peak of each phase:

  build      the pipeline with the scaled UNet (what every method starts from)
  export     the FP32 ONNX export the ONNX methods start from (edgekit.quantize.ort_static.export_fp32_onnx)
  quantize   the method itself: ``Quantizer.quantize_component`` for nncf and fx (the quantize stage's call,
             no float units), ``quantize_onnx_static`` for the ORT histogram routes

Methods: ``nncf``, ``fx``, and ORT static with ``entropy`` / ``percentile`` ranges either from edgekit's
bounded collector (``<method>-bounded``: passes over a bounded subset of tensors feeding ORT's own
HistogramCollector) or from ORT's calibrator (``<method>-plain``: every measured tensor an output of one run).

The fit: peak RSS = a + b * parameters over the measured scales (least squares); its value at 860M
parameters is the estimate edgekit's up-front refusal uses (edgekit/quantize/memory.py).
Results -> benchmarks/results/realsize_quantizers.{json,md} (merged by key).

    nice -n 15 .venv/bin/python benchmarks/realsize_quantizers.py --methods nncf,fx --scales 0.125,0.25 --latent 32
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
NAME = "realsize_quantizers"
REAL_UNET_PARAMS = 859_520_964  # SD-1.5's UNet (edgekit.zoo.sd15 reduced=False)
sys.path.insert(0, str(REPO / "benchmarks"))


def child(method: str, scale: float, latent: int, n_rows: int) -> dict:
    from realsize_quantize_memory import PhasePeaks, _pipe

    from edgekit.components import example_inputs
    from edgekit.quantize import QuantizeOptions, get_quantizer

    peaks = PhasePeaks()
    out: dict = {}
    peaks.enter("build")
    pipe, channels = _pipe(scale, latent)
    out["unet_params"] = int(sum(p.numel() for p in pipe.unet.parameters()))
    out["channels"] = list(channels)
    rows = example_inputs(pipe, "unet", batch=n_rows, seed=0)
    with tempfile.TemporaryDirectory(prefix="rsq-") as tmp:
        root, work = Path(tmp) / "root", Path(tmp) / "work"
        if method in ("nncf", "fx"):
            from edgekit.quantize import nncf as nncf_module

            peaks.around(nncf_module, "export_fp32_onnx", "export", after="quantize")
            quantizer = get_quantizer(method)
            peaks.enter("quantize")
            made = quantizer.quantize_component(pipe, "unet", rows, QuantizeOptions(), [], root, work)
            out["files_bytes"] = sum((root / f).stat().st_size for f in made.files)
        else:
            from edgekit.quantize.ort_static import export_fp32_onnx, quantize_onnx_static

            calibrate_method, route = method.split("-")
            fp32 = work / "fp32" / "model.onnx"
            peaks.enter("export")
            export_fp32_onnx(pipe, "unet", fp32)
            del pipe
            peaks.enter("quantize")
            report = quantize_onnx_static(fp32, rows, root / "model.onnx", calibrate_method=calibrate_method,
                                          activations="uint8", bounded_ranges=(route == "bounded"),
                                          batch_size=n_rows)
            out["report"] = {k: report.get(k) for k in ("range_collector", "tensors_measured", "ranges_seconds",
                                                        "quantize_linear_nodes", "seconds")}
    out["phases"] = peaks.close()
    return out


def run_one(method: str, scale: float, latent: int, n_rows: int, timeout: float) -> dict:
    from measured_child import run_child

    cmd = [sys.executable, __file__, "--child", method, "--scales", str(scale), "--latent", str(latent),
           "--rows", str(n_rows)]
    return {"method": method, "scale": scale, "latent": latent, "rows": n_rows, **run_child(cmd, timeout)}


def fit(runs: list[dict]) -> dict | None:
    """peak = a + b * params (MB) over the runs of one method; None below two scales."""
    ok = [r for r in runs if "failed" not in r and "unet_params" in r]
    if len({r["unet_params"] for r in ok}) < 2:
        return None
    x = np.array([r["unet_params"] for r in ok], dtype=float)
    out = {}
    for label, key in (("peak", None), ("quantize_phase", "quantize")):
        y = np.array([r["peak_rss_mb"] if key is None else r["phases"][key]["peak_rss_mb"] for r in ok])
        b, a = np.polyfit(x, y, 1)
        t = np.array([r["wall_s"] for r in ok])
        tb, ta = np.polyfit(x, t, 1)
        out[label] = {"intercept_mb": round(float(a), 1), "mb_per_million_params": round(float(b) * 1e6, 2),
                      "bytes_per_param": round(float(b) * 2**20, 1),
                      "at_860m_gb": round(float(a + b * REAL_UNET_PARAMS) / 1024, 1)}
        out["wall_at_860m_s_linear"] = round(float(ta + tb * REAL_UNET_PARAMS), 0)
    out["scales"] = sorted({r["scale"] for r in ok})
    return out


def write_results(results: dict) -> None:
    from realsize_quantize_memory import merged_results

    path = RESULTS / f"{NAME}.json"
    merged = merged_results(path, results)
    by_method: dict[str, list] = {}
    for run in merged["runs"].values():
        by_method.setdefault(f"{run['method']} @ {run['latent']}x{run['latent']}, {run['rows']} rows", []).append(run)
    merged["fits"] = {m: f for m, runs in sorted(by_method.items()) if (f := fit(runs))}
    path.write_text(json.dumps(merged, indent=2) + "\n")
    lines = [
        "# NNCF, torch FX and ORT histogram calibration: peak memory and time by UNet size",
        "",
        "UNets of SD-1.5's layout (channels x scale; scale 1.0 is the real 860M-parameter UNet), random weights,",
        "random rows, one method per process (peak RSS = its ru_maxrss, which includes building the pipeline).",
        "Written by `benchmarks/realsize_quantizers.py`; shared 2-core machine (other agents' load in the times).",
        "",
        "| run | method | UNet params | rows | wall s | peak RSS GB | phase peaks (GB, s) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, run in sorted(merged["runs"].items()):
        phases = ", ".join(f"{k} {v['peak_rss_mb'] / 1024:.2f} ({v['seconds']:.0f})" for k, v in run.get("phases", {}).items())
        note = run.get("failed", "") + (f" {run['report']['range_collector']}" if run.get("report") else "")
        lines.append(f"| {key} | {run['method']} | {run.get('unet_params', 0) / 1e6:.0f}M | {run['rows']} | {run['wall_s']} "
                     f"| {run['peak_rss_mb'] / 1024:.2f} | {phases} | {note.strip()} |")
    lines += ["", "## Linear fit over parameters, and the estimate at 860M", "",
              "| method @ latents | scales | whole-process peak: MB + bytes/param -> 860M | quantize phase -> 860M | wall s at 860M (linear; noisy on this shared machine) |",
              "|---|---|---|---|---|"]
    for method, f in merged["fits"].items():
        p, q = f["peak"], f["quantize_phase"]
        lines.append(f"| {method} | {f['scales']} | {p['intercept_mb']:.0f} MB + {p['bytes_per_param']:.1f} B/param -> "
                     f"{p['at_860m_gb']} GB | {q['at_860m_gb']} GB | {f['wall_at_860m_s_linear']:.0f} |")
    notes = [f"- {key}: {run['note']}" for key, run in sorted(merged["runs"].items()) if run.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + notes
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="nncf,fx")
    parser.add_argument("--scales", default="0.125,0.25")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, float(args.scales), args.latent, args.rows)))
        return 0
    for scale in [float(s) for s in args.scales.split(",")]:
        for method in args.methods.split(","):
            key = f"{method}-scale{scale:g}-latent{args.latent}-rows{args.rows}"
            result = run_one(method, scale, args.latent, args.rows, args.timeout)
            print(f"{key}: {result['wall_s']} s, peak {result['peak_rss_mb'] / 1024:.2f} GB {result.get('failed', '')}",
                  flush=True)
            write_results({key: result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
