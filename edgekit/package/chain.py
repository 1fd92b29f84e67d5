"""The chain of `edgekit package` as data: each stage declares what it produces and what it consumes, and a
stage runs only when something the run delivers (a requested target's bundle, the report) consumes its output,
directly or through other stages. The report is built from the stages' results.

    prune (when asked) -> calib-source, slim (when the widths need it) -> calib (per width)
    -> quant (per width, when a target ships the quantize stage's graphs) -> quality (per width, torch float)
    -> per target: export -> bench (its own measured table) -> bundle (the shipped bundle: the export's files
       and one manifest carrying the measured table) -> report.md + plots
"""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgekit import __version__
from edgekit.errors import EdgekitError
from edgekit.package import steps
from edgekit.package.config import PackageConfig, PackageError
from edgekit.package.outdir import PACKAGE_FILE, REPORT_ENTRIES, claim_out, read_marker, write_marker
from edgekit.package.plan import Plan, plan, reads_calibration, reads_quantized_onnx
from edgekit.package.stages import PackageInterrupted, Stages, digest, write_json

RUN, WIDTH, TARGET, TARGET_WIDTH = "run", "width", "target", "target-width"  # once, per width, target, or both


def _always(run: steps.Run, item) -> bool:
    return True


@dataclass(frozen=True)
class StageSpec:
    """One stage of the chain, as data: its name (the stage's own, or the prefix of one per width or target),
    what its output is to the stages that read it, what it reads, and the function that runs it."""

    name: str
    per: str  # RUN, WIDTH, TARGET or TARGET_WIDTH
    produces: str
    consumes: Callable[[steps.Run, object], tuple[str, ...]]  # (run, width / target / both) -> what it reads
    run: Callable[[steps.Run, object], dict]
    # (run, width or target) -> False where the stage cannot or need not exist (no pruning asked, no runtime here)
    exists: Callable[[steps.Run, object], bool] = _always


def _reads(*products: str):
    return lambda run, item: products


def _export_reads(run: steps.Run, target: str) -> tuple[str, ...]:
    profile = run.plan.profiles[target]
    return ("model",) + (("calibration",) if reads_calibration(target, profile) else ()) + (
        ("quantized-onnx",) if reads_quantized_onnx(target, profile) else ()) + (
        ("int8-recipe",) if _plans_recipe(run, (target, None)) else ())


def _plans_recipe(run: steps.Run, item) -> bool:
    from edgekit.targets import get_target

    return get_target(item[0]).needs_recipe(run.plan.profiles[item[0]])


CHAIN = (
    StageSpec("prune", RUN, "model", _reads("model"), steps.prune,
              exists=lambda run, _: run.config.prune is not None),
    StageSpec("calib-source", RUN, "source-calibration", _reads("model"), steps.calibrate_source,
              exists=lambda run, _: run.plan.slim and run.config.slim_config(run.plan.widths).needs_rows),
    StageSpec("slim", RUN, "model", _reads("model", "source-calibration"), steps.slim,
              exists=lambda run, _: run.plan.slim),
    StageSpec("calib", WIDTH, "calibration", _reads("model"), steps.calibrate),
    StageSpec("quant", WIDTH, "quantized-onnx", _reads("model", "calibration"), steps.quantize),
    StageSpec("quality", WIDTH, "float-quality", _reads("model"), steps.float_quality),
    StageSpec("recipe", TARGET_WIDTH, "int8-recipe", _reads("model", "calibration"), steps.recipe,
              exists=_plans_recipe),
    StageSpec("export", TARGET, "export", _export_reads, steps.export),
    StageSpec("bench", TARGET, "measured-table", _reads("export"), steps.bench,
              exists=lambda run, target: steps.bench_skipped(run, target) is None),
    StageSpec("bundle", TARGET, "bundle", _reads("export", "measured-table"), steps.ship),
)
DELIVERED = ("bundle", "float-quality")  # what a run delivers: every target's bundle, and the report's float table


def _items(spec: StageSpec, run: steps.Run) -> list:
    return {RUN: [None], WIDTH: list(run.plan.widths), TARGET: list(run.plan.profiles),
            TARGET_WIDTH: [(t, w) for t in run.plan.profiles for w in run.plan.widths]}[spec.per]


def _target_of(spec: StageSpec, item) -> str | None:
    """The target a stage belongs to (None: shared by every target)."""
    return item if spec.per == TARGET else item[0] if spec.per == TARGET_WIDTH else None


def needed(run: steps.Run) -> list[tuple[StageSpec, object]]:
    """The (stage, width or target) pairs this run runs, in chain order: those whose output is delivered or is
    read by a stage that runs."""
    present = [(spec, item) for spec in CHAIN for item in _items(spec, run) if spec.exists(run, item)]
    wanted = set(DELIVERED)
    while True:
        more = {p for spec, item in present if spec.produces in wanted for p in spec.consumes(run, item)} - wanted
        if not more:
            return [(spec, item) for spec, item in present if spec.produces in wanted]
        wanted |= more


