"""--out ownership: a package output is edgekit's only when it holds the marker (.edgekit-package.json: format
id, run key, edgekit version, the top-level entries edgekit wrote there). A non-empty directory without it is
refused unless --force; --force restarts an earlier output by removing only the entries its marker lists."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgekit import __version__
from edgekit.errors import InputError
from edgekit.package.config import DEFAULT_TARGETS
from edgekit.package.stages import STAGES_DIR, write_json

PACKAGE_FILE = "package.json"
REPORT_ENTRIES = ("report.md", "report.json", "plots")  # what edgekit.report.write_report writes
MARKER = ".edgekit-package.json"  # edgekit's own mark on a package output: only a directory holding it is resumed
MARKER_FORMAT = "edgekit-package/1"


@dataclass(frozen=True)
class OutDir:
    """--out as checked before any work; nothing is written to it until the run starts."""

    path: Path
    owned: tuple[str, ...] = ()  # top-level entries an earlier run wrote (from its marker)
    restart: bool = False  # --force on an earlier output: its entries are removed before the run


def out_entries(targets) -> tuple[str, ...]:
    """The top-level entries a run writes in --out (besides the marker)."""
    return (STAGES_DIR, *targets, PACKAGE_FILE, *REPORT_ENTRIES)


def read_marker(out: Path) -> dict | None:
    """The marker of an earlier package run in ``out``, or None when there is none."""
    path = Path(out) / MARKER
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{MARKER} is not readable JSON ({exc}); remove it or choose another output directory",
                         param="out", value=out) from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or data.get("format") != MARKER_FORMAT or not isinstance(entries, list)
            or not all(isinstance(e, str) and e not in ("", ".", "..", MARKER) and "/" not in e and "\\" not in e
                       for e in entries)):
        raise InputError(f"{MARKER} is not an edgekit package marker (expected format '{MARKER_FORMAT}' and a list "
                         "of entry names); remove it or choose another output directory", param="out", value=out)
    return data


def check_out(out: Path, source: Path, force: bool, targets=DEFAULT_TARGETS) -> OutDir:
    """--out may be new, empty, or an earlier package output (resumed; restarted with --force). The marker
    file decides what is an earlier output: a non-empty directory without it is refused unless --force, and
    even then nothing edgekit did not write is replaced or removed (a name it would write is refused)."""
    from edgekit.output_checks import check_output_path, check_writable

    out = check_output_path(out, [source], force=True, replaces=False)  # overlap with the model, a writable parent
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", param="out", value=out)
    check_writable(out)
    marker = read_marker(out) if out.is_dir() else None
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if marker is None and present and not force:
        raise InputError(f"already exists and is not an edgekit package output (no {MARKER}); choose a new "
                         "directory, or pass {force} to write edgekit's files beside the ones there", param="out",
                         value=out, mentions=("force",))
    owned = tuple(marker["entries"]) if marker else ()
    foreign = [name for name in out_entries(targets) if name in present and name not in owned]
    if foreign:
        raise InputError(f"holds {', '.join(foreign)}, which edgekit did not write and would overwrite ({{force}} "
                         "never replaces files edgekit did not write); move them or choose another output directory",
                         param="out", value=out, mentions=("force",))
    return OutDir(out, owned=owned, restart=force and marker is not None)


def claim_out(out: OutDir, targets, run_key: str) -> None:
    """Make --out this run's: with --force remove what an earlier run wrote (only that), remove the temporary
    leftovers of killed runs, and write the marker before any stage writes."""
    from edgekit.fsutil import remove_stale_partials

    root = out.path
    root.mkdir(parents=True, exist_ok=True)
    if out.restart:
        for name in out.owned:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    for directory, name in ((root.parent, root.name), (root, None), (root / STAGES_DIR, None)):
        remove_stale_partials(directory, name)
    owned = () if out.restart else out.owned
    write_marker(root, run_key, sorted(set(owned) | set(out_entries(targets))))


def write_marker(root: Path, run_key: str, entries) -> None:
    write_json(root / MARKER, {"format": MARKER_FORMAT, "edgekit": __version__, "run_key": run_key,
                                "entries": list(entries),
                                "about": "written by edgekit package: marks this directory as its output; a "
                                         "rerun resumes it and replaces only the entries listed here"})
