"""`edgekit bench BUNDLE`: measure the (width, steps) table on this host, then merge it into the manifest.

Two steps: measuring writes nothing into the bundle (``--table-out FILE`` keeps the measured rows as a file
beside it); the merge (edgekit.runtime.bench.merge_table) is the one step that writes a table into a manifest,
the same step ``--import-table FILE`` runs on rows measured elsewhere (a phone, or an earlier --table-out).
The bundle's files are checked against its manifest first: a changed, missing or unlisted file stops the
command (exit 1) before anything is measured, and the manifest is never rewritten over damage."""
from __future__ import annotations

from pathlib import Path

from edgekit.commands.common import add_seed_flag, width_list
from edgekit.commands.common import add_json_flag, bounded_int, emit, progress, read_json, step_list, thread_count


def register(sub) -> None:
    p = sub.add_parser("bench", help="measure latency and quality per (width, steps) with the bundle's own runtime "
                                     "and write the table into its manifest")
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle directory (edgekit export / package)")
    p.add_argument("--steps", type=step_list, default=None, help="e.g. 4,8,12,20 (default: every schedule the "
                                                                 "bundle has)")
    p.add_argument("--widths", type=width_list, default=None, help="e.g. 1.0,0.5 (default: every width)")
    p.add_argument("--cache", default=None, metavar="N,N",
                   help="step-cache intervals to measure rows at, e.g. 1,2,3 (each above 1 one the bundle offers: "
                        "edgekit export --cache); default 1 (the plain loop)")
    from edgekit.commands.evaluate import add_quality_flags

    add_quality_flags(p, default_samples=20)
    p.add_argument("--reference-model", type=Path, default=None, metavar="DIR",
                   help="the float model the bundle was exported from (its sha256 must match the manifest's "
                        "source_model); without it only latency is measured and the manifest is left unchanged")
    p.add_argument("--repeats", type=bounded_int("MAX_REPEATS", "timing rounds"), default=7,
                   help="interleaved timing rounds, one image per row per round (median and 25..75%% spread)")
    add_seed_flag(p)
    p.add_argument("--threads", type=thread_count, default=None, help="runtime CPU threads (default: the runtime's)")
    p.add_argument("--policy", type=Path, default=None,
                   help="policy parameters JSON to write (default: keep the bundle's, or edgekit's default)")
    p.add_argument("--table-out", type=Path, default=None, metavar="FILE",
                   help="also write the measured rows to FILE (JSON; --import-table reads it back), e.g. beside the "
                        "bundle; never inside it")
    p.add_argument("--import-table", type=Path, default=None,
                   help="write rows measured elsewhere (e.g. on a phone: JSON list of rows with 'device') instead "
                        "of measuring here")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from edgekit.bundle import read_manifest
    from edgekit.locking import output_lock

    read_manifest(args.bundle)  # not a bundle: refused before a lock file is made beside it
    # the bundle's write lock for the whole run: an export replacing it meanwhile is refused (and this bench is
    # refused while another writer holds it), so the table is measured on the graphs it is written beside
    with output_lock(args.bundle, "edgekit bench", param="bundle"):
        return _run_locked(args)


def _run_locked(args) -> int:
    import json

    from edgekit.bundle import read_manifest, verify_files
    from edgekit.runtime.bench import BenchConfig, import_rows, measure, merge_table, write_measured

    manifest = read_manifest(args.bundle)  # again, under the lock
    verify_files(args.bundle, manifest)  # a damaged bundle is refused before any work (and again at the write)
    policy = read_json(args.policy, "policy") if args.policy is not None else None
    if args.table_out is not None and args.table_out.resolve().is_relative_to(args.bundle.resolve()):
        from edgekit.errors import InputError

        raise InputError("is inside the bundle (its files are all listed in its manifest); write it beside the "
                         "bundle", param="table_out", value=args.table_out)
    if args.import_table is not None:
        rows, runtime = import_rows(args.import_table, manifest), "imported"
    else:
        from edgekit.step_cache import parse_intervals

        intervals = parse_intervals(args.cache, "cache") if args.cache is not None else (1,)
        config = BenchConfig(steps=args.steps, widths=args.widths, samples=args.samples, repeats=args.repeats,
                             seed=args.seed, threads=args.threads, reference_model=args.reference_model, clip=args.clip,
                             cache_intervals=intervals)
        with progress() as bar:
            rows, runtime = measure(args.bundle, config, bar)
        if args.table_out is not None:
            write_measured(args.table_out, rows, runtime)
    latency_only = not all("quality" in r for r in rows)
    from edgekit.safe_read import printable

    lines = [f"{args.bundle}: {len(rows)} rows {'imported' if args.import_table else 'measured'} ({runtime}) on "
             f"{printable(rows[0]['device'])}",
             f"  {'width':>5} {'steps':>5} {'cache':>5} {'latency':>10}  quality"]
    for r in rows:
        lines.append(f"  {r['width']:5.2f} {r['steps']:5d} {r.get('cache', 1):5d} {r['latency_ms']:8.1f}ms  "
                     f"{'not measured' if latency_only else _quality_text(r)}")
    if latency_only:  # a table row needs its quality (the policy ranks by it): the manifest stays as it is
        lines.append(f"  quality needs --reference-model DIR (the float model {args.bundle} was exported from); "
                     "latency only, manifest.json left unchanged")
        emit({"bundle": str(args.bundle), "rows": rows, "written": False,
              "quality": "not measured: needs --reference-model"}, args.json, lines)
        return 0
    written, dropped = merge_table(args.bundle, manifest, rows, policy)  # the one merge step
    if dropped:
        lines.append(f"  dropped {dropped} earlier rows measured on another device")
    lines.append(f"  manifest table now {len(written['table'])} rows; policy {json.dumps(written['policy'])}")
    emit({"bundle": str(args.bundle), "rows": rows, "table": written["table"], "policy": written["policy"],
          "dropped_rows": dropped, "written": True}, args.json, lines)
    return 0


def _quality_text(row: dict) -> str:
    """A row's quality as printed: the ranked value with its interval and metric (older rows: accuracy)."""
    q = row.get("quality")
    if isinstance(q, dict) and "value" in q:
        ci = q.get("ci95") or [q["value"], q["value"]]
        from edgekit.safe_read import printable

        return f"{q['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] {printable(q.get('metric', ''))}".rstrip()
    fd = row.get("frechet_distance")
    return f"accuracy {row.get('prompt_accuracy', float('nan')):.3f}" + ("" if fd is None else f", Frechet {fd:.2f}")
