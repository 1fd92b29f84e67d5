"""Measure a bundle's table: for each (width, steps), end-to-end latency of one image with the bundle's
own runtime on this host, timed round-robin (every row once per round, warm-up excluded; median and the
25..75% spread of the rounds), and quality from edgekit.quality (reference fidelity against the float model
the bundle was exported from, plus the extras that model declares and CLIP score with a local CLIP).

Measuring writes nothing into the bundle: the rows are the bench's own output (``write_measured``, a JSON file
beside the bundle), and one explicit step, ``merge_table``, writes them (and the policy parameters, when the
bundle has none) into the manifest, checksums renewed.

Row format: notes/schema.md ("the measured table row")."""
from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edgekit.errors import InputError
from edgekit.width import Width, WidthError


@dataclass(frozen=True)
class BenchConfig:
    steps: tuple[int, ...] | None = None  # None: every schedule the bundle has
    widths: tuple | None = None  # Width spellings; None: every width the bundle has
    samples: int = 20  # images per row for quality
    repeats: int = 7  # interleaved timing rounds (one image per row per round)
    seed: int = 0
    threads: int | None = None
    reference_model: Path | None = None  # None: latency only (quality needs the float model)
    clip: Path | None = None  # a local CLIP directory: adds clip_score
    cache_root: Path | None = None  # reference images cache (None: edgekit.quality.fidelity's default)
    # step-cache intervals to measure rows at (edgekit.step_cache; 1 = the plain loop): each above 1 must be one
    # the bundle offers; a step count below an interval has no plan there and no row
    cache_intervals: tuple[int, ...] = (1,)

    def __post_init__(self):  # limits named before the bundle is loaded (edgekit.limits)
        from edgekit.limits import check_repeats, check_samples, check_step_counts, check_threads

        check_samples(self.samples)
        check_repeats(self.repeats)
        if self.threads is not None:
            check_threads(self.threads)
        if self.steps is not None:
            check_step_counts(self.steps)
        from edgekit.step_cache import parse_intervals

        parse_intervals(list(self.cache_intervals), "cache")


def host_device() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical cores"


def _comparable(row: dict, new_rows: list) -> bool:
    """A kept row must rank on the same scale as the new rows: same evaluator, metric and reference."""
    if not new_rows or not isinstance(new_rows[0].get("quality"), dict):
        return True

    def scale(r):
        q = r.get("quality")
        return (q.get("evaluator"), q.get("metric"), q.get("reference")) if isinstance(q, dict) else None

    return scale(row) == scale(new_rows[0])


def _row_width(row: dict) -> Width | None:
    """The row's width, or None for a row naming no valid width (it then matches no other row)."""
    if row.get("width") is None:
        return None
    try:
        return Width.parse(row["width"])
    except (WidthError, TypeError):
        return None


def _merge(old_rows: list, new_rows: list) -> tuple[list, int]:
    """New rows replace rows of the same (width, steps, cache interval); rows measured on another device, or ranked by another
    evaluator or reference, are dropped: one table mixing devices would make the policy's latency budget
    meaningless, one mixing quality scales its ranking."""
    device = new_rows[0]["device"] if new_rows else None

    def key(r):
        return _row_width(r), int(r.get("steps", -1)), int(r.get("cache", 1))

    keys = {key(r) for r in new_rows}

    same = [r for r in old_rows if isinstance(r, dict) and r.get("device") == device and _comparable(r, new_rows)]
    kept = [r for r in same if key(r) not in keys]
    dropped = len(old_rows) - len(same)
    rows = sorted(kept + new_rows, key=lambda r: (-float(r["width"]), int(r["steps"]), int(r.get("cache", 1))))
    return rows, dropped


def time_rounds(run_row, keys: list, rounds: int, on_round=None) -> dict:
    """Per key, the milliseconds of ``run_row(key, round)`` over ``rounds`` interleaved rounds: every key once per
    round, each round starting one key later (no key always runs first, after a cold gap); one untimed warm-up
    run per key first (sessions, caches, allocator)."""
    for k in keys:
        run_row(k, 0)
    times = {k: [] for k in keys}
    for r in range(rounds):
        shift = r % len(keys)
        for k in keys[shift:] + keys[:shift]:
            t0 = time.perf_counter()
            run_row(k, r)
            times[k].append((time.perf_counter() - t0) * 1000.0)
        if on_round is not None:
            on_round(r)
    return times


def latency_summary(times_ms: list[float]) -> dict:
    lo, mid, hi = np.percentile(np.asarray(times_ms, np.float64), [25, 50, 75])
    return {"latency_ms": round(float(mid), 2), "latency_spread_ms": [round(float(lo), 2), round(float(hi), 2)],
            "latency_rounds": len(times_ms)}


