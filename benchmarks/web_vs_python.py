"""Per-row latency of one bundle in two runtimes on this host, side by side in one run: onnxruntime
(Python, CPU; what `edgekit bench` measures) and onnxruntime-web (wasm) in headless Chromium through the
demo page. Writes benchmarks/results/web_vs_python.{json,md}.

    .venv/bin/python benchmarks/web_vs_python.py --bundle BUNDLE [--steps 4,20] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def python_ms(bundle: Path, steps: int, width: float, repeats: int) -> list[float]:
    from edgekit.runtime.sampler import BundleSampler

    sampler = BundleSampler(bundle, threads=1)
    sampler.generate(["a handwritten digit seven"], [0], steps, width)
    times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        sampler.generate(["a handwritten digit seven"], [k], steps, width)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def browser_ms(url: str, steps: int, width: float, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(["node", str(REPO / "benchmarks" / "web_latency.mjs"), url, profile, str(steps),
                               f"{width:.2f}", str(repeats), "1"], capture_output=True, text=True, timeout=1800, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--steps", default="4,20")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    widths = sorted((float(w) for w in manifest["components"]["unet"]["widths"]), reverse=True)
    server = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(args.bundle), "--port", "0"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        url = server.stdout.readline().split(" at ")[1].split()[0]
        rows = []
        for width in widths:
            for steps in (int(s) for s in args.steps.split(",")):
                py = statistics.median(python_ms(args.bundle, steps, width, args.repeats))
                web = browser_ms(url, steps, width, args.repeats)
                wm = statistics.median(web["total_ms"])
                rows.append({"width": width, "steps": steps, "python_ort_ms": round(py, 1),
                             "browser_ms": round(wm, 1), "browser_provider": web["provider"],
                             "browser_over_python": round(wm / py, 2)})
                print(rows[-1], flush=True)
    finally:
        server.terminate()
        server.wait(timeout=20)
    from edgekit.runtime.bench import host_device

    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"bundle": str(args.bundle), "device": host_device(), "repeats": args.repeats,
               "python_runtime": "onnxruntime (Python, CPU, 1 thread)",
               "browser_runtime": "onnxruntime-web (wasm, 1 thread) in headless Chromium, via the demo page", "rows": rows}
    (RESULTS / "web_vs_python.json").write_text(json.dumps(payload, indent=2) + "\n")
    lines = [f"# Browser vs Python runtime, one image end to end ({host_device()}, median of {args.repeats})", "",
             "| width | steps | onnxruntime (Python) ms | onnxruntime-web (Chromium) ms | browser / Python |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['width']:.2f} | {r['steps']} | {r['python_ort_ms']} | {r['browser_ms']} ({r['browser_provider']}) | "
              f"{r['browser_over_python']}x |" for r in rows]
    (RESULTS / "web_vs_python.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
