"""Verify a bundle end to end: the structural checks of edgekit.bundle (schema, integrity, every file's
sha256, what the manifest means), then each component's stored verification inputs replayed in the runtime
its format has here (edgekit.runtime.runners) and compared with the stored torch outputs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekit.bundle import check_bundle, component_entries, entry_label, lookup
from edgekit.errors import InputError, MissingBackendError, VerificationError


def verify(bundle_dir: Path | str, numeric: bool = True, node: bool = False, browser: bool = False) -> dict:
    """Check a bundle: ``edgekit.bundle.check_bundle``, then (``numeric``) the stored verification data
    replayed (``node``: in onnxruntime-web under Node for ONNX entries; ``browser``: in headless Chromium on
    wasm and WebGPU, see ``verify_in_browser``).

    Returns {"bundle", "target", "files": n, "checks": [...]}; raises VerificationError naming the file, key
    or component."""
    from edgekit.progress import track
    from edgekit.runtime.runners import recheck_entry

    bundle_dir = Path(bundle_dir)
    if browser:  # before the slower checks: a machine without Chromium is told so at once
        from edgekit.runtime.browser import browser_missing

        why = browser_missing()
        if why:
            raise MissingBackendError(f"--browser: {why}")
    manifest, count = check_bundle(bundle_dir)
    if browser:
        return {"bundle": os.fspath(bundle_dir), "target": manifest["target"], "files": count,
                "checks": verify_in_browser(bundle_dir, manifest)}
    checks = []
    if numeric:
        for name, width, entry in track(list(component_entries(manifest)), "verify: each component's stored check"):
            record = lookup(manifest["verification"], name, width)
            label = entry_label(name, width)
            if not record or "data" not in record:
                checks.append({"component": label, "skipped": "no verification data in the bundle"})
                continue
            result = recheck_entry(bundle_dir, entry, record, node=node)
            result["component"] = label
            tolerance = float(record["tolerance"])
            if "rel_err" in result and not (np.isfinite(result["rel_err"]) and result["rel_err"] <= tolerance):
                raise VerificationError(f"{label}: {bundle_dir / entry['file']} rel-err {result['rel_err']:.3g} "
                                        f"> tolerance {tolerance:.3g} in {result['runtime']}")
            checks.append(result)
    return {"bundle": os.fspath(bundle_dir), "target": manifest["target"], "files": count, "checks": checks}


def verify_in_browser(bundle_dir: Path, manifest: dict) -> list[dict]:
    """Every ONNX component in headless Chromium on wasm and WebGPU. A wrong wasm result, or a WebGPU result
    that is wrong where the manifest records that WebGPU passed (the page would draw it), raises
    VerificationError naming the component and the numbers; a WebGPU failure the manifest already records
    (or a bundle whose export ran no browser check) is reported, not raised: the page runs that component on
    wasm. The bundle is not written to."""
    from edgekit.runtime.browser import check_bundle_in_browser

    if not any(entry["format"] == "onnx" for _, _, entry in component_entries(manifest)):
        raise InputError(f"--browser: {bundle_dir} is a '{manifest['target']}' bundle with no ONNX graph (expected an "
                         "ort-web bundle)")
    answer = check_bundle_in_browser(bundle_dir)
    checks = []
    for result in answer["results"]:
        name, _, width = result["component"].partition("@")
        record = lookup(manifest["verification"], name, width or None) or {}
        ep = result.get("provider", "")
        recorded = (record.get("providers") or {}).get(ep) if isinstance(record.get("providers"), dict) else None
        check = {"component": result["component"], "provider": ep, "runtime": f"onnxruntime-web (Chromium "
                 f"{answer['chromium']}, {ep}{', ' + answer['adapter'] if ep == 'webgpu' and answer['adapter'] else ''})",
                 **{k: result[k] for k in ("file", "precision", "rel_err", "max_abs_err", "tolerance", "passed", "error",
                                           "load_ms", "run_ms", "skipped") if k in result}}
        if recorded is not None:
            check["recorded_passed"] = recorded.get("passed")
        checks.append(check)
        if "skipped" in result or result["passed"]:
            continue
        what = result.get("error") or f"rel-err {result['rel_err']:.3g} > tolerance {result['tolerance']:.3g}"
        if ep == "wasm" or (recorded or {}).get("passed"):
            raise VerificationError(f"{result['component']}: {bundle_dir / result['file']} on {ep} in Chromium: {what}"
                                    + (" (the manifest records that it passed)" if ep != "wasm" else ""))
    return checks
