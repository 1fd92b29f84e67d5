"""Verify a bundle end to end: the structural checks of edgekit.bundle (schema, integrity, every file's
sha256, what the manifest means), then each component's stored verification inputs replayed in the runtime
its format has here (edgekit.runtime.runners) and compared with the stored torch outputs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgekit.bundle import check_bundle, component_entries, entry_label, lookup
from edgekit.errors import VerificationError


def verify(bundle_dir: Path | str, numeric: bool = True, node: bool = False) -> dict:
    """Check a bundle: ``edgekit.bundle.check_bundle``, then (``numeric``) the stored verification data
    replayed (``node``: in onnxruntime-web under Node for ONNX entries).

    Returns {"bundle", "target", "files": n, "checks": [...]}; raises VerificationError naming the file, key
    or component."""
    from edgekit.progress import track
    from edgekit.runtime.runners import recheck_entry

    bundle_dir = Path(bundle_dir)
    manifest, count = check_bundle(bundle_dir)
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
