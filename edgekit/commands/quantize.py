"""`edgekit quantize`: INT8 quantization of a model's components with one of the registered methods."""
from __future__ import annotations

from pathlib import Path

from edgekit.commands.common import add_json_flag, add_model_flag, add_width_flag, emit, number, positive_int, progress
from edgekit.quantize import QuantizeOptions, methods


def register(sub) -> None:
    p = sub.add_parser("quantize", help="INT8-quantize components with real calibration rows (ort-static, fx, nncf)")
    add_model_flag(p)
    p.add_argument("--method", required=True, metavar="METHOD", help=" | ".join(methods()))
    p.add_argument("--calib", type=Path, required=True, help="output directory of edgekit calibrate for this model")
    p.add_argument("--components", default=None,
                   help="comma-separated subset of unet,text_encoder,vae_decoder (default: all three)")
    add_width_flag(p)
    p.add_argument("--exclude", default="",
                   help="comma-separated fnmatch patterns of module paths kept in float, e.g. 'conv_in,conv_out'")
    p.add_argument("--float-budget", type=number, default=QuantizeOptions.float_budget,
                   help="share of each component's weights the sensitivity ranking may keep in float "
                        f"(default {QuantizeOptions.float_budget})")
    p.add_argument("--calibrate-method", default=QuantizeOptions.calibrate_method, help="ort-static: minmax | entropy | percentile")
    p.add_argument("--activations", default=QuantizeOptions.activations,
                   help=f"ort-static: uint8 | int8 (A8W8) or int16 (A16W8, weights stay int8); "
                        f"default {QuantizeOptions.activations}")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor instead of per channel")
    p.add_argument("--holdout", type=number, default=QuantizeOptions.holdout, help="share of calibration rows held out for the error")
    p.add_argument("--max-calib-rows", type=positive_int, default=QuantizeOptions.max_calib_rows,
                   help=f"calibration rows per component the quantizer reads (default {QuantizeOptions.max_calib_rows})")
    p.add_argument("--out", type=Path, required=True, help="directory to write (a runnable quantized model)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from edgekit.calibration import CalibrationSet
    from edgekit.output_checks import check_output_path
    from edgekit.pipeline import check_model_dir
    from edgekit.quantize import get_quantizer, parse_components, quantize_model
    from edgekit.quantize.memory import check_memory

    quantizer = get_quantizer(args.method)
    components = parse_components(args.components)
    options = QuantizeOptions(
        calibrate_method=args.calibrate_method, activations=args.activations, per_channel=not args.per_tensor,
        exclude=tuple(p.strip() for p in args.exclude.split(",") if p.strip()), float_budget=args.float_budget,
        holdout=args.holdout, max_calib_rows=args.max_calib_rows,
    )
    quantizer.check_backend()
    model_dir = check_model_dir(args.model)
    check_memory(quantizer, model_dir, components)  # a method that cannot fit is refused before any work
    # its meta.json and row shapes against the model's configs, before --out and before any weight is read
    # (the model's digest is checked when quantizing)
    CalibrationSet.open(args.calib, model_dir, check_hash=False)
    out = check_output_path(args.out, [model_dir, Path(args.calib)], force=args.force)
    with progress() as bar:
        manifest = quantize_model(model_dir, args.calib, args.method, out, components=components, width=args.width,
                                  options=options, progress=bar)
    summary = {name: {k: info[k] for k in ("heldout_rel_err", "bytes", "bytes_ratio_vs_fp32")}
               | {"float_units": info["float_units"]["excluded_by_pattern"] + info["float_units"]["kept_by_budget"],
                  "most_sensitive": [r["unit"] for r in info["sensitivity"][:3]]}
               for name, info in manifest["components"].items()}
    payload = {"out": str(out), "method": args.method, "components": summary, "seconds": manifest["seconds"]}
    lines = [f"wrote {out} ({args.method}, {manifest['seconds']:.1f} s)"]
    for name, s in summary.items():
        lines.append(f"  {name:<13} held-out rel-err {s['heldout_rel_err']:.4f}  {s['bytes'] / 1e6:.2f} MB "
                     f"({s['bytes_ratio_vs_fp32']:.2f}x fp32)  float: {', '.join(s['float_units']) or 'none'}  "
                     f"most sensitive: {', '.join(s['most_sensitive'])}")
    emit(payload, args.json, lines)
    return 0
