"""Do the measured tables rank rows the same way at another seed? (issue 11's goal for tables the policy trusts)

Runs `edgekit package` on the default model twice, identical but for --seed (which changes the evaluation
images' prompts order/seeds/noise, the calibration capture and the timing order), then compares per target:
- Spearman's rank correlation of the rows' quality (quality.value, paired fidelity vs the float reference);
- the policy's choice for a set of device states (the same state -> the same (width, steps) row?).

    .venv/bin/python benchmarks/policy_seed_stability.py [--targets ort-web,tflite] [--seeds 0,1] [--work DIR]

Writes benchmarks/results/policy_seed_stability.json and .md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
STATES = [  # (label, device state): from a phone on the charger to a hot phone in low-power mode
    ("charging, nominal", {"battery_level": 1.0, "charging": True, "low_power": False, "thermal": "nominal"}),
    ("battery 60%, fair", {"battery_level": 0.6, "charging": False, "low_power": False, "thermal": "fair"}),
    ("battery 30%, serious", {"battery_level": 0.3, "charging": False, "low_power": False, "thermal": "serious"}),
    ("battery 10%, low power, critical", {"battery_level": 0.1, "charging": False, "low_power": True,
                                          "thermal": "critical"}),
]


def spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def choices(manifest: dict) -> list[tuple[float, int]]:
    from edgekit.policy import DeviceState, Policy

    out = []
    for _, state in STATES:
        decision = Policy.from_manifest(manifest).decide(0.0, DeviceState.from_dict(state))
        out.append((decision.width, decision.steps))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="ort-web,tflite")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--work", type=Path, default=None, help="where the package outputs go (default: a temp dir)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = args.targets.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="seed_stability_"))
    runs = {}
    for seed in seeds:
        out = work / f"seed{seed}"
        started = time.perf_counter()
        subprocess.run([str(REPO / ".venv" / "bin" / "edgekit"), "package", "--targets", args.targets,
                        "--seed", str(seed), "--out", str(out), "--force"], check=True)
        runs[seed] = {"out": out, "seconds": round(time.perf_counter() - started, 1)}
    result = {"seeds": seeds, "targets": {}, "package_seconds": {s: r["seconds"] for s, r in runs.items()}}
    for target in targets:
        manifests = {s: json.loads((runs[s]["out"] / target / "manifest.json").read_text()) for s in seeds}
        tables = {s: {(r["width"], r["steps"]): r for r in m["table"]} for s, m in manifests.items()}
        keys = sorted(set.intersection(*(set(t) for t in tables.values())))
        a, b = ([tables[s][k]["quality"]["value"] for k in keys] for s in seeds[:2])
        picks = {s: choices(m) for s, m in manifests.items()}
        result["targets"][target] = {
            "rows": [{"width": k[0], "steps": k[1],
                      **{f"seed{s}": {"psnr_db": tables[s][k]["quality"]["value"], "ci95": tables[s][k]["quality"]["ci95"],
                                      "n": tables[s][k]["quality"]["n"], "latency_ms": tables[s][k]["latency_ms"]}
                         for s in seeds}} for k in keys],
            "spearman_quality": round(spearman(a, b), 4),
            "choices": [{"state": label, **{f"seed{s}": list(picks[s][i]) for s in seeds},
                         "same": len({tuple(picks[s][i]) for s in seeds}) == 1}
                        for i, (label, _) in enumerate(STATES)],
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "policy_seed_stability.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Table stability across seeds (`edgekit package` on the default model, seeds "
             + " vs ".join(map(str, seeds)) + ")", ""]
    for target, info in result["targets"].items():
        lines += [f"## {target}: Spearman of row quality {info['spearman_quality']:.3f}", "",
                  "| width | steps | " + " | ".join(f"seed {s} PSNR dB [95%] (n) | seed {s} ms" for s in seeds) + " |",
                  "|---:|---:|" + "---:|---:|" * len(seeds)]
        for r in info["rows"]:
            cells = []
            for s in seeds:
                q = r[f"seed{s}"]
                cells += [f"{q['psnr_db']:.2f} [{q['ci95'][0]:.2f}, {q['ci95'][1]:.2f}] ({q['n']})", f"{q['latency_ms']:.1f}"]
            lines.append(f"| {r['width']:g} | {r['steps']} | " + " | ".join(cells) + " |")
        lines += ["", "| device state | " + " | ".join(f"seed {s} choice" for s in seeds) + " | same |",
                  "|---|" + "---|" * len(seeds) + "---|"]
        for c in info["choices"]:
            lines.append(f"| {c['state']} | " + " | ".join(f"w{c[f'seed{s}'][0]:g} x{c[f'seed{s}'][1]}" for s in seeds)
                         + f" | {'yes' if c['same'] else 'no'} |")
        lines.append("")
    lines.append(f"Package wall time per run (s): {result['package_seconds']}")
    (RESULTS / "policy_seed_stability.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
