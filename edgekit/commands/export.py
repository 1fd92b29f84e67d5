"""`edgekit export` (a verified per-target bundle) and `edgekit verify` (re-check a bundle on disk)."""
from __future__ import annotations

from pathlib import Path

from edgekit.commands.common import add_lora_flag, add_json_flag, add_model_flag, emit, list_flag, number, progress, step_list, width_list
from edgekit.targets import target_names


def register(sub) -> None:
    names = target_names()
    p = sub.add_parser("export", help=f"export a verified bundle for one target ({', '.join(names)})")
    add_model_flag(p)
    add_lora_flag(p)
    p.add_argument("--target", required=True, metavar="TARGET", help=" | ".join(names))
    p.add_argument("--precision", default=None,
                   help="fp32 | fp16 | int8 (ort-web, tflite) | w8 | palettize6 (coreml); default: the profile's")
    p.add_argument("--calib", type=Path, default=None, help="calibration directory (edgekit calibrate); int8 needs it")
    p.add_argument("--widths", **list_flag(width_list), default=None,
                   help="UNet width multipliers to export (slimmable models), e.g. 0.5,1.0 (or 0.5 1.0); default 1.0")
    p.add_argument("--profile", type=Path, default=None,
                   help="target profile YAML (default: targets/<the target's profile>.yaml)")
    p.add_argument("--steps", **list_flag(step_list), default=None,
                   help="step counts whose schedules the bundle carries, e.g. 1,2,4 (default: the model's "
                        "edgekit_defaults.json offered_steps, else the profile's plus the model's default)")
    p.add_argument("--guidance", type=number, default=None,
                   help="guidance scale the bundle samples at; <= 1 turns guidance off (default: the model's)")
    p.add_argument("--attention-downsample", type=int, default=None, metavar="N",
                   help="the UNet's highest-resolution self-attention attends to keys and values average-pooled "
                        "by N per side (N*N fewer; training-free, its fidelity cost measured by bench); "
                        "1 = off; default: the profile's attention_downsample")
    p.add_argument("--cache", default=None, metavar="N,N",
                   help="step-cache intervals to offer (DeepCache: the full UNet every N-th step, a shallow branch "
                        "between, fed the cached feature), e.g. 1,2,3; 1 = off; default: the profile's "
                        "cache_intervals")
    p.add_argument("--recipe", type=Path, action="append", default=None, metavar="FILE",
                   help="an INT8 recipe to apply (JSON planned by an earlier export, as its bundle's "
                        "recipes/w<width>.json, or by edgekit package), one per width; refused when planned from "
                        "another model, calibration or profile; default: the export plans its own")
    p.add_argument("--out", type=Path, required=True, help="bundle directory to write")
    p.add_argument("--force", action="store_true", help="replace --out if it is an earlier edgekit output")
    p.add_argument("--sign", type=Path, default=None, metavar="KEY",
                   help="Ed25519 private key (edgekit keygen): the bundle ships manifest.sig, a signature of its "
                        "manifest's integrity record that verify --key checks")
    add_json_flag(p)
    p.set_defaults(func=run_export)

    v = sub.add_parser("verify", help="check a bundle: schema, every file's sha256, and the numbers where a "
                                      "runtime exists here")
    v.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle directory (edgekit export / package)")
    v.add_argument("--files-only", action="store_true", help="skip re-running the components")
    v.add_argument("--node", action="store_true", help="run ONNX components in onnxruntime-web under Node")
    v.add_argument("--key", type=Path, default=None, metavar="PUB",
                   help="Ed25519 public key (KEY.pub from edgekit keygen): also require manifest.sig to be its "
                        "valid signature of this manifest (catches a forger who recomputed every sha256)")
    v.add_argument("--browser", action="store_true", help="run ONNX components in headless Chromium on wasm and "
                   "WebGPU (SwiftShader where there is no GPU); needs the Debian package chromium")
    add_json_flag(v)
    v.set_defaults(func=run_verify)