def monotone_in_steps(rows: list[dict]) -> list[dict]:
    """At each width, a row with more steps must not be cheaper than one with fewer unless the measurement says
    so beyond its spread. An inversion inside the spreads (the more-steps row's 75th percentile reaches the
    fewer-steps row's 25th) is noise: the more-steps row takes the fewer-steps row's latency (the policy never
    under-budgets it) and says so in "latency_note". An inversion beyond the spreads is kept as measured and
    noted: the measurement, not an assumption, decides."""
    by_width: dict[tuple, list[dict]] = {}
    for r in rows:  # per width and cache interval: caching changes what a step costs
        by_width.setdefault((_row_width(r), int(r.get("cache", 1))), []).append(r)
    for group in by_width.values():
        group.sort(key=lambda r: int(r["steps"]))
        for prev, row in zip(group, group[1:]):
            if row["latency_ms"] >= prev["latency_ms"]:
                continue
            if row["latency_spread_ms"][1] >= prev["latency_spread_ms"][0]:
                row["latency_note"] = (f"measured median {row['latency_ms']} ms, below the {prev['steps']}-step "
                                       f"row's {prev['latency_ms']} ms inside both spreads: raised to it")
                row["latency_ms"] = prev["latency_ms"]
                row["latency_spread_ms"] = [row["latency_spread_ms"][0],
                                            max(row["latency_spread_ms"][1], prev["latency_ms"])]
            else:
                row["latency_note"] = (f"faster than the {prev['steps']}-step row beyond both spreads "
                                       f"({row['latency_spread_ms']} vs {prev['latency_spread_ms']} ms): kept as measured")
    return rows


def reference_model_of(manifest: dict, given: Path | None) -> Path | None:
    """The float model the bundle's quality is measured against: ``given`` (--reference-model), checked to be a
    model directory and then to be the model the bundle was exported from (same sha256 as the manifest's
    source_model), or the numbers would compare strangers. None when none was given: a manifest names its
    source by name and hash only (no path of the packaging host), so there is nothing to look up, and
    nothing else (the working directory) is ever hashed in its place."""
    from edgekit.modeldir import ModelDir

    if given is None:
        return None
    model = ModelDir.of(given, "reference_model")  # a model directory before anything is hashed
    path = model.path
    expected = (manifest.get("source_model") or {}).get("sha256")
    if expected and model.sha256 != expected:  # hashed once per process (the package's stages share it)
        raise InputError("not the model this bundle was exported from (sha256 differs from the manifest's "
                         "source_model.sha256)", param="reference_model", value=given)
    return path


