"""`edgekit prune` and `edgekit slim`: structured compression of a pipeline's UNet into a new directory."""
from __future__ import annotations

import argparse
from pathlib import Path

from edgekit.compress.importance import METHODS
from edgekit.structure import WIDTH_SCOPES
from edgekit.commands.common import (add_json_flag, add_model_flag, add_seed_flag, emit, non_negative_number, number,
                                     list_flag, positive_int, positive_number, progress, width_list)


def _count(text: str) -> int:
    """A whole number >= 0 (a number of training steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _common(p, config) -> None:
    """Flags prune and slim share; defaults from ``config``, their config class (the one place they live)."""
    add_model_flag(p)
    p.add_argument("--calib", type=Path, default=None,
                   help="edgekit calibrate output for this model, read when --importance or training needs rows "
                        "(default: captured now from the prompts the model declares, else "
                        "calibration_data/general_prompts.txt)")
    p.add_argument("--importance", choices=METHODS, default=config.importance,
                   help="how channels are ranked: l1 (weights), activation or taylor (calibration rows); "
                        f"default {config.importance}")
    lr = "recover_lr" if hasattr(config, "recover_lr") else "lr"
    p.add_argument("--lr", type=positive_number, default=getattr(config, lr), dest=lr, metavar="LR",
                   help="learning rate of the distillation steps")
    p.add_argument("--batch-size", type=positive_int, default=config.batch_size,
                   help=f"rows per training step (the global batch under accelerate launch; default {config.batch_size})")
    add_seed_flag(p)
    p.add_argument("--out", type=Path, required=True, help="directory to write (a diffusers model + structure.json)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_json_flag(p)


def register(sub) -> None:
    from edgekit.compress.prune import PruneConfig
    from edgekit.compress.slim import MEMORY_CHOICES, SlimConfig

    p = sub.add_parser("prune", help="remove UNet inner channels and attention heads (physically smaller tensors)")
    p.add_argument("--ratio", type=number, required=True, help="fraction of resnet and feed-forward inner channels to remove, in (0, 1)")
    p.add_argument("--heads-ratio", type=number, default=None, help="fraction of attention heads to remove (default: --ratio)")
    p.add_argument("--recover-steps", type=_count, default=PruneConfig.recover_steps,
                   help="distillation steps from the unpruned teacher")
    p.add_argument("--feature-weight", type=non_negative_number, default=PruneConfig.feature_weight,
                   help="weight of the block-output distillation term")
    _common(p, PruneConfig)
    p.set_defaults(func=run_prune)

    s = sub.add_parser("slim", help="make the UNet slimmable at several width multipliers (one weight set)")
    s.add_argument("--widths", **list_flag(width_list), default=SlimConfig.widths,
                   help="width multipliers, e.g. 0.5,0.75,1.0 (or 0.5 0.75 1.0); must include 1.0")
    s.add_argument("--train-steps", type=_count, default=SlimConfig.train_steps,
                   help="sandwich-rule steps with in-place distillation")
    s.add_argument("--scope", choices=WIDTH_SCOPES, default=SlimConfig.scope,
                   help="what a narrower width shrinks: all channels (default; width 0.5 ~ 0.28x MACs) or only "
                        "the inner channels and heads pruning removes (block outputs keep their width)")
    s.add_argument("--full-weight", type=number, default=SlimConfig.full_weight,
                   help="weight of the full-width term (anchors it to the source model)")
    s.add_argument("--guidance-weight", type=number, default=SlimConfig.guidance_weight,
                   help="weight of the guidance-direction term (prompted minus empty-prompt prediction); 0 turns it off")
    s.add_argument("--memory", choices=MEMORY_CHOICES, default=SlimConfig.memory,
                   help="training's memory mode: standard (whole batch, AdamW), lean (teacher outputs first, one row "
                        "per pass with gradient checkpointing, Adafactor: a few steps at SD-1.5 size on 24 GB) or "
                        "auto (standard when its measured memory fits, else lean)")
    s.add_argument("--init", type=Path, default=None,
                   help="an earlier edgekit slim output of --model to continue training from")
    _common(s, SlimConfig)
    s.set_defaults(func=run_slim)


def _inputs(args, more_inputs=(), check_memory=None):
    """Every input check before any work, the cheap ones first (the model directory, --calib's meta and row
    shapes, --out, ``check_memory(model_dir)``), then --calib against the model's digest, which reads every
    weight byte (seconds at 3.4 GB)."""
    from edgekit.output_checks import check_output_path
    from edgekit.modeldir import ModelDir

    model_dir = ModelDir.open(args.model).path
    calib = None
    if args.calib is not None:
        from edgekit.calibration import CalibrationSet

        calib = CalibrationSet.open(args.calib, model_dir, check_hash=False)
    protected = [model_dir] + ([Path(args.calib)] if args.calib else []) + [Path(p) for p in more_inputs]
    out = check_output_path(args.out, protected, force=args.force)
    if check_memory is not None:
        check_memory(model_dir)
    if calib is not None:
        calib.check_model_digest(model_dir)  # fail before any work if it is not this model's
    return model_dir, out


def run_prune(args) -> int:
    from edgekit.compress.prune import PruneConfig, prune_model

    config = PruneConfig(ratio=args.ratio, heads_ratio=args.heads_ratio, importance=args.importance,
                         recover_steps=args.recover_steps, recover_lr=args.recover_lr, batch_size=args.batch_size,
                         feature_weight=args.feature_weight, seed=args.seed)
    model_dir, out = _inputs(args)
    with progress() as bar:
        report = prune_model(model_dir, config, out, args.calib, bar)
    params, macs = report["params"], report["unet_macs"]
    lines = [f"wrote {out}",
             f"UNet params {params['before']:,} -> {params['after']:,} ({params['after'] / params['before']:.2f}x), "
             f"MACs {macs['after'] / macs['before']:.2f}x"]
    rec = report["recovery"]
    if rec:
        lines.append(f"recovery {rec['steps']} steps: output loss {rec['output_loss_first']:.4f} -> "
                     f"{rec['output_loss_last']:.4f} ({rec['seconds']} s)")
    emit(report, args.json, lines)
    return 0


def run_slim(args) -> int:
    from edgekit.compress.slim import SlimConfig, check_memory, slim_model

    config = SlimConfig(widths=args.widths, train_steps=args.train_steps, importance=args.importance, lr=args.lr,
                        batch_size=args.batch_size, seed=args.seed, full_weight=args.full_weight,
                        scope=args.scope, guidance_weight=args.guidance_weight, memory=args.memory)
    model_dir, out = _inputs(args, [args.init] if args.init else [],
                             check_memory=lambda model_dir: check_memory(model_dir, config, args.calib))
    with progress() as bar:
        report = slim_model(model_dir, config, out, args.calib, bar, init_dir=args.init)
    note = [report["memory_note"]] if "memory_note" in report else []  # auto took the lean mode: why
    lines = [f"wrote {out}"] + note + [f"width {row['width']:g}: params {row['params']:,}, "
                                       f"MACs {row['macs_ratio']:.2f}x of full" for row in report["widths"]]
    emit(report, args.json, lines)
    return 0
