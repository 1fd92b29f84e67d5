"""`edgekit eval`: prompt accuracy and Frechet distance of a model's generations."""
from __future__ import annotations

import time

from edgekit.commands.common import add_json_flag, add_width_flag, add_model_flag, add_sampling_flags, emit, positive_int, progress


def register(sub) -> None:
    p = sub.add_parser("eval", help="prompt accuracy and Frechet distance of a model's generations")
    add_model_flag(p)
    add_width_flag(p)
    add_sampling_flags(p)
    p.add_argument("--samples-per-digit", type=positive_int, default=10)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from edgekit.loader import open_model
    from edgekit.pipeline import check_model_dir, check_model_steps, sampling_defaults, steps_source
    from edgekit.quality import evaluate_digits

    model_dir = check_model_dir(args.model)
    defaults = sampling_defaults(model_dir)
    steps = check_model_steps(model_dir, args.steps or defaults.steps, steps_source(args.steps, model_dir))
    guidance = defaults.guidance_scale if args.guidance is None else args.guidance
    pipe = open_model(model_dir, width=args.width)
    started = time.perf_counter()
    with progress() as bar:
        report = evaluate_digits(pipe, steps, args.samples_per_digit, args.seed, guidance, bar)
    seconds = time.perf_counter() - started
    payload = {"model": str(model_dir), "steps": steps, "guidance_scale": guidance, "seed": args.seed,
               "samples_per_digit": args.samples_per_digit, "seconds": round(seconds, 2), **report.to_dict()}
    lines = [
        f"model            {model_dir}",
        f"images           {report.n_images} ({args.samples_per_digit} per digit, {steps} steps, guidance {guidance})",
        f"prompt accuracy  {report.prompt_accuracy:.3f}",
        f"Frechet distance {report.frechet_distance:.2f}  (real-vs-real floor {report.frechet_floor:.2f} +- {report.frechet_floor_std:.2f})",
        "per digit        " + " ".join(f"{d}:{a:.2f}" for d, a in enumerate(report.per_digit_accuracy)),
        f"time             {seconds:.1f} s",
    ]
    emit(payload, args.json, lines)
    return 0
