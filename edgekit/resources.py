"""Files edgekit ships beside its code, found the same way from a source checkout and from an installed wheel.

- Target profiles (``targets/*.yaml``) and prompt sets (``calibration_data/*.txt``): in a source checkout the
  top-level copies a user edits win; an installed wheel carries its own copies under ``edgekit/_data/``
  (the wheel build copies them there, see setup.py). A ``--profile``/``--prompts`` flag wins over both.
- onnxruntime-web for the Node checks: the first ``node_modules`` holding it of (1) the source checkout's
  (``npm ci`` there), (2) the directory ``EDGEKIT_NODE_MODULES`` names, (3) the wheel's own copy (the Node
  build of onnxruntime-web and onnxruntime-common, copied at wheel build time when ``npm ci`` had run).
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_DATA = PACKAGE_DIR / "_data"
NODE_MODULES_ENV = "EDGEKIT_NODE_MODULES"
ORT_WEB = "onnxruntime-web"


def checkout_root() -> Path | None:
    """The source checkout edgekit runs from (an editable install), or None for an installed wheel."""
    root = PACKAGE_DIR.parent
    pyproject = root / "pyproject.toml"
    try:
        return root if pyproject.is_file() and 'name = "edgekit"' in pyproject.read_text(encoding="utf-8") else None
    except OSError:
        return None


def shipped_path(*parts: str) -> Path:
    """``parts`` under the checkout (the user-editable copy) when edgekit runs from one, else the wheel's copy."""
    root = checkout_root()
    if root is not None and root.joinpath(*parts).exists():
        return root.joinpath(*parts)
    return PACKAGE_DATA.joinpath(*parts)


def node_modules_candidates() -> list[tuple[str, Path]]:
    """(where from, node_modules directory) in lookup order."""
    out = []
    root = checkout_root()
    if root is not None:
        out.append(("the source checkout", root / "node_modules"))
    if os.environ.get(NODE_MODULES_ENV):
        out.append((NODE_MODULES_ENV, Path(os.environ[NODE_MODULES_ENV]).expanduser()))
    out.append(("edgekit's own copy", PACKAGE_DATA / "node_modules"))
    return out


def find_ort_web() -> Path | None:
    """The onnxruntime-web package directory the Node checks use, or None."""
    for _, directory in node_modules_candidates():
        if (directory / ORT_WEB / "package.json").is_file():
            return directory / ORT_WEB
    return None


def ort_web_missing() -> str:
    """One line: where onnxruntime-web was looked for."""
    places = ", ".join(f"{what} ({path})" for what, path in node_modules_candidates())
    return (f"onnxruntime-web not found in {places}; run `npm ci` in the checkout or set {NODE_MODULES_ENV} to a "
            "node_modules holding onnxruntime-web")
