"""`edgekit bench BUNDLE`: measure the (width, steps) table on this host and write it into the manifest.

The bundle's files are checked against its manifest first: a changed, missing or unlisted file stops the
command (exit 1) before anything is measured, and the manifest is never rewritten over damage."""
from __future__ import annotations

from pathlib import Path

from edgekit.commands.common import add_seed_flag, width_list
from edgekit.commands.common import add_json_flag, emit, positive_int, progress, read_json, step_list


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure latency and quality per (width, steps) with the bundle's own runtime "
                                     "and write the table into its manifest")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    p.add_argument("--steps", type=step_list, default=None, help="e.g. 4,8,12,20 (default: every schedule the "
                                                                 "bundle has)")
    p.add_argument("--widths", type=width_list, default=None, help="e.g. 1.0,0.5 (default: every width)")
    from edgekit.commands.evaluate import add_quality_flags

    add_quality_flags(p, default_samples=20)
    p.add_argument("--reference-model", type=Path, default=None, metavar="DIR",
                   help="the float model the bundle was exported from, for quality (default: the manifest's "
                        "source_model.path)")
    p.add_argument("--repeats", type=positive_int, default=7,
                   help="interleaved timing rounds, one image per row per round (median and 25..75%% spread)")
    add_seed_flag(p)
    p.add_argument("--threads", type=positive_int, default=None, help="runtime CPU threads (default: the runtime's)")
    p.add_argument("--policy", type=Path, default=None,
                   help="policy parameters JSON to write (default: keep the bundle's, or edgekit's default)")
    p.add_argument("--import-table", type=Path, default=None,
                   help="write rows measured elsewhere (e.g. on a phone: JSON list of rows with 'device') instead "
                        "of measuring here")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from edgekit.bundle import read_manifest, verify_files
    from edgekit.runtime.bench import BenchConfig, import_rows, measure, write_table

    manifest = read_manifest(args.bundle)
    verify_files(args.bundle, manifest)  # a damaged bundle is refused before any work (and again at the write)
    policy = read_json(args.policy, "--policy") if args.policy is not None else None
    if args.import_table is not None:
        rows, runtime = import_rows(args.import_table, manifest), "imported"
    else:
        config = BenchConfig(steps=args.steps, widths=args.widths, samples=args.samples, repeats=args.repeats,
                             seed=args.seed, threads=args.threads, reference_model=args.reference_model, clip=args.clip)
        with progress() as bar:
            rows, runtime = measure(args.bundle, config, bar)
    written, dropped = write_table(args.bundle, manifest, rows, policy)
    lines = [f"{args.bundle}: {len(rows)} rows {'imported' if args.import_table else 'measured'} ({runtime}) on "
             f"{rows[0]['device']}",
             f"  {'width':>5} {'steps':>5} {'latency':>10}  quality"]
    for r in rows:
        lines.append(f"  {r['width']:5.2f} {r['steps']:5d} {r['latency_ms']:8.1f}ms  {_quality_text(r)}")
    if dropped:
        lines.append(f"  dropped {dropped} earlier rows measured on another device")
    lines.append(f"  manifest table now {len(written['table'])} rows; policy {json.dumps(written['policy'])}")
    emit({"bundle": str(args.bundle), "rows": rows, "table": written["table"], "policy": written["policy"],
          "dropped_rows": dropped}, args.json, lines)
    return 0


def _quality_text(row: dict) -> str:
    """A row's quality as printed: the ranked value with its interval and metric (older rows: accuracy)."""
    q = row.get("quality")
    if isinstance(q, dict) and "value" in q:
        ci = q.get("ci95") or [q["value"], q["value"]]
        return f"{q['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] {q.get('metric', '')}".rstrip()
    fd = row.get("frechet_distance")
    return f"accuracy {row.get('prompt_accuracy', float('nan')):.3f}" + ("" if fd is None else f", Frechet {fd:.2f}")
