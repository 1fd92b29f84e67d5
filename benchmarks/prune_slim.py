"""Measure pruning and slimmable widths on the default model, side by side in one run.

    .venv/bin/python benchmarks/prune_slim.py [--recover-steps 300] [--slim-steps 300] [--samples-per-digit 10]

Rows: the full model, prune ratios 0.25 and 0.5 (before and after recovery distillation) and slimmable widths
0.5 / 0.75 / 1.0 (importance-ordered only, and after sandwich training). Every compressed model is written
by the same library calls as `edgekit prune` / `edgekit slim` and re-loaded through edgekit.load_pipeline
(at its width) before it is measured. Columns: UNet params, UNet MACs, torch CPU latency of one UNet call
at the pipeline's guidance batch (2) as a ratio to full, prompt accuracy and Frechet distance at 20 steps.
Writes benchmarks/results/prune_slim.json and prune_slim.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Thread count must be fixed before torch loads: torch.set_num_threads alone left OpenMP spinning on this
# shared machine (a distillation step measured 5x slower than with OMP_NUM_THREADS=1).
if "--threads" in sys.argv:
    os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1]
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def interleaved_latency_ms(unets: dict, repeats: int) -> dict:
    """Median ms of one UNet call (batch 2) per model, timed round-robin so that load from other processes on
    a shared machine falls on every model alike (timing them one after another gave ratios above 1 for
    smaller models)."""
    some = next(iter(unets.values()))
    cfg = some.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    ctx = torch.randn(2, 16, cfg.cross_attention_dim, generator=gen)
    t = torch.tensor([500.0, 500.0])
    times = {name: [] for name in unets}
    with torch.inference_mode():
        for unet in unets.values():
            for _ in range(3):
                unet(x, t, ctx)
        for _ in range(repeats):
            for name, unet in unets.items():
                start = time.perf_counter()
                unet(x, t, ctx)
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(v) for name, v in times.items()}


def same_shape_unets(model_dir, names: list[str]) -> dict:
    """UNets with the shapes of each benchmark row, rebuilt from the source model: latency depends on the
    shapes only (used by --latency-only to re-time an earlier run's rows)."""
    from edgekit.compress.prune import PruneConfig, prune_unet
    from edgekit.pipeline import load_pipeline
    from edgekit.unet_slicing import plan_for_width, sliced_unet

    base = load_pipeline(model_dir).unet
    out = {}
    for name in names:
        if name.startswith("prune"):
            out[name] = prune_unet(base, PruneConfig(ratio=float(name.split()[1])))[0]
        elif name.startswith("slim"):
            scope = name[name.index("[") + 1:name.index("]")]
            width = float(name.split()[1][1:])
            out[name] = sliced_unet(base, plan_for_width(base, width, scope)) if width < 1.0 else base
        else:
            out[name] = base
    return out


def measure(name: str, model_dir: Path, width: float | None, args, extra: dict | None = None) -> dict:
    from edgekit.compress.prune import count_params
    from edgekit.pipeline import load_pipeline, sampling_defaults
    from edgekit.quality.digit_classifier import evaluate_digits
    from edgekit.structure import unet_macs

    pipe = load_pipeline(model_dir, width=width)
    guidance = sampling_defaults(model_dir).guidance_scale
    started = time.perf_counter()
    report = evaluate_digits(pipe, args.steps, args.samples_per_digit, args.seed, guidance)
    row = {"name": name, "width": width or 1.0, "params": count_params(pipe.unet), "unet_macs": unet_macs(pipe.unet, tokens=16),
           "prompt_accuracy": report.prompt_accuracy,
           "frechet_distance": report.frechet_distance, "eval_seconds": round(time.perf_counter() - started, 1),
           **(extra or {})}
    print(f"{name:34s} params {row['params']:>9,}  MACs {row['unet_macs'] / 1e6:7.1f} M  "
          f"acc {row['prompt_accuracy']:.3f}  FD {row['frechet_distance']:.2f}", flush=True)
    LOADED[name] = pipe.unet
    return row


LOADED: dict = {}  # row name -> the UNet it measured, for the interleaved latency pass


def main(argv=None) -> int:
    from edgekit.calibration import CalibrationConfig, capture, read_prompts
    from edgekit.calibration import default_prompts_file
    from edgekit.compress.prune import PruneConfig, prune_model
    from edgekit.compress.slim import SlimConfig, slim_model
    from edgekit.pipeline import check_model_dir, load_pipeline, sampling_defaults

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--recover-steps", type=int, default=300)
    parser.add_argument("--slim-steps", type=int, default=300)
    parser.add_argument("--importance", default="taylor")
    parser.add_argument("--recover-lr", type=float, default=1e-4)
    parser.add_argument("--slim-lr", type=float, default=2e-4)
    parser.add_argument("--full-weight", type=float, default=4.0)
    parser.add_argument("--samples-per-digit", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--calib-samples", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--latency-only", action="store_true",
                        help="re-time the rows of an existing prune_slim.json on same-shape UNets, interleaved")
    parser.add_argument("--add-slim", type=Path, default=None, metavar="DIR",
                        help="measure a slim output trained elsewhere (e.g. the shipped one) at each of its widths, "
                             "add its rows to an existing prune_slim.json and re-time every row together")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_dir = check_model_dir(args.model)
    if args.add_slim is not None:
        return add_slim(args, model_dir)
    if args.latency_only:
        result = json.loads((args.out / "prune_slim.json").read_text())
        rows = result["rows"]
        latency = interleaved_latency_ms(same_shape_unets(model_dir, [r["name"] for r in rows]), args.repeats)
        for row in rows:
            row["latency_ms"] = latency[row["name"]]
        result["latency_method"] = "re-timed with --latency-only on same-shape UNets, round-robin"
        write_results(result, rows, args)
        return 0
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        defaults = sampling_defaults(model_dir)
        prompts_file = default_prompts_file()
        config = CalibrationConfig(prompts=tuple(read_prompts(prompts_file)), steps=defaults.steps,
                                   samples=args.calib_samples, guidance_scale=defaults.guidance_scale, seed=args.seed,
                                   max_rows={"text_encoder": 64, "unet": 2048, "vae_decoder": 64})
        (work / "calib").mkdir()
        capture(load_pipeline(model_dir), config, work / "calib", model_dir, prompts_file)
        calib = work / "calib"

        rows.append(measure("full", model_dir, None, args))
        for ratio in (0.25, 0.5):
            for steps in (0, args.recover_steps):
                out = work / f"prune{ratio}_{steps}"
                cfg = PruneConfig(ratio=ratio, importance=args.importance, recover_steps=steps, recover_lr=args.recover_lr,
                                  seed=args.seed)
                rep = prune_model(model_dir, cfg, out, calib)
                rows.append(measure(f"prune {ratio} " + (f"+ recovery {steps}" if steps else "(no recovery)"), out, None,
                                    args, {"recover_steps": steps, "recovery_seconds": rep["recovery"].get("seconds", 0)}))
        for scope, steps in (("all", 0), ("all", args.slim_steps), ("inner", args.slim_steps)):
            out = work / f"slim_{scope}_{steps}"
            rep = slim_model(model_dir, SlimConfig(widths=(0.5, 0.75, 1.0), train_steps=steps, importance=args.importance,
                                                   lr=args.slim_lr, full_weight=args.full_weight, seed=args.seed,
                                                   scope=scope), out, calib)
            for width in (0.5, 0.75, 1.0):
                label = f"slim[{scope}] w{width:g} " + (f"+ sandwich {steps}" if steps else "(ordered only)")
                rows.append(measure(label, out, width, args, {"scope": scope, "train_steps": steps,
                                                              "train_seconds": rep["training"].get("seconds", 0)}))
    latency = interleaved_latency_ms(LOADED, args.repeats)
    for row in rows:
        row["latency_ms"] = latency[row["name"]]
    result = {"model": str(model_dir), "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "torch_threads": args.threads, "importance": args.importance, "steps": args.steps,
              "samples_per_digit": args.samples_per_digit, "recover_steps": args.recover_steps,
              "slim_steps": args.slim_steps, "recover_lr": args.recover_lr, "slim_lr": args.slim_lr,
              "full_weight": args.full_weight, "total_seconds": round(time.time() - started, 1),
              "latency_method": "round-robin over the re-loaded UNets", "rows": rows}
    write_results(result, rows, args)
    return 0


def add_slim(args, model_dir: Path) -> int:
    from edgekit.pipeline import load_pipeline

    result = json.loads((args.out / "prune_slim.json").read_text())
    structure = load_pipeline(args.add_slim).edgekit_structure
    provenance = structure.provenance
    steps, link = 0, provenance
    while link:  # a slim output continued from earlier ones: count every run's steps
        steps += link.get("train_steps", 0)
        link = link.get("continued_from")
    prefix = f"slim[{structure.width_scope}]"
    rows = [r for r in result["rows"] if not r.get("trained_elsewhere")]
    for width in sorted(structure.widths):
        rows.append(measure(f"{prefix} w{width:g} shipped ({steps} steps)", args.add_slim, width, args,
                            {"scope": structure.width_scope, "train_steps": steps, "trained_elsewhere": True,
                             "provenance": provenance}))
    latency = interleaved_latency_ms(same_shape_unets(model_dir, [r["name"] for r in rows]), args.repeats)
    for row in rows:
        row["latency_ms"] = latency[row["name"]]
    result.update(rows=rows, latency_method="re-timed together with the added slim rows on same-shape UNets, round-robin")
    write_results(result, rows, args)
    return 0


def write_results(result: dict, rows: list[dict], args) -> None:
    # the table describes the run that measured the rows (with --latency-only, an earlier one)
    args = argparse.Namespace(**{**vars(args), **{k: result[k] for k in ("importance", "steps", "samples_per_digit",
                                                                          "recover_steps") if k in result}})
    full = rows[0]
    for row in rows:
        row["params_ratio"] = row["params"] / full["params"]
        row["macs_ratio"] = row["unet_macs"] / full["unet_macs"]
        row["latency_ratio"] = row["latency_ms"] / full["latency_ms"]
        row["accuracy_delta_points"] = 100 * (row["prompt_accuracy"] - full["prompt_accuracy"])
    # the longest-trained width-0.5 row answers the goal (the shipped slim model when it was added)
    slim_half = sorted((r for r in rows if r["name"].startswith("slim[all] w0.5 ") and r.get("train_steps")),
                       key=lambda r: r["train_steps"], reverse=True)
    prune_rec = [r for r in rows if r["name"] == f"prune 0.25 + recovery {args.recover_steps}"]
    goals = {
        "slim_w0.5_macs_at_most_0.35x": bool(slim_half and slim_half[0]["macs_ratio"] <= 0.35),
        "slim_w0.5_accuracy_within_5_points": bool(slim_half and slim_half[0]["accuracy_delta_points"] >= -5),
        "prune_0.25_recovered_within_3_points": bool(prune_rec and prune_rec[0]["accuracy_delta_points"] >= -3),
    }
    result["goals"] = goals
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prune_slim.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Pruning and slimmable widths on the default model",
        "",
        f"torch {torch.__version__} CPU, {args.threads} thread(s); quality: {args.samples_per_digit} samples per digit at "
        f"{args.steps} steps; importance {args.importance}; latency: one UNet call at batch 2 (median of {args.repeats}, "
        f"{result.get('latency_method', '')}; rows of identical shapes differ by a few percent on this shared machine).",
        "",
        "| model | params | ratio | UNet MACs (M) | ratio | latency ratio | prompt accuracy | delta (points) | Frechet distance |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['params']:,} | {r['params_ratio']:.2f} | {r['unet_macs'] / 1e6:.1f} | "
                     f"{r['macs_ratio']:.2f} | {r['latency_ratio']:.2f} | {r['prompt_accuracy']:.3f} | "
                     f"{r['accuracy_delta_points']:+.1f} | {r['frechet_distance']:.2f} |")
    lines += ["", "Goals: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items()), ""]
    (args.out / "prune_slim.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
