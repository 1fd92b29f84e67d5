"""Peak memory and time of ``edgekit slim`` (edgekit.compress.slim.slim_model) on UNets of SD-1.5's layout at
small channel scales, and what that predicts for the real 860M-parameter UNet.

Each (setting, scale) runs ``slim_model`` in its own subprocess, one at a time, so its peak RSS (os.wait4's
ru_maxrss) is its own and includes loading the model from disk as the command does; inside it a sampler
(benchmarks/realsize_quantize_memory.PhasePeaks) records the peak of each phase (load, importance, train,
write). The parent kills a child whose RSS passes ``--max-rss-gb`` (this machine is shared) and records
that as the result: the setting needs more than that at that size.

The model: SD-1.5's UNet (blocks, layers, heads, cross-attention width 768, 64x64 latents) with
``block_out_channels`` x scale (scales whose channels are multiples of 64, so width 0.5 keeps whole GroupNorm
groups), random weights, written to disk with the reduced text encoder and VAE (only the UNet is slimmed).
Calibration rows are synthesized as capture writes them (prompted and empty-prompt halves, ``is_uncond``),
so capture is not measured: sample ~ N(0,1), timestep in [0, 1000), text states ~ N(0,1).

Settings (widths 0.5,1.0 as ``edgekit package --widths 1.0,0.5``; package's lr and full-width weight):

  order      --train-steps 0 --importance l1: channels ordered by weight norms, the widths written (no rows)
  train-b1   --train-steps 2 --batch-size 1 --importance l1: sandwich training, one prompted row and its
             empty-prompt twin per step
  train-b16  --train-steps 2 --batch-size 16 --importance l1: the package's batch (32 rows per step with twins)
  taylor     --train-steps 0 --importance taylor: the package's importance (backward passes over 16 rows)
  lean-b1    --train-steps 2 --batch-size 1 --memory lean: the lean memory mode (teacher outputs first and the
             teacher released, one row and its twin per pass, gradient checkpointing, Adafactor)
  lean-b4    the same with --batch-size 4 (four passes per step, gradients accumulated)

The fit: peak RSS = a + b * parameters per setting (least squares); training settings also apart as
a + b * parameters + c * activation units over two latent sizes: what slim's up-front check uses
(edgekit/compress/slim.py, MEMORY_FIT: "train" from train-b1, "lean" from lean-b1). Results ->
benchmarks/results/realsize_slim_memory.{json,md} (merged by key).

    nice -n 15 .venv/bin/python benchmarks/realsize_slim_memory.py --settings order,train-b1 --scales 0.2,0.4
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
NAME = "realsize_slim_memory"
REAL_UNET_PARAMS = 859_520_964  # SD-1.5's UNet (edgekit.zoo.sd15 reduced=False)
SETTINGS = {
    "order": {"train_steps": 0, "importance": "l1", "batch_size": 16},
    "train-b1": {"train_steps": 2, "importance": "l1", "batch_size": 1},
    "train-b16": {"train_steps": 2, "importance": "l1", "batch_size": 16},
    "taylor": {"train_steps": 0, "importance": "taylor", "batch_size": 16},
    "lean-b1": {"train_steps": 2, "importance": "l1", "batch_size": 1, "memory": "lean"},
    "lean-b4": {"train_steps": 2, "importance": "l1", "batch_size": 4, "memory": "lean"},
}
# the line each training setting's batch-1 runs fit (MEMORY_FIT's key) and the phases its peak is taken over
TRAIN_LINES = {"train-b1": ("train", ("train",)), "lean-b1": ("lean", ("teacher", "train"))}
sys.path.insert(0, str(REPO / "benchmarks"))


def prepare(model_dir: Path, scale: float) -> dict:
    """Write the pipeline with the scaled SD-1.5 UNet (own process, so its memory is not counted)."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel

    from edgekit.zoo.sd15 import SD15_UNET, build_sd15_pipeline

    channels = tuple(int(round(c * scale / 64)) * 64 for c in SD15_UNET["block_out_channels"])
    build_sd15_pipeline(model_dir, reduced=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**SD15_UNET, "block_out_channels": channels})
    shutil.rmtree(model_dir / "unet")
    unet.save_pretrained(model_dir / "unet", safe_serialization=True)
    return {"channels": list(channels), "unet_params": int(sum(p.numel() for p in unet.parameters()))}


