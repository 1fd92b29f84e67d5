"""Run a bundle's ONNX graphs in onnxruntime-web inside headless Chromium, on the wasm and WebGPU execution
providers (``browser.mjs`` beside this module, driven by playwright-core from npm; Debian's ``chromium``).

Where the machine has no GPU, Chromium's WebGPU adapter is SwiftShader (Vulkan on the CPU), so the check is
the same on every machine: a graph whose WebGPU result is wrong there (onnxruntime-web's INT8 QDQ graphs,
onnxruntime #32730) is refused before a page ever draws it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from edgekit.errors import MissingBackendError, VerificationError

DRIVER = Path(__file__).resolve().parent / "browser.mjs"
CHROMIUM_ENV = "EDGEKIT_CHROMIUM"
CHROMIUM_PACKAGE = "chromium"  # the Debian package (scripts/setup.sh installs it)
PROVIDERS = ("wasm", "webgpu")


def find_chromium() -> Path | None:
    """$EDGEKIT_CHROMIUM, else Debian's /usr/bin/chromium, else a ``chromium`` on PATH."""
    for candidate in (os.environ.get(CHROMIUM_ENV), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def web_dir() -> Path:
    """The demo page's directory (selfcheck.js is shared by the page and this check)."""
    return Path(__file__).resolve().parent.parent / "targets" / "web"


def browser_missing() -> str | None:
    """One line naming what to install when the browser check cannot run here, else None."""
    if find_chromium() is None:
        return (f"no Chromium found ({CHROMIUM_ENV}, /usr/bin/chromium, PATH): install the Debian package "
                f"'{CHROMIUM_PACKAGE}' (apt-get install {CHROMIUM_PACKAGE}) or set {CHROMIUM_ENV}")
    if shutil.which("node") is None:
        return "node is not installed (the browser check drives Chromium from Node: apt-get install nodejs)"
    from edgekit.resources import find_ort_web, ort_web_missing

    ort = find_ort_web()
    if ort is None:
        return ort_web_missing()
    if not (ort.parent / "playwright-core" / "index.mjs").is_file():
        return f"playwright-core not found beside onnxruntime-web in {ort.parent}: run `npm ci` in the checkout"
    return None


def _env() -> dict:
    from edgekit.resources import find_ort_web

    ort = find_ort_web()
    return {**os.environ, CHROMIUM_ENV: str(find_chromium()), "EDGEKIT_PLAYWRIGHT": str(ort.parent / "playwright-core"),
            "EDGEKIT_ORT_DIST": str(ort / "dist"), "EDGEKIT_WEB_DIR": str(web_dir())}


def _driver(args: list[str], timeout: float) -> dict:
    why = browser_missing()
    if why:
        raise MissingBackendError(why)
    try:
        proc = subprocess.run(["node", str(DRIVER), *args], capture_output=True, text=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired:
        raise VerificationError(f"headless Chromium: no answer in {timeout:.0f} s") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise VerificationError(f"headless Chromium: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else 'no output'}")
    return json.loads(lines[-1])


def check_bundle_in_browser(bundle_dir: Path, providers=PROVIDERS, labels=(), adapter: str = "swiftshader",
                            timeout: float = 1800) -> dict:
    """Every ONNX component (or ``labels``) of the bundle on every provider in headless Chromium.

    Returns {adapter, chromium, shader_f16, results: [{component, provider, file, precision, rel_err,
    max_abs_err, tolerance, passed, load_ms, run_ms} or {..., error, passed: False}]}."""
    args = ["check", str(bundle_dir), "--providers", ",".join(providers), "--adapter", adapter]
    if labels:
        args += ["--labels", ",".join(labels)]
    return _driver(args, timeout)


def run_graph_in_browser(directory: Path, model: str, request: Path, out_dir: Path, providers=PROVIDERS,
                         adapter: str = "swiftshader", timeout: float = 1800) -> dict:
    """One graph (``directory/model``) with the inputs ``request`` names, on each provider; every output is
    written to ``out_dir/<provider>/`` (the bisection in benchmarks/webgpu_int8_bisect.py reads them)."""
    return _driver(["graph", str(directory), model, str(request), str(out_dir), "--providers", ",".join(providers),
                    "--adapter", adapter], timeout)