def package(model_dir: Path, config: PackageConfig, out: Path, force: bool = False, progress=None,
            say: Callable[[str], None] | None = None) -> dict:
    """Run the chain; returns the summary written to package.json. ``say`` receives one line per stage
    (running, reused, done in N s). Raises PackageError after writing
    everything else when some target failed, PackageInterrupted on Ctrl-C (finished stages are kept),
    OutOfSpaceError when the disk fills up (the stage under way leaves nothing half-written)."""
    from edgekit.locking import output_lock

    p = plan(model_dir, config, out, force)
    try:
        with output_lock(p.out, "edgekit package"):  # one run per --out: a second is refused naming this one
            return _package(p, config, progress, say)
    except KeyboardInterrupt:
        raise PackageInterrupted(f"interrupted; finished stages kept in {p.out}, rerun to resume") from None


def _package(p: Plan, config: PackageConfig, progress, say=None) -> dict:
    from edgekit.fsutil import OutOfSpaceError, out_of_space_names

    resume = "free some space and rerun to resume"  # finished stages are kept
    started = time.perf_counter()
    source_key = p.model.sha256  # the one hash of the source model this run makes (edgekit.modeldir)
    run_key = digest({"source": source_key, "config": config.to_dict()})
    with out_of_space_names("package", p.out, then=resume):
        claim_out(p.out_dir, config.targets, run_key)
    run = steps.Run(plan=p, config=config, stages=Stages(p.out, say), progress=progress, model=p.model,
                    model_key=source_key)
    todo = needed(run)
    for spec, item in todo:
        if _target_of(spec, item) is None:
            spec.run(run, item)
    failures = {}
    for target in p.profiles:  # one target's failure must not stop the others
        try:
            for spec, item in todo:
                if _target_of(spec, item) == target:
                    spec.run(run, item)
        except OutOfSpaceError:
            raise  # the next target would fill the same disk
        except Exception as exc:
            failures[target] = {"error": str(exc) if isinstance(exc, EdgekitError) else f"{type(exc).__name__}: {exc}",
                                "stage": run.stages.current}
            if not isinstance(exc, EdgekitError):
                failures[target]["traceback"] = traceback.format_exc(limit=8)

    summary = {"edgekit": __version__, "source": str(p.source), "source_sha256": source_key,
               "model": str(run.model.path), "widths": [w.value for w in p.widths],
               "config": config.to_dict(),  # PackageConfig.from_dict(report["config"]) repeats the run
               "precisions": {t: config.precision(t) for t in config.targets},
               "stages": run.stages.records, **_results(run, failures), "failures": failures}
    from edgekit.report import write_report

    with out_of_space_names("report", p.out, then=resume):
        summary["report"] = write_report(p.out, summary)
        written = {Path(f).parts[0] for f in (summary["report"]["markdown"], summary["report"]["json"],
                                              *summary["report"]["plots"])}
        if not written <= set(REPORT_ENTRIES):  # record what the report wrote (a later --force removes it)
            owned = read_marker(p.out)["entries"]
            write_marker(p.out, run_key, sorted(set(owned) | written))
        summary["report_dir"] = str(p.out)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        write_json(p.out / PACKAGE_FILE, summary)
    if failures:
        error = PackageError(f"{len(failures)} of {len(p.profiles)} targets failed: "
                             + "; ".join(f"{t}: {f['error']}" for t, f in failures.items())
                             + f" (the others are in {p.out}; see {p.out / 'report.md'})")
        error.summary = summary  # the CLI prints it before the error
        raise error
    return summary


def _results(run: steps.Run, failures: dict) -> dict:
    """The report's numbers, from the stages' results: per width (keyed as the manifest keys widths, "1.00")
    and per target that completed."""
    results = run.stages.results

    def per_width(prefix: str) -> dict:
        return {w.key: results[f"{prefix}-{w.tag}"] for w in run.plan.widths if f"{prefix}-{w.tag}" in results}

    bundles = {}
    for target in run.plan.profiles:
        if target in failures:
            continue
        shipped = results[f"bundle-{target}"]
        measured = results.get(f"bench-{target}")
        bench = ({"skipped": steps.bench_skipped(run, target)} if measured is None else
                 {"runtime": measured["runtime"], "rows": measured["rows"], "policy": shipped["policy"],
                  "top_choice": shipped["top_choice"]})
        recipes = {w.key: {k: r[k] for k in ("planned_s", "components")} | {"file": str(Path(r["dir"]) / r["file"])}
                   for w in run.plan.widths if (r := results.get(f"recipe-{target}-{w.tag}"))}
        bundles[target] = {**results[f"export-{target}"], "dir": shipped["dir"], "bench": bench,
                           **({"recipes": recipes} if recipes else {})}
    return {"calibration": per_width("calib"), "quantize": per_width("quant"), "float_quality": per_width("quality"),
            "bundles": bundles}
