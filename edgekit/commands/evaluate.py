"""`edgekit eval`: quality of a model's generations (a width, a step count, a quantized directory) against
the float model at full width and its default steps, with the evaluators the model gets (edgekit.quality)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgekit.commands.common import add_lora_flag, add_json_flag, add_width_flag, add_model_flag, add_sampling_flags, bounded_int, emit, positive_int, progress

DEFAULT_SAMPLES = 40


_samples = bounded_int("MAX_SAMPLES", "images")


def _per_digit(text: str) -> int:
    value = 10 * positive_int(text)
    return _samples(str(value))


def add_quality_flags(p: argparse.ArgumentParser, default_samples: int | None = DEFAULT_SAMPLES,
                      samples_help: str | None = None) -> None:
    """--samples, --clip (and --samples-per-digit, the digits model's older spelling of --samples)."""
    p.add_argument("--samples", type=_samples, default=default_samples,
                   help=f"images per quality number (default {samples_help or default_samples}; at least 2 for an "
                        "interval)")
    p.add_argument("--samples-per-digit", dest="samples", type=_per_digit, default=argparse.SUPPRESS,
                   metavar="K", help="same as --samples 10K")
    p.add_argument("--clip", type=Path, default=None, metavar="DIR",
                   help="a local transformers CLIP model directory: adds CLIP score (nothing is downloaded)")


def register(sub) -> None:
    p = sub.add_parser("eval", help="quality of a model's generations against its float full-width reference "
                                    "(PSNR/SSIM with intervals, plus the model's own evaluators)")
    add_model_flag(p)
    add_lora_flag(p)
    add_width_flag(p)
    add_sampling_flags(p)
    add_quality_flags(p)
    p.add_argument("--reference-model", type=Path, default=None, metavar="DIR",
                   help="the float model the reference images come from (default: --model)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _interval(d: dict, spec: str) -> str:
    lo, hi = d["ci95"]
    return f"{d['value']:{spec}}  [{lo:{spec}}, {hi:{spec}}]"


def run(args) -> int:
    from edgekit.loader import open_model
    from edgekit.modeldir import ModelDir
    from edgekit.pipeline import steps_source
    from edgekit.width import FULL
    from edgekit.quality.evaluator import ModelQuality

    model = ModelDir.open(args.model)
    if args.lora:
        from edgekit.lora import with_loras

        model = ModelDir.open(with_loras(model, args.lora))
    model_dir = model.path
    defaults = model.sampling_defaults
    steps = model.check_steps(args.steps or defaults.steps, steps_source(args.steps, model_dir))
    started = time.perf_counter()
    with progress() as bar:
        evaluation = ModelQuality(args.reference_model or model, args.samples, args.seed, clip_dir=args.clip,
                                  guidance_scale=args.guidance, param="reference_model" if args.reference_model
                                  else "model", progress=bar)
        pipe = open_model(model, width=args.width)
        scores = evaluation.score_pipe(pipe, steps)
    seconds = time.perf_counter() - started
    row = scores.row
    width = FULL if args.width is None else args.width
    guidance = evaluation.guidance_scale
    payload = {"model": str(model_dir), "reference_model": str(evaluation.model_dir), "width": width.value, "steps": steps,
               "guidance_scale": guidance, "seed": args.seed, "n_images": len(evaluation.grid),
               "evaluators": evaluation.evaluators(), "seconds": round(seconds, 2), **row, **scores.detail}
    q, n = row["quality"], len(evaluation.grid)
    lines = [f"model              {model_dir}",
             f"candidate          width {width}, {steps} steps, guidance {guidance:g}, {n} images (seed {args.seed})",
             f"reference          {q['reference']} ({evaluation.model_dir})",
             f"PSNR vs reference  {_interval(q, '.2f')} dB  (reference-fidelity, 95% interval, n={q['n']})",
             f"SSIM vs reference  {_interval(row['ssim'], '.4f')}"]
    if "prompt_accuracy" in row:
        lo, hi = row["prompt_accuracy_ci95"]
        flo, fhi = row["frechet_distance_ci95"]
        lines += [f"prompt accuracy    {row['prompt_accuracy']:.3f}  [{lo:.3f}, {hi:.3f}]  (digit classifier, "
                  f"Wilson 95%, n={n})",
                  f"Frechet distance   {row['frechet_distance']:.2f}  [{flo:.2f}, {fhi:.2f}]  (bootstrap 95%; "
                  f"real-vs-real floor {scores.detail['frechet_floor']:.2f} +- {scores.detail['frechet_floor_std']:.2f})",
                  "per digit          " + " ".join(f"{d}:{a:.2f}" for d, a in enumerate(scores.detail["per_digit_accuracy"])
                                                   if a is not None)]
    if "clip_score" in row:
        lines.append(f"CLIP score         {_interval(row['clip_score'], '.4f')}  ({args.clip})")
    lines.append(f"time               {seconds:.1f} s")
    emit(payload, args.json, lines)
    return 0
