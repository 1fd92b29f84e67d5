"""Measure a bundle's table: for each (width, steps), end-to-end latency of one image with the bundle's
own runtime on this host, and quality (prompt accuracy, Frechet distance) of the digit grid; then write
the rows (and the policy parameters, when the bundle has none) into the manifest, checksums renewed."""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgekit.errors import InputError


@dataclass(frozen=True)
class BenchConfig:
    steps: tuple[int, ...] | None = None  # None: every schedule the bundle has
    widths: tuple[float, ...] | None = None  # None: every width the bundle has
    samples_per_digit: int = 2
    repeats: int = 3
    seed: int = 0
    threads: int | None = None


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


def _merge(old_rows: list, new_rows: list) -> tuple[list, int]:
    """New rows replace rows of the same (width, steps); rows measured on another device are dropped,
    because one table mixing devices would make the policy's latency budget meaningless."""
    device = new_rows[0]["device"] if new_rows else None
    keys = {(float(r["width"]), int(r["steps"])) for r in new_rows}

    def key(r):
        return float(r.get("width", -1)), int(r.get("steps", -1))

    same_device = [r for r in old_rows if isinstance(r, dict) and r.get("device") == device]
    kept = [r for r in same_device if key(r) not in keys]
    dropped = len(old_rows) - len(same_device)
    rows = sorted(kept + new_rows, key=lambda r: (-float(r["width"]), int(r["steps"])))
    return rows, dropped


def measure(bundle_dir: Path, config: BenchConfig, progress=None) -> tuple[list[dict], str]:
    """Measured rows for the requested (width, steps) grid; returns (rows, runtime description)."""
    from edgekit.quality import digit_prompts, score_generations
    from edgekit.runtime.sampler import BundleSampler

    sampler = BundleSampler(bundle_dir, threads=config.threads)
    widths = config.widths or tuple(float(w) for w in sampler.widths())
    steps = config.steps or tuple(sampler.steps())
    for w in widths:
        sampler.components(w)  # refuses a width the bundle lacks before anything runs
    for s in steps:
        sampler.table(s)
    prompts, seeds, asked = digit_prompts(config.samples_per_digit, config.seed)
    device = host_device()
    rows = []
    task = progress.add_task("bench", total=len(widths) * len(steps)) if progress else None
    for w in widths:
        for s in steps:
            sampler.generate(prompts[:1], seeds[:1], s, w)  # warm-up: sessions, caches
            times = []
            for k in range(config.repeats):
                t0 = time.perf_counter()
                sampler.generate([prompts[(7 * k) % len(prompts)]], [config.seed + k], s, w)
                times.append((time.perf_counter() - t0) * 1000.0)
            images, _ = sampler.generate(prompts, seeds, s, w)
            report = score_generations(images, asked)
            rows.append({"width": float(w), "steps": int(s), "latency_ms": round(statistics.median(times), 2),
                         "device": device, "runtime": sampler.runtime,
                         "prompt_accuracy": round(report.prompt_accuracy, 4),
                         "frechet_distance": round(report.frechet_distance, 3),
                         "latency_repeats": config.repeats, "quality_images": report.n_images,
                         "measured_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
            if task is not None:
                progress.update(task, advance=1)
    return rows, sampler.runtime


def write_table(bundle_dir: Path, manifest: dict, rows: list[dict], policy: dict | None) -> tuple[dict, int]:
    """Put ``rows`` (and ``policy``, or the default when the bundle has none) into the manifest; the new
    manifest is checked by the policy before it is written, and written atomically with fresh sha256s."""
    from edgekit.bundle import write_manifest
    from edgekit.policy import Policy, PolicyConfig

    table, dropped = _merge(list(manifest.get("table") or []), rows)
    if policy is not None:
        policy_dict = PolicyConfig.from_dict(policy, "--policy").to_dict()
    elif manifest.get("policy"):
        policy_dict = PolicyConfig.from_dict(manifest["policy"], "manifest.json: policy").to_dict()
    else:
        policy_dict = PolicyConfig.default().to_dict()
    new = {**manifest, "table": table, "policy": policy_dict}
    Policy.from_manifest(new, where=str(bundle_dir))  # every row must be one the bundle can run
    return write_manifest(bundle_dir, new), dropped


def import_rows(path: Path, manifest: dict) -> list[dict]:
    """Rows measured elsewhere (e.g. on a phone): a JSON list of table rows, each naming its device."""
    import json

    from edgekit.policy import parse_table

    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"--import-table {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--import-table {path}: not JSON ({exc})") from None
    parse_table(rows, f"--import-table {path}")
    for i, r in enumerate(rows):
        if not r.get("device"):
            raise InputError(f"--import-table {path}: row {i} does not say which device measured it ('device')")
    devices = {r["device"] for r in rows}
    if len(devices) > 1:
        raise InputError(f"--import-table {path}: rows from several devices {sorted(devices)}; one table per device")
    return rows