def _rows(n_prompted: int, latent: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n = 2 * n_prompted
    return {"sample": rng.standard_normal((n, 4, latent, latent)).astype(np.float32),
            "timestep": rng.uniform(0, 1000, size=(n,)).astype(np.float32),
            "encoder_hidden_states": rng.standard_normal((n, 77, 768)).astype(np.float32),
            "is_uncond": np.array([1] * n_prompted + [0] * n_prompted, dtype=np.int8)}


def child(setting: str, model_dir: Path, out: Path, latent: int) -> dict:
    from realsize_quantize_memory import PhasePeaks

    import edgekit.compress.distill as distill
    import edgekit.compress.training_rows as training_rows
    import edgekit.compress.importance as importance
    import edgekit.pipeline as pipeline
    import edgekit.compress.prune as prune
    from edgekit.compress.slim import SlimConfig, slim_model

    peaks = PhasePeaks()
    params = SETTINGS[setting]
    config = SlimConfig(widths=(0.5, 1.0), train_steps=params["train_steps"], importance=params["importance"],
                        batch_size=params["batch_size"], lr=5e-4, full_weight=2.0,
                        memory=params.get("memory", "standard"))
    rows = _rows(max(16, params["batch_size"]), latent)
    training_rows.calibration_rows = lambda *args, **kwargs: rows  # synthesized rows (capture is not measured)

    def phase(name, fn, later=None):
        calls = []

        def wrapped(*args, **kwargs):
            peaks.enter(later if calls and later else name)
            calls.append(1)
            return fn(*args, **kwargs)
        return wrapped

    # the first load is the source model; the later ones are the reload checks of the written widths
    pipeline.load_pipeline = phase("load", pipeline.load_pipeline, later="reload")
    importance.importance_scores = phase("importance", importance.importance_scores)
    distill.train_slimmable = phase("train", distill.train_slimmable)
    training_rows.TeacherOutputs.__init__ = phase("teacher", training_rows.TeacherOutputs.__init__)
    prune.write_structured_model = phase("write", prune.write_structured_model)
    started = time.perf_counter()
    report = slim_model(model_dir, config, out)
    return {"slim_seconds": round(time.perf_counter() - started, 1), "config": config.to_dict(),
            "memory": report["memory"],
            "rows": int(len(rows["sample"])), "training": report["training"], "phases": peaks.close()}


def run_one(setting: str, scale: float, latent: int, max_rss_gb: float, timeout: float) -> dict:
    from measured_child import run_child

    with tempfile.TemporaryDirectory(prefix="rssm-") as tmp:
        model_dir = Path(tmp) / "model"
        made = subprocess.run([sys.executable, __file__, "--prepare", str(model_dir), "--scales", str(scale)],
                              cwd=REPO, capture_output=True, text=True, check=True)
        model = json.loads(made.stdout.strip().splitlines()[-1])
        cmd = [sys.executable, __file__, "--child", setting, "--model-dir", str(model_dir),
               "--out", str(Path(tmp) / "out"), "--latent", str(latent)]
        measured = run_child(cmd, timeout, max_rss_mb=max_rss_gb * 1024, poll=0.1)
    return {"setting": setting, "scale": scale, "latent": latent, **model, **measured}


def fit(runs: list[dict]) -> dict | None:
    """peak = a + b * params (MB) over the completed runs of one setting; None below two sizes."""
    ok = [r for r in runs if "failed" not in r]
    if len({r["unet_params"] for r in ok}) < 2:
        return None
    x = np.array([r["unet_params"] for r in ok], dtype=float)
    y = np.array([r["peak_rss_mb"] for r in ok])
    b, a = np.polyfit(x, y, 1)
    tb, ta = np.polyfit(x, np.array([r["wall_s"] for r in ok]), 1)
    return {"intercept_mb": round(float(a), 1), "bytes_per_param": round(float(b) * 2**20, 2),
            "at_860m_gb": round(float(a + b * REAL_UNET_PARAMS) / 1024, 1),
            "wall_at_860m_s_linear": round(float(ta + tb * REAL_UNET_PARAMS)),
            "params": sorted(int(v) for v in x)}


def activation_units(run: dict) -> float:
    """edgekit.compress.slim's activation units of a batch-1 run: first-block channels / 320 x latent area / 64^2."""
    return run["channels"][0] / 320 * run["latent"] ** 2 / 64**2


def train_fit(runs: list[dict], setting: str = "train-b1") -> dict | None:
    """Training peak = a + b * params + c * activation units, least squares over the completed batch-1 runs of
    ``setting`` at two latent sizes (the peak over its training phases, TRAIN_LINES: the reload checks after
    them hold less). None below three runs."""
    phases = TRAIN_LINES[setting][1]
    ok = [r for r in runs if r["setting"] == setting and "failed" not in r]
    if len(ok) < 3 or len({r["latent"] for r in ok}) < 2:
        return None
    x = np.array([[1.0, r["unet_params"], activation_units(r)] for r in ok])
    y = np.array([max(r["phases"][p]["peak_rss_mb"] for p in phases if p in r["phases"]) * 2**20 for r in ok])
    (a, b, c), *_ = np.linalg.lstsq(x, y, rcond=None)
    out = {"line": TRAIN_LINES[setting][0], "phases": list(phases),
           "intercept_mb": round(a / 2**20, 1), "bytes_per_param": round(b, 2), "mb_per_unit": round(c / 2**20, 1),
           "runs": sorted(f"{r['setting']}-scale{r['scale']:g}-latent{r['latent']}" for r in ok),
           "max_residual_mb": round(float(np.abs(x @ [a, b, c] - y).max()) / 2**20, 1)}
    for batch in (1,) if setting.startswith("lean") else (1, 16):  # lean: one row per pass at any batch
        out[f"at_860m_batch{batch}_gb"] = round((a + b * REAL_UNET_PARAMS + c * batch) / 2**30, 1)
    return out


def write_results(results: dict) -> None:
    import fcntl

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(Path(tempfile.gettempdir()) / f"{NAME}.lock", "w") as lock:  # invocations may run side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        _write_results(results)


def _write_results(results: dict) -> None:
    path = RESULTS / f"{NAME}.json"
    merged = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    merged["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                         "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
    merged["runs"].update(results)
    by_setting: dict[str, list] = {}
    for run in merged["runs"].values():
        by_setting.setdefault(f"{run['setting']} @ {run['latent']}x{run['latent']}", []).append(run)
    merged["fits"] = {s: f for s, runs in sorted(by_setting.items()) if (f := fit(runs))}
    merged["train_fit"] = train_fit(list(merged["runs"].values()))
    merged["lean_fit"] = train_fit(list(merged["runs"].values()), "lean-b1")
    path.write_text(json.dumps(merged, indent=2) + "\n")
    lines = [
        "# edgekit slim: peak memory and time by UNet size",
        "",
        "UNets of SD-1.5's layout (channels x scale; scale 1.0 is the real 860M-parameter UNet), random weights,",
        "synthesized calibration rows, widths 0.5,1.0, one `slim_model` per process (peak RSS = its ru_maxrss,",
        "loading the model included). Written by `benchmarks/realsize_slim_memory.py`; shared 2-core machine",
        "(other jobs' load is in the times).",
        "",
        "| run | setting | channels | UNet params | rows | wall s | peak RSS GB | phase peaks (GB, s) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, run in sorted(merged["runs"].items()):
        phases = ", ".join(f"{k} {v['peak_rss_mb'] / 1024:.2f} ({v['seconds']:.0f})"
                           for k, v in run.get("phases", {}).items())
        lines.append(f"| {key} | {run['setting']} | {run['channels']} | {run['unet_params'] / 1e6:.1f}M "
                     f"| {run.get('rows', '')} | {run['wall_s']} | {run['peak_rss_mb'] / 1024:.2f} | {phases} "
                     f"| {run.get('failed', '')} |")
    lines += ["", "## Linear fit over parameters, and the estimate at 859.5M", "",
              "| setting @ latents | params measured | peak: MB + bytes/param | -> 859.5M | wall s at 859.5M (linear) |",
              "|---|---|---|---|---|"]
    for setting, f in merged["fits"].items():
        lines.append(f"| {setting} | {', '.join(f'{p / 1e6:.1f}M' for p in f['params'])} | {f['intercept_mb']:.0f} MB + "
                     f"{f['bytes_per_param']:.1f} B/param | {f['at_860m_gb']} GB | {f['wall_at_860m_s_linear']} |")
    t = merged["train_fit"]
    if t:
        lines += ["", "## Training: parameters and activations apart", "",
                  "Activations grow with channels x latent area, parameters with channels squared, so a line over",
                  "parameters alone overstates activations when extrapolated. Train-phase peaks of the batch-1 runs",
                  f"({', '.join(t['runs'])}) fitted as a + b * params + c * units (units: first-block channels / 320",
                  "x latent area / 64^2 x batch; SD-1.5 at 64x64, batch 1 = 1 unit):", "",
                  f"- {t['intercept_mb']:.0f} MB + {t['bytes_per_param']:.1f} B/param + {t['mb_per_unit']:.0f} MB/unit "
                  f"(largest residual {t['max_residual_mb']} MB)",
                  f"- at 859.5M, 64x64: batch 1 {t['at_860m_batch1_gb']} GB, batch 16 (the package's) "
                  f"{t['at_860m_batch16_gb']} GB"]
    t = merged["lean_fit"]
    if t:
        lines += ["", "## The lean memory mode (`--memory lean`)", "",
                  "Teacher outputs computed first and the teacher released, one prompted row and its twin per pass",
                  "(gradients accumulated over the batch), diffusers' gradient checkpointing, Adafactor. Peaks over",
                  f"the teacher and train phases of the batch-1 runs ({', '.join(t['runs'])}), the same fit:", "",
                  f"- {t['intercept_mb']:.0f} MB + {t['bytes_per_param']:.1f} B/param + {t['mb_per_unit']:.0f} MB/unit "
                  f"(largest residual {t['max_residual_mb']} MB)",
                  f"- at 859.5M, 64x64, batch 1: {t['at_860m_batch1_gb']} GB (one row and its twin per pass at any "
                  "batch; lean-b4 against lean-b1 in the notes)"]
    notes = merged.get("notes", [])
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    (RESULTS / f"{NAME}.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="order,train-b1")
    parser.add_argument("--scales", default="0.2,0.4")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--max-rss-gb", type=float, default=6.0)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--prepare", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        print(json.dumps(prepare(args.prepare, float(args.scales))))
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.model_dir, args.out, args.latent)))
        return 0
    for scale in [float(s) for s in args.scales.split(",")]:
        for setting in args.settings.split(","):
            key = f"{setting}-scale{scale:g}-latent{args.latent}"
            result = run_one(setting, scale, args.latent, args.max_rss_gb, args.timeout)
            print(f"{key}: {result['wall_s']} s, peak {result['peak_rss_mb'] / 1024:.2f} GB {result.get('failed', '')}",
                  flush=True)
            write_results({key: result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