def measure(bundle_dir: Path, config: BenchConfig, progress=None) -> tuple[list[dict], str]:
    """Measured rows for the requested (width, steps) grid; returns (rows, runtime description)."""
    from edgekit.quality.evaluator import ModelQuality
    from edgekit.runtime.sampler import BundleSampler

    sampler = BundleSampler(bundle_dir, threads=config.threads)
    try:
        widths = tuple(Width.parse(w) for w in (config.widths or sampler.widths()))
    except WidthError as exc:
        raise InputError(f"bench widths: {exc}") from None
    steps = config.steps or tuple(sampler.steps())
    for w in widths:
        sampler.components(w)  # refuses a width the bundle lacks before anything runs
    for s in steps:
        sampler.table(s)
    from edgekit.step_cache import parse_intervals

    intervals = parse_intervals(list(config.cache_intervals), "cache")
    for n in intervals:  # an interval the bundle does not offer is refused before anything runs
        if n > 1 and not any(n <= int(s) for s in steps):
            raise InputError(f"is larger than every measured step count ({', '.join(map(str, steps))})",
                             param="cache", value=n)
        for s in steps:
            if n <= int(s):
                sampler.cache_plan(n, int(s))
    reference = reference_model_of(sampler.manifest, config.reference_model)
    guidance = float(sampler.manifest["sampling"]["guidance_scale"])
    evaluation = None
    if reference is not None:
        evaluation = ModelQuality(reference, config.samples, config.seed, clip_dir=config.clip,
                                  cache_root=config.cache_root, param="reference_model", guidance_scale=guidance,
                                  progress=progress)
        grid = evaluation.grid
    else:  # latency only: the timing rounds still cycle through the general evaluation prompts and seeds
        from edgekit.quality.evaluator import general_grid

        grid = general_grid(min(config.repeats, 64), config.seed)
    device = host_device()
    keys = [(w, int(s), n) for w in widths for s in steps for n in intervals if n <= int(s)]
    task = progress.add_task("bench", total=config.repeats + (len(keys) if evaluation else 0)) if progress else None

    def run_row(key, r):
        sampler.generate([grid.prompts[r % len(grid)]], [grid.seeds[r % len(grid)]], key[1], key[0], cache=key[2])

    def cached(n: int) -> dict:  # a row's cache interval, where not the plain loop (old rows and twins read 1)
        return {"cache": n} if n > 1 else {}

    times = time_rounds(run_row, keys, config.repeats,
                        on_round=(lambda _: progress.update(task, advance=1)) if task is not None else None)
    if evaluation is None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return monotone_in_steps([{"width": w.value, "steps": s, **cached(n), **latency_summary(times[(w, s, n)]),
                                   "device": device, "runtime": sampler.runtime, "measured_at": now}
                                  for w, s, n in keys]), sampler.runtime
    evaluation.reference()  # before the first candidate, so its cost is not in any row
    rows = []
    for w, s, n in keys:
        images, _ = sampler.generate(list(grid.prompts), list(grid.seeds), s, w, cache=n)
        scores = evaluation.score(images)
        rows.append({"width": w.value, "steps": s, **cached(n), **latency_summary(times[(w, s, n)]), "device": device,
                     "runtime": sampler.runtime,
                     "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), **scores.row})
        if task is not None:
            progress.update(task, advance=1)
    return monotone_in_steps(rows), sampler.runtime


MEASURED_FORMAT = "edgekit-measured-table/1"


def write_measured(path: Path, rows: list[dict], runtime: str) -> None:
    """The measured rows as the bench's own output (a JSON file beside the bundle, never inside it): the merge
    step (``merge_table``, ``edgekit bench --import-table``) reads it back into a manifest."""
    from edgekit.bundle import strict_json
    from edgekit.fsutil import staged_file

    with staged_file(Path(path)) as tmp:
        tmp.write_text(json.dumps(strict_json({"format": MEASURED_FORMAT, "runtime": runtime, "rows": rows}),
                                  indent=2, allow_nan=False) + "\n")


def read_measured(path: Path) -> tuple[list[dict], str]:
    """(rows, runtime) of a file ``write_measured`` wrote; a plain JSON list of rows (measured on a phone) too."""
    from edgekit.safe_read import read_json

    data = read_json(Path(path), "table of measured rows (JSON)", param="import_table", invalid="not JSON")
    if isinstance(data, dict) and data.get("format") == MEASURED_FORMAT and isinstance(data.get("rows"), list):
        return data["rows"], str(data.get("runtime") or "imported")
    if isinstance(data, list):
        return data, "imported"
    raise InputError(f"expected a JSON list of table rows or an edgekit bench table ('{MEASURED_FORMAT}')",
                     param="import_table", value=path)


def table_manifest(manifest: dict, rows: list[dict], policy: dict | None, where: str) -> tuple[dict, int]:
    """``manifest`` with ``rows`` merged into its table and the policy parameters (``policy``; else the bundle's;
    else edgekit's default), checked by the policy (every row one the bundle can run); and how many earlier rows
    measured on another device were dropped. Writes nothing."""
    from edgekit.policy import Policy, PolicyConfig

    table, dropped = _merge(list(manifest.get("table") or []), rows)
    if policy is not None:
        policy_dict = PolicyConfig.from_dict(policy, "policy").to_dict()
    elif manifest.get("policy"):
        policy_dict = PolicyConfig.from_dict(manifest["policy"], "manifest.json: policy").to_dict()
    else:
        policy_dict = PolicyConfig.default().to_dict()
    new = {**manifest, "table": table, "policy": policy_dict}
    Policy.from_manifest(new, where=where)
    return new, dropped


def merge_table(bundle_dir: Path, manifest: dict, rows: list[dict], policy: dict | None) -> tuple[dict, int]:
    """The one step that writes a measured table into a bundle's manifest (``table_manifest``), atomically and
    with fresh sha256s (bundle.write_manifest refuses a damaged bundle). ``edgekit bench`` ends with it;
    ``edgekit package`` writes each shipped bundle once with its table instead (edgekit.package.steps.ship)."""
    from edgekit.bundle import write_manifest

    new, dropped = table_manifest(manifest, rows, policy, where=str(bundle_dir))
    return write_manifest(bundle_dir, new), dropped


def import_rows(path: Path, manifest: dict) -> list[dict]:
    """Rows measured elsewhere (e.g. on a phone): a JSON list of table rows, each naming its device, or the file
    ``write_measured`` wrote (edgekit bench --table-out)."""
    from edgekit.policy import parse_table
    from edgekit.safe_read import printable, read_json

    # bounded: a regular file (a FIFO is refused, never waited on), its size, nesting and numbers
    rows = read_json(path, "table of measured rows (JSON)", param="import_table", invalid="not JSON")
    if isinstance(rows, dict) and rows.get("format") == MEASURED_FORMAT:  # edgekit bench --table-out's file
        rows = rows.get("rows")
    parse_table(rows, f"--import-table {path}")  # device names bounded in length
    for i, r in enumerate(rows):
        # a device name is printed and shown on devices: control characters (terminal escapes) are dropped
        r["device"] = printable(r.get("device") or "").strip()
        if not r.get("device"):
            raise InputError(f"row {i} does not say which device measured it ('device')", param="import_table",
                             value=path)
    devices = {r["device"] for r in rows}
    if len(devices) > 1:
        raise InputError(f"rows from several devices {sorted(devices)}; one table per device", param="import_table",
                         value=path)
    return rows
