"""Peak memory and time of ORT static INT8 on UNets of SD-1.5's layout at growing width, up to real size.

Each step runs in its own subprocess, so its peak RSS (os.wait4's ru_maxrss) is its own; inside a step a
sampler reads /proc/self/status every 50 ms and records the peak of each phase.

  export   the UNet (SD-1.5 blocks, channels x scale, random weights) to ONNX as the quantize stage does
           (edgekit.quantize.ort_static.export_fp32_onnx: onnxsim below 2 GB, one external-data file above)
  bounded  edgekit's path: activation ranges by in-graph min/max, one row per run
           (ort_static.minmax_ranges), then ORT's QDQ writer (quantize_static with those ranges)
  plain    onnxruntime's own calibrator inside quantize_static (every batch's reductions of the whole graph
           in one session) -- the path that was OOM-killed at 24 GB on the real-size UNet at 64x64 latents
  check    held-out relative error of the INT8 file vs the FP32 one in ORT (2 rows not calibrated on)

Calibration rows are random (sample ~ N(0,1), timestep in [0, 1000), text states ~ N(0,1)); the point is
memory and time, not accuracy. Results -> benchmarks/results/realsize_quantize_memory.{json,md} (merged by
key, so sizes can be measured in separate invocations).

    nice -n 5 .venv/bin/python benchmarks/realsize_quantize_memory.py --scales 0.25,0.5 --latent 32 --rows 4
    nice -n 5 .venv/bin/python benchmarks/realsize_quantize_memory.py --scales 1.0 --latent 32 --rows 4 --steps export,bounded,check
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
NAME = "realsize_quantize_memory"
SD15_CHANNELS = (320, 640, 1280, 1280)


class PhasePeaks:
    """Peak RSS per named phase of this process, sampled from /proc/self/status."""

    def __init__(self) -> None:
        self.phase = "start"
        self.peaks: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self._stop = False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def _sample(self) -> None:
        while not self._stop:
            rss = self.rss_mb()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), rss)
            time.sleep(0.05)

    def enter(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + now - self._t0
        self._t0 = now
        self.phase = phase

    def around(self, module, name: str, phase: str, after: str) -> None:
        """Count calls of ``module.name`` (patched for the rest of this process) as ``phase``; ``after`` follows."""
        original = getattr(module, name)

        def timed(*args, **kwargs):
            self.enter(phase)
            try:
                return original(*args, **kwargs)
            finally:
                self.enter(after)

        setattr(module, name, timed)

    def close(self) -> dict:
        self.enter("end")
        self._stop = True
        self._thread.join()
        return {k: {"peak_rss_mb": round(self.peaks.get(k, 0.0), 1), "seconds": round(self.seconds.get(k, 0.0), 2)}
                for k in self.seconds if k not in ("start", "end")}


def _pipe(scale: float, latent: int):
    """A StableDiffusionPipeline whose UNet has SD-1.5's layout at ``scale`` x its channels (text encoder and
    VAE reduced: only the UNet is measured)."""
    import torch
    from diffusers import UNet2DConditionModel

    from edgekit.pipeline import load_pipeline
    from edgekit.zoo.sd15 import SD15_UNET, build_sd15_pipeline

    base = Path(tempfile.mkdtemp(prefix="rsqm-")) / "pipe"
    build_sd15_pipeline(base, reduced=True)
    pipe = load_pipeline(base)
    channels = tuple(max(32, int(round(c * scale / 32)) * 32) for c in SD15_CHANNELS)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**SD15_UNET, "block_out_channels": channels, "sample_size": latent,
                                   "cross_attention_dim": pipe.text_encoder.config.hidden_size})
    pipe.register_modules(unet=unet.eval())
    return pipe, channels


def _rows(onnx_path: Path, n: int, seed: int) -> dict[str, np.ndarray]:
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    rng = np.random.default_rng(seed)
    rows = {}
    for inp in graph.input:
        shape = [n] + [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]]
        if inp.name == "timestep":
            rows[inp.name] = rng.uniform(0, 1000, size=shape).astype(np.float32)
        else:
            rows[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return rows


def child(step: str, workdir: Path, scale: float, latent: int, n_rows: int) -> dict:
    """One step in this process; prints its result as JSON on the last line."""
    peaks = PhasePeaks()
    out: dict = {}
    fp32 = workdir / "fp32" / "model.onnx"
    if step == "export":
        from edgekit.quantize.ort_static import export_fp32_onnx, onnx_bytes

        peaks.enter("build")
        pipe, channels = _pipe(scale, latent)
        out["unet_params"] = int(sum(p.numel() for p in pipe.unet.parameters()))
        out["channels"] = list(channels)
        peaks.enter("export")
        out["graph"] = export_fp32_onnx(pipe, "unet", fp32)
        out["fp32_bytes"] = onnx_bytes(fp32)
    elif step in ("bounded", "plain"):
        from edgekit.quantize.ort_static import onnx_bytes, quantize_onnx_static

        rows = _rows(fp32, n_rows, seed=0)
        peaks.enter("quantize")
        target = workdir / step / "model.onnx"
        if step == "bounded":
            # phases: the range pass, then ORT's QDQ writer
            from edgekit.quantize import ort_static

            peaks.around(ort_static, "minmax_ranges", "ranges", after="qdq_writer")
        report = quantize_onnx_static(fp32, rows, target, activations="uint8", per_channel=True,
                                      bounded_ranges=(step == "bounded"), batch_size=min(n_rows, 8))
        out["report"] = {k: report[k] for k in ("range_collector", "quantize_linear_nodes", "seconds", "files")}
        out["int8_bytes"] = onnx_bytes(target)
    elif step == "check":
        import onnxruntime as ort

        from edgekit.quality import relative_error

        rows = _rows(fp32, 2, seed=1)  # rows the quantizer never saw
        options = ort.SessionOptions()
        options.log_severity_level = 3
        peaks.enter("fp32_run")
        reference = ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"]).run(None, rows)[0]
        for name in ("bounded", "plain"):
            path = workdir / name / "model.onnx"
            if path.exists():
                peaks.enter(f"{name}_run")
                actual = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, rows)[0]
                out[f"{name}_heldout_rel_err"] = round(relative_error(actual, reference), 5)
    out["phases"] = peaks.close()
    return out


def run_step(step: str, workdir: Path, scale: float, latent: int, n_rows: int, timeout: float) -> dict:
    from measured_child import run_child

    cmd = [sys.executable, __file__, "--child", step, "--workdir", str(workdir), "--scales", str(scale),
           "--latent", str(latent), "--rows", str(n_rows)]
    return {"step": step, **run_child(cmd, timeout)}


def merged_results(path: Path, results: dict) -> dict:
    """The runs already in ``path`` (a results JSON, merged by key) updated with ``results``, and this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    merged["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    merged["runs"].update(results)
    return merged


def write_results(results: dict) -> None:
    path = RESULTS / f"{NAME}.json"
    merged = merged_results(path, results)
    path.write_text(json.dumps(merged, indent=2) + "\n")
    lines = [
        "# ORT static INT8: peak memory and time by UNet size",
        "",
        "UNets of SD-1.5's layout (channels x scale; scale 1.0 is the real 860M-parameter UNet), random weights,",
        "random calibration rows, QDQ uint8 activations / int8 per-channel weights on Conv/MatMul/Gemm. Each step",
        "in its own process (peak RSS = its ru_maxrss). *bounded*: edgekit's ranges (in-graph min/max, one row",
        "per run) + ORT's QDQ writer; *plain*: onnxruntime's calibrator in quantize_static. Written by",
        "`benchmarks/realsize_quantize_memory.py`; shared 2-core machine, so times carry other agents' load.",
        "",
        "| run | UNet params | FP32 bytes | step | wall s | peak RSS GB | phase peaks (GB) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, run in sorted(merged["runs"].items()):
        for step in run["steps"]:
            phases = ", ".join(f"{k} {v['peak_rss_mb'] / 1024:.2f} ({v['seconds']:.0f} s)"
                               for k, v in step.get("phases", {}).items())
            note = step.get("failed", "")
            for k in ("bounded_heldout_rel_err", "plain_heldout_rel_err"):
                if k in step:
                    note += f"{k.split('_')[0]} held-out rel-err {step[k]}; "
            if "int8_bytes" in step:
                note += f"INT8 {step['int8_bytes'] / max(run.get('fp32_bytes', 1), 1):.3f}x bytes"
            lines.append(f"| {key} | {run.get('unet_params', 0) / 1e6:.0f}M | {run.get('fp32_bytes', 0) / 2**30:.2f} GiB "
                         f"| {step['step']} | {step['wall_s']} | {step['peak_rss_mb'] / 1024:.2f} | {phases} | {note} |")
    notes = [f"- {key}: {run['note']}" for key, run in sorted(merged["runs"].items()) if run.get("note")]
    if notes:
        lines += ["", "Notes:", ""] + notes
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="0.25,0.5")
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--steps", default="export,bounded,plain,check")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--child")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.workdir), float(args.scales), args.latent, args.rows)))
        return 0
    for scale in [float(s) for s in args.scales.split(",")]:
        key = f"scale{scale:g}-latent{args.latent}-rows{args.rows}"
        run: dict = {"scale": scale, "latent": args.latent, "rows": args.rows, "steps": []}
        with tempfile.TemporaryDirectory(prefix="rsqm-") as tmp:
            for step in args.steps.split(","):
                result = run_step(step, Path(tmp), scale, args.latent, args.rows, args.timeout)
                for k in ("unet_params", "fp32_bytes", "channels"):
                    if k in result:
                        run[k] = result.pop(k)
                run["steps"].append(result)
                print(f"{key} {step}: {result['wall_s']} s, peak {result['peak_rss_mb'] / 1024:.2f} GB"
                      + (f" FAILED {result['failed']}" if "failed" in result else ""), flush=True)
                write_results({key: run})
                if "failed" in result and step == "export":
                    break
    return 0


if __name__ == "__main__":
    sys.exit(main())
