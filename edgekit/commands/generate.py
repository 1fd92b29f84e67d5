"""`edgekit generate`: one image from a prompt, deterministic for a seed."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgekit.commands.common import add_lora_flag, add_json_flag, add_width_flag, add_model_flag, add_sampling_flags, emit, positive_int, prompt_text
from edgekit.errors import InputError


# A 512-pixel image at 32x is 16384 pixels a side (768 MiB of RGB): past that a typo exhausts memory.
MAX_SCALE = 32


def _scale(text: str) -> int:
    value = positive_int(text)
    if value > MAX_SCALE:
        raise argparse.ArgumentTypeError(f"expected an enlargement factor from 1 to {MAX_SCALE}, got {value}")
    return value


def _png_path(text: str) -> Path:
    if text.strip() and Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file (expected a .png file name)")
    if not text.strip() or Path(text).suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"expected a .png file name, got '{text}'")
    return Path(text)


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate one image from a prompt")
    add_model_flag(p)
    add_lora_flag(p)
    p.add_argument("--bundle", type=Path, default=None,
                   help="an exported bundle (edgekit export/package): run it on its own runtime (ORT, LiteRT) "
                        "instead of torch, as the device will")
    add_width_flag(p)
    add_sampling_flags(p)
    p.add_argument("--cache", default=None, metavar="N",
                   help="step caching (DeepCache): the full UNet every N-th step, the shallow branch fed its cached "
                        "feature between; 1 = off (default); a bundle needs a plan for N (edgekit export --cache)")
    p.add_argument("--prompt", type=prompt_text, required=True, help="what to draw")
    p.add_argument("--out", type=_png_path, default=Path("out.png"), help="PNG file to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--scale", type=_scale, default=1,
                   help=f"enlarge the PNG by this factor, 1 to {MAX_SCALE} (nearest)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from PIL import Image

    from edgekit.fsutil import staged_file
    from edgekit.output_checks import check_output_path
    from edgekit.loader import open_model
    from edgekit.modeldir import ModelDir
    from edgekit.pipeline import steps_source

    from edgekit.step_cache import check_interval, generate_cached

    cache = 1 if args.cache is None else check_interval(args.cache)
    if args.bundle is not None:
        return _run_bundle(args, cache)
    model = ModelDir.open(args.model)
    if args.lora:
        from edgekit.lora import with_loras

        model = ModelDir.open(with_loras(model, args.lora))
    model_dir = model.path
    out = check_output_path(args.out, [model_dir], force=args.force, is_file=True)
    defaults = model.sampling_defaults
    steps = model.check_steps(args.steps or defaults.steps, steps_source(args.steps, model_dir))
    guidance = defaults.guidance_scale if args.guidance is None else args.guidance
    pipe = open_model(model, width=args.width)
    started = time.perf_counter()
    if cache > 1:
        from edgekit.step_cache import cache_plan, check_cacheable

        cache_plan(cache, steps)  # an interval past the step count is refused before any work
        check_cacheable(pipe.unet)
    image = generate_cached(pipe, [args.prompt], [args.seed], steps, guidance, cache)[0]
    seconds = time.perf_counter() - started
    pil = Image.fromarray((image * 255).round().astype("uint8"))
    if args.scale > 1:
        pil = pil.resize((pil.width * args.scale, pil.height * args.scale), Image.NEAREST)
    with staged_file(out, force=args.force, new=not args.force) as tmp:  # a PNG made meanwhile is kept
        pil.save(tmp, format="PNG")
    payload = {"out": str(out), "prompt": args.prompt, "steps": steps, "guidance_scale": guidance, "cache": cache,
               "seed": args.seed, "seconds": round(seconds, 3), "size": [pil.width, pil.height]}
    emit(payload, args.json, [f"wrote {out} ({pil.width}x{pil.height}, {steps} steps, {seconds:.2f} s)"])
    return 0


def _run_bundle(args, cache: int = 1) -> int:
    """--bundle: the exported graphs through edgekit.runtime.sampler.BundleSampler, no torch."""
    from edgekit.bundle import read_manifest
    from edgekit.output_checks import check_output_path
    from edgekit.runtime.sampler import BundleSampler
    from edgekit.width import Width

    if args.model is not None:
        raise InputError(f"--bundle {args.bundle} and --model {args.model}: give one (a bundle or a model directory)")
    if args.lora:
        raise InputError(f"--bundle {args.bundle} and --lora: a bundle's graphs already hold the LoRAs it was exported "
                         "with (export --lora)")
    if not Path(args.bundle).is_dir():
        raise InputError(f"--bundle {args.bundle}: not a directory (expected an exported bundle with manifest.json)")
    out = check_output_path(args.out, [Path(args.bundle)], force=args.force, is_file=True)
    manifest = read_manifest(args.bundle, param="bundle")
    sampler = BundleSampler(args.bundle, manifest)
    widths = sampler.widths()
    width = Width.parse(widths[0]) if args.width is None else args.width
    if width.key not in widths:
        raise InputError(f"--width {args.width}: the bundle has UNet widths {', '.join(widths)}")
    steps = args.steps or int(manifest["sampling"]["default_steps"])
    sampler.table(steps)  # InputError naming the step counts the bundle carries
    sampler.cache_plan(cache, steps)  # InputError naming the intervals the bundle offers
    started = time.perf_counter()
    images, timing = sampler.generate([args.prompt], [args.seed], steps, width.value, guidance=args.guidance,
                                      cache=cache)
    seconds = time.perf_counter() - started
    guidance = float(manifest["sampling"]["guidance_scale"]) if args.guidance is None else args.guidance
    size = _write_png(images[0], out, args.scale, args.force)
    payload = {"out": str(out), "bundle": str(args.bundle), "target": manifest["target"],
               "runtime": sampler.runtime, "width": width.value, "prompt": args.prompt, "steps": steps, "cache": cache,
               "guidance_scale": guidance, "seed": args.seed, "seconds": round(seconds, 3), "size": size}
    emit(payload, args.json, [f"wrote {out} ({size[0]}x{size[1]}, {manifest['target']} bundle on {sampler.runtime}, "
                              f"width {width.key}, {steps} steps" + (f", cache interval {cache}" if cache > 1 else "")
                              + f", {seconds:.2f} s)"])
    return 0


def _write_png(image, out: Path, scale: int, force: bool = False) -> list[int]:
    from PIL import Image

    from edgekit.fsutil import staged_file

    pil = Image.fromarray((image * 255).round().astype("uint8"))
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    with staged_file(out, force=force, new=not force) as tmp:  # a PNG made meanwhile is kept
        pil.save(tmp, format="PNG")
    return [pil.width, pil.height]
