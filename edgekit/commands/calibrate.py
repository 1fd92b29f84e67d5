"""`edgekit calibrate`: capture real component inputs by running the pipeline over prompts."""
from __future__ import annotations

from pathlib import Path

from edgekit.commands.common import (add_lora_flag, add_width_flag, add_json_flag, add_model_flag, add_sampling_flags, emit,
                                     bounded_int, positive_int, progress)


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="capture real component inputs by running the pipeline over prompts")
    add_model_flag(p)
    add_lora_flag(p)
    add_width_flag(p)
    add_sampling_flags(p)
    p.add_argument("--prompts", type=Path, default=None,
                   help="text file, one prompt per line (default: the prompts the model directory declares, "
                        "else calibration_data/general_prompts.txt)")
    p.add_argument("--samples", type=bounded_int("MAX_SAMPLES", "images"), default=None, help="images to generate (prompts cycled)")
    p.add_argument("--max-rows-unet", type=positive_int, default=1024, help="bound on kept UNet input rows")
    p.add_argument("--max-rows-text", type=positive_int, default=256, help="bound on kept text-encoder input rows")
    p.add_argument("--max-rows-vae", type=positive_int, default=256, help="bound on kept VAE-decoder input rows")
    p.add_argument("--out", type=Path, required=True, help="directory to write (shards + meta.json)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from edgekit.calibration import CalibrationConfig, capture, default_prompts_file, read_prompts
    from edgekit.components import TEXT_ENCODER, UNET, VAE_DECODER
    from edgekit.fsutil import out_of_space_names, staged_dir
    from edgekit.output_checks import check_output_path
    from edgekit.loader import open_model
    from edgekit.modeldir import ModelDir
    from edgekit.pipeline import steps_source

    model = ModelDir.open(args.model)
    if args.lora:
        from edgekit.lora import with_loras

        model = ModelDir.open(with_loras(model, args.lora))
    model_dir = model.path
    prompts_file = Path(args.prompts) if args.prompts else default_prompts_file(model)
    prompts = read_prompts(prompts_file)
    out = check_output_path(args.out, [model_dir, prompts_file], force=args.force)
    defaults = model.sampling_defaults
    steps = model.check_steps(args.steps or defaults.steps, steps_source(args.steps, model_dir))
    config = CalibrationConfig(
        prompts=tuple(prompts), steps=steps, samples=args.samples,
        guidance_scale=defaults.guidance_scale if args.guidance is None else args.guidance, seed=args.seed,
        max_rows={TEXT_ENCODER: args.max_rows_text, UNET: args.max_rows_unet, VAE_DECODER: args.max_rows_vae},
    )
    pipe = open_model(model_dir, width=args.width)
    with out_of_space_names("calibrate", out), staged_dir(out) as staging, progress() as bar:
        meta = capture(pipe, config, staging, model, prompts_file.resolve(), bar)
    rows = {k: v["rows"] for k, v in meta["components"].items()}
    payload = {"out": str(out), "images": meta["images_generated"], "rows": rows,
               "model_sha256": meta["model"]["sha256"]}
    emit(payload, args.json, [f"wrote {out}: {meta['images_generated']} images, rows "
                              + ", ".join(f"{k} {v}" for k, v in rows.items())])
    return 0
