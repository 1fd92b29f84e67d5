"""`edgekit package`: prune/slim -> calibrate -> quantize -> export every target -> verify -> bench -> report."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.commands.common import (SEED_MAX, add_json_flag, bounded_int, emit, number, positive_int, progress, read_json, seed,
                                     step_list, width_list)
from edgekit.width import Width


def _precision(text: str) -> tuple[str, str]:
    target, sep, precision = text.partition("=")
    if not sep or not target or not precision:
        raise argparse.ArgumentTypeError(f"expected TARGET=PRECISION such as ort-web=fp16, got '{text}'")
    return target.strip(), precision.strip()


def register(sub) -> None:
    from edgekit.commands.common import add_lora_flag, list_flag, name_list
    from edgekit.package import DEFAULT_PRECISIONS, DEFAULT_TARGETS, PackageConfig, PRUNE_RECIPE, SLIM_RECIPE
    from edgekit.targets import target_names

    # Every setting defaults to None here: what is not given comes from --config, else from PackageConfig (the
    # one place the package defaults live).
    p = sub.add_parser("package", help="the whole chain: slim/prune, calibrate, quantize, export and verify every "
                                       "target, measure, report (resumable)")
    p.add_argument("--model", type=Path, default=None,
                   help="local diffusers pipeline directory (default: the embedded tiny digits model, slimmable form)")
    add_lora_flag(p)
    p.add_argument("--config", type=Path, default=None, metavar="FILE.yaml",
                   help="the package settings as YAML (any subset of report.json's \"config\": targets, widths, "
                        "prune, slim, quant, quantize, precisions, steps, ...); flags given as well override it")
    p.add_argument("--targets", **list_flag(name_list), default=None,
                   help=f"targets to export, of {','.join(target_names())} (default {','.join(DEFAULT_TARGETS)})")
    p.add_argument("--widths", **list_flag(width_list), default=None,
                   help="width multipliers, e.g. 0.5,0.75,1.0 (default: the model's widths when slimmable, else 1.0); "
                        "a model that is not slimmable is slimmed first")
    p.add_argument("--prune", type=float, default=None, metavar="R", help="prune this fraction of inner channels "
                                                                          "and heads first (then recover)")
    p.add_argument("--recover-steps", type=int, default=None,
                   help=f"distillation steps after --prune (default {PRUNE_RECIPE['recover_steps']})")
    p.add_argument("--slim-steps", type=int, default=None,
                   help="sandwich-rule training steps when the model must be made slimmable "
                        f"(default {SLIM_RECIPE['train_steps']})")
    p.add_argument("--quant", default=None, metavar="METHOD",
                   help=f"ort-static | nncf | fx (default {PackageConfig.quant})")
    p.add_argument("--precision", type=_precision, action="append", default=None, metavar="TARGET=PRECISION",
                   help="a target's precision (default: " + ", ".join(f"{t}={v}" for t, v in DEFAULT_PRECISIONS.items()) + ")")
    p.add_argument("--steps", **list_flag(step_list), default=None,
                   help="step counts every bundle ships and the bench measures, e.g. 1,2,4 (default: the model's "
                        "edgekit_defaults.json offered_steps, else each profile's)")
    p.add_argument("--guidance", type=number, default=None,
                   help="guidance scale the bundles sample at; <= 1 turns guidance off (default: the model's)")
    p.add_argument("--calib-samples", type=bounded_int("MAX_SAMPLES", "images"), default=None,
                   help=f"images generated per width for calibration (default {PackageConfig.calib_samples})")
    p.add_argument("--calib-steps", type=bounded_int("MAX_STEPS", "sampling steps"), default=None,
                   help="sampling steps per calibration image (default: the model's default steps); fewer steps "
                        "make the capture shorter, the rows then cover that schedule's timesteps")
    from edgekit.commands.evaluate import add_quality_flags

    add_quality_flags(p, default_samples=None, samples_help=str(PackageConfig.samples))
    p.add_argument("--prompts", type=Path, default=None,
                   help="calibration prompts, one per line (default: the model directory's declared prompts, else "
                        "calibration_data/general_prompts.txt)")
    p.add_argument("--repeats", type=bounded_int("MAX_REPEATS", "timing rounds"), default=None,
                   help=f"timed runs per table row (default {PackageConfig.repeats})")
    p.add_argument("--seed", type=seed, default=None, help=f"random seed, 0 to {SEED_MAX} (default {PackageConfig.seed})")
    p.add_argument("--policy", type=Path, default=None, help="policy parameters JSON for every bundle "
                                                              "(default: edgekit's policy_default.json)")
    p.add_argument("--no-browser-check", dest="browser_check", action="store_false", default=None,
                   help="skip the headless-Chromium check of the ort-web bundle on wasm and WebGPU (without it the "
                        "page runs every graph on wasm unless ?ep=webgpu)")
    p.add_argument("--attention-downsample", type=int, default=None, metavar="N",
                   help="every bundle's UNet attends to keys and values average-pooled by N per side at its "
                        "highest resolution (training-free; bench measures its fidelity cost); 1 = off (default)")
    p.add_argument("--cache", default=None, metavar="N,N",
                   help="step-cache intervals every bundle offers (DeepCache: the full UNet every N-th step, a "
                        "shallow branch between), e.g. 1,2,3; 1 = off (default)")
    p.add_argument("--out", type=Path, required=True,
                   help="output directory: new, empty, or an earlier package output (resumed; damaged stages rerun)")
    p.add_argument("--force", action="store_true",
                   help="start an earlier package output afresh (removing only what edgekit wrote there), or write "
                        "into a directory that holds other files (never overwriting them)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _cache_intervals(text):
    from edgekit.step_cache import parse_intervals

    return parse_intervals(text, "cache")


def config_from_args(args):
    """The PackageConfig of --config FILE (if given) with the flags given on top of it."""
    from edgekit.package import PackageConfig

    base = PackageConfig.from_yaml(args.config) if args.config is not None else None
    flags = {"targets": args.targets, "widths": args.widths, "prune": args.prune, "quant": args.quant,
             "steps": args.steps, "guidance": args.guidance, "calib_samples": args.calib_samples,
             "calib_steps": args.calib_steps,
             "samples": args.samples, "clip": None if args.clip is None else str(args.clip),
             "prompts": None if args.prompts is None else str(args.prompts), "repeats": args.repeats,
             "seed": args.seed, "attention_downsample": args.attention_downsample,
             "browser_check": args.browser_check,
             "cache": None if args.cache is None else list(_cache_intervals(args.cache)),
             "policy": None if args.policy is None else read_json(args.policy, "policy"),
             "precisions": None if args.precision is None else dict(args.precision)}
    given = {key: value for key, value in flags.items() if value is not None}
    if args.recover_steps is not None:
        if args.prune is None and (base is None or base.prune is None):
            from edgekit.errors import InputError

            raise InputError("applies to pruning: give --prune too (or a prune section in --config)",
                             param="recover_steps", value=args.recover_steps)
        given["prune"] = {**({"ratio": args.prune} if args.prune is not None else {}),
                          "recover_steps": args.recover_steps}
    if args.slim_steps is not None:
        given["slim"] = {"train_steps": args.slim_steps}
    return PackageConfig.from_dict(given, base)


def run(args) -> int:
    from edgekit.errors import EdgekitError
    from edgekit.package import package
    from edgekit.zoo.tiny_digits import SLIM_DIR

    config = config_from_args(args)
    model = args.model or SLIM_DIR
    if args.lora:
        from edgekit.lora import with_loras

        model = with_loras(model, args.lora)
    try:
        with progress() as bar:
            # stage lines beside the bars on a terminal; a log or a pipe gets only the summary (or --json)
            say = ((lambda line: bar.console.print(line, markup=False, highlight=False))
                   if bar.console.is_terminal and not args.json else None)
            summary = package(model, config, args.out, force=args.force, progress=bar, say=say)
    except EdgekitError as exc:
        if getattr(exc, "summary", None) is None:
            raise
        summary, failed = exc.summary, exc
    else:
        failed = None
    emit(_payload(summary), args.json, _lines(summary))
    if failed is not None:
        raise failed
    return 0


def _payload(summary: dict) -> dict:
    return {k: summary[k] for k in ("source", "model", "widths", "stages", "bundles", "failures", "report", "seconds")}


def _lines(summary: dict) -> list[str]:
    ran = [r["stage"] for r in summary["stages"] if r["ran"]]
    lines = [f"packaged {summary['model']} at widths {', '.join(Width.parse(w).key for w in summary['widths'])} in "
             f"{summary['seconds']:.0f} s ({len(ran)} stages ran, {len(summary['stages']) - len(ran)} reused)"]
    for target, b in summary["bundles"].items():
        bench = b.get("bench") or {}
        top = bench.get("top_choice")
        quality = (top or {}).get("quality") or {}
        tail = (f"policy's top choice {Width.parse(top['width']).tag}/{top['steps']} steps {top['latency_ms']:.0f} ms, "
                f"{quality.get('metric', 'quality')} {quality.get('value', float('nan')):.2f}"
                if top else bench.get("skipped", "not measured"))
        lines.append(f"  {target:8s} {b['precision']:5s} {b['bytes'] / 2**20:7.2f} MiB  {tail}")
    for target, f in summary["failures"].items():
        lines.append(f"  {target:8s} FAILED at {f.get('stage')}: {f['error']}")
    for r in summary["stages"]:
        if r.get("reran") and r["reran"] != "settings or inputs changed":
            lines.append(f"  reran {r['stage']}: {r['reran']}")
    lines.append(f"  report: {Path(summary['report_dir']) / summary['report']['markdown']}")
    return lines
