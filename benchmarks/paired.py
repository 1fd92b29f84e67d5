"""Paired quality of a variant against a baseline on the same images (same prompts, seeds and noise), for the
benchmark scripts that compare one bundle setting with another on the digits model: the digit-accuracy difference
with paired 95% intervals (Tango's score interval, Newcombe's hybrid score, a paired bootstrap: the helpers of
benchmarks/int8_recipes.py), PSNR against the baseline's image and of each against the float model, and the run's
record (commit, command, machine)."""
from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_recipes import newcombe_paired_ci95, paired_bootstrap_ci95, tango_paired_ci95  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def paired(labels, pred, pred_base, img, img_base, reference) -> dict:
    """The variant (v) against the baseline (b) on the same images."""
    from edgekit.quality.metrics import mean_ci95, psnr_per_image

    labels = np.asarray(labels)
    ok_v, ok_b = np.asarray(pred) == labels, np.asarray(pred_base) == labels
    both, only_v = int((ok_v & ok_b).sum()), int((ok_v & ~ok_b).sum())
    only_b, neither = int((~ok_v & ok_b).sum()), int((~ok_v & ~ok_b).sum())
    n = len(labels)
    vs_base = mean_ci95(psnr_per_image(img, img_base))
    vs_float, base_vs_float = (mean_ci95(psnr_per_image(x, reference)) for x in (img, img_base))
    rounded = lambda pair: [round(float(x), 4) for x in pair]  # noqa: E731
    db = lambda v: {"value": round(v[0], 2), "ci95": [round(x, 2) for x in v[1]]}  # noqa: E731
    return {"n": n, "accuracy": round(float(ok_v.mean()), 4), "accuracy_base": round(float(ok_b.mean()), 4),
            "pairs": {"both": both, "only_variant": only_v, "only_base": only_b, "neither": neither},
            "accuracy_diff": round(float(ok_v.mean() - ok_b.mean()), 4),
            "accuracy_diff_tango_ci95": rounded(tango_paired_ci95(only_v, only_b, n)),
            "accuracy_diff_newcombe_ci95": rounded(newcombe_paired_ci95(both, only_v, only_b, neither)),
            "accuracy_diff_bootstrap_ci95": rounded(paired_bootstrap_ci95(ok_v, ok_b)),
            "psnr_vs_base_db": db(vs_base), "psnr_vs_float_db": db(vs_float), "base_psnr_vs_float_db": db(base_vs_float)}


def paired_table(rows: list[dict], key: str, variant: str) -> list[str]:
    """Markdown lines of the paired rows, first column ``key`` (e.g. factor, interval); ``variant`` names the
    variant in the pairs column."""
    pts = lambda x: f"{100 * x:+.1f}"  # noqa: E731
    ci = lambda v: f"{v['value']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]"  # noqa: E731
    lines = [f"| {key} | steps | n | accuracy | base accuracy | diff pts [Tango 95%] [Newcombe 95%] | pairs both/only "
             f"{variant}/only base/neither | PSNR vs base dB [95%] | PSNR vs float dB [95%] | base PSNR vs float dB [95%] |",
             "|---:|---:|---:|---:|---:|---|---|---|---|---|"]
    for r in rows:
        (tlo, thi), (lo, hi), c = r["accuracy_diff_tango_ci95"], r["accuracy_diff_newcombe_ci95"], r["pairs"]
        lines.append(f"| {r[key]} | {r['steps']} | {r['n']} | {r['accuracy']:.3f} | {r['accuracy_base']:.3f} | "
                     f"{pts(r['accuracy_diff'])} [{pts(tlo)}, {pts(thi)}] [{pts(lo)}, {pts(hi)}] | "
                     f"{c['both']}/{c['only_variant']}/{c['only_base']}/{c['neither']} | {ci(r['psnr_vs_base_db'])} | "
                     f"{ci(r['psnr_vs_float_db'])} | {ci(r['base_psnr_vs_float_db'])} |")
    return lines


def run_record(command: str) -> dict:
    """What a results file records about its run: commit, the exact command, the machine, the date."""
    from edgekit.runtime.bench import host_device

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"commit": commit, "command": command, "host": host_device(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d")}