def run_export(args) -> int:
    from edgekit.profiles import TargetProfile, profiles_dir
    from edgekit.targets import DEFAULT_PROFILES, get_target
    from edgekit.targets.base import ExportRequest, export_bundle

    target = get_target(args.target)
    profile_path = args.profile or profiles_dir() / f"{DEFAULT_PROFILES[target.name]}.yaml"
    profile = TargetProfile.from_yaml(profile_path).with_precision(args.precision)
    if args.attention_downsample is not None:
        profile = profile.with_attention_downsample(args.attention_downsample)
    if args.cache is not None:
        from edgekit.profiles import with_cache

        profile = with_cache(profile, args.cache)
    model = args.model
    if args.lora:
        from edgekit.lora import with_loras

        model = with_loras(args.model, args.lora)
    recipes = ()
    if args.recipe:
        from edgekit.targets.recipes import read_recipe

        recipes = tuple((read_recipe(path)["width"], path) for path in args.recipe)
    request = ExportRequest(model_dir=model, out=args.out, target=target.name, profile=profile,
                            widths=args.widths or (1.0,), calib_dir=args.calib, force=args.force,
                            steps=args.steps, guidance=args.guidance, sign_key=args.sign, recipes=recipes)
    with progress() as bar:
        manifest = export_bundle(request, bar)
    from edgekit.bundle import bytes_on_disk

    on_disk = bytes_on_disk(Path(args.out), manifest)
    lines = [f"wrote {args.out} ({manifest['target']}, {manifest['precision']}, {on_disk / 2**20:.1f} MiB on disk, "
             f"{len(manifest['files'])} files{', signed (manifest.sig)' if args.sign else ''})"]
    summary = []
    from edgekit.bundle import component_entries, entry_label, lookup

    for name, width, entry in component_entries(manifest):
        record = lookup(manifest["verification"], name, width)
        checks = [describe_check(c) for c in record["checks"]]
        lines.append(f"  {entry_label(name, width):14s} {entry['bytes'] / 2**20:8.2f} MiB  " + "; ".join(checks))
        summary.append({"component": entry_label(name, width), "file": entry["file"], "bytes": entry["bytes"],
                        "checks": record["checks"]})
    from edgekit.targets.recipes import RECIPE_DIR

    recipes = sorted(f for f in manifest["files"] if f.startswith(f"{RECIPE_DIR}/"))
    if recipes:
        lines.append(f"  INT8 recipes {'given' if args.recipe else 'planned'}: {', '.join(recipes)}")
    emit({"out": str(Path(args.out).resolve()), "target": manifest["target"], "precision": manifest["precision"],
          "bytes_on_disk": on_disk, "components": summary, "recipes": recipes}, args.json, lines)
    return 0


def run_verify(args) -> int:
    from edgekit.runtime.verify import verify

    signed = None
    if args.key is not None:  # before the slower checks: a forged bundle may replay its own numbers fine
        from edgekit.bundle import read_manifest, verify_files
        from edgekit.signing import check_signature, load_public_key

        load_public_key(args.key)
        manifest = read_manifest(args.bundle)
        verify_files(args.bundle, manifest)
        signed = check_signature(args.bundle, manifest, args.key)
    with progress():
        result = verify(args.bundle, numeric=not args.files_only, node=args.node, browser=args.browser)
    lines = [f"{args.bundle}: {result['files']} files match manifest.json"]
    if signed is not None:
        result["signature"] = signed
        lines.append(f"  signed by {args.key} (Ed25519 {signed['signed_by'][:16]}...)")
    for c in result["checks"]:
        lines.append(f"  {c['component']:14s} {describe_check(c)}")
    if args.browser:
        refused = [f"{c['component']} ({c['provider']})" for c in result["checks"] if c.get("passed") is False]
        lines.append(f"  the page will not run: {', '.join(refused)}" if refused else "  every component passed on "
                     "every execution provider")
    emit(result, args.json, lines)
    return 0


def describe_check(c: dict) -> str:
    if "error" in c:
        return f"{c['runtime']}: FAILED ({c['error']})"
    if "passed" in c and "rel_err" in c:
        return (f"{c['runtime']}: rel-err {c['rel_err']:.2e} ({'ok' if c['passed'] else 'FAILED'}, tolerance "
                f"{c['tolerance']:.2g}, {c.get('precision', '?')} {c.get('file', '')})")
    if "rel_err" in c:
        return f"{c['runtime']}: rel-err {c['rel_err']:.2e}"
    if "skipped" in c:
        return f"{c['runtime']}: skipped ({c['skipped']})"
    return f"{c['runtime']}: structure matches ({c.get('ops', '?')} ops)"
