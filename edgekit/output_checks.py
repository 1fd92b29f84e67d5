"""Checks of an output path before any work starts: it overlaps no input, an existing one is replaced only when
asked and only when edgekit wrote it, and something can be created there. Writing the output itself is
edgekit.fsutil's (a staged sibling renamed into place)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgekit.errors import InputError
from edgekit.fsutil import edgekit_output


def check_writable(path: Path, param: str = "out", shown: Path | None = None) -> None:
    """Refuse, before any work, an output path where nothing can be created: a parent that is a file, a
    read-only or virtual filesystem (/proc), a directory without write permission. Probes by creating and
    removing one empty file in ``path`` or its nearest existing parent (permission bits alone do not tell,
    e.g. for root or a read-only mount). ``param``: the parameter that gave the path; ``shown``: the path
    the user gave, named in the error."""
    path = Path(path)
    shown = path if shown is None else shown
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{existing} is a file, not a directory", param=param, value=shown)
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgekit-write-test-", dir=existing)
    except OSError as exc:
        raise InputError(f"cannot create files in {existing} ({exc.strerror})", param=param, value=shown) from None
    os.close(fd)
    os.unlink(probe)


def _resolved(path: Path, param: str | None = None, label: str | None = None) -> Path:
    """``path`` resolved, or one InputError naming ``param`` (else ``label``, else the path)."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        if param is None:
            raise InputError(f"{label or path}: cannot be resolved ({exc})") from None
        raise InputError(f"cannot be resolved ({exc})", param=param, value=path) from None


def check_output_path(out: Path, protected: list[Path], *, param: str = "out", force: bool = False,
                      is_file: bool = False, replaces: bool = True) -> Path:
    """Resolve ``out`` and refuse it when it overlaps an input or exists (unless ``force``); errors name ``param``,
    the parameter that gave it.

    ``is_file``: the output is one file (replaced when ``force``), else a directory. ``replaces``: a forced
    existing directory is replaced as a whole, so it must be empty or an edgekit output (``edgekit_output``):
    --force never deletes files edgekit did not write. A caller that writes beside what is there (package)
    passes False and checks what it may touch itself."""
    out = _resolved(out, param)
    for inp in protected:
        inp = _resolved(inp)
        if out == inp or inp in out.parents:
            raise InputError(f"is inside the input {inp}; choose a path outside it", param=param, value=out)
        if out in inp.parents:
            raise InputError(f"contains the input {inp}; choose a path outside it", param=param, value=out)
    if out.exists() and not force:
        raise InputError("already exists (pass {force} to replace it)", param=param, value=out, mentions=("force",))
    if out.exists() and force and out.is_dir() == is_file:
        expected = "a file" if is_file else "a directory"
        raise InputError(f"exists and is not {expected}", param=param, value=out)
    if out.is_dir() and not is_file:
        # A replaced output directory is deleted first: never the one the user works in, one holding it,
        # their home or the filesystem root (`--out . --force` would empty the current folder).
        cwd, home = _resolved(Path.cwd(), label="the working directory"), Path.home().resolve()
        if out == cwd or out in cwd.parents or out == home or out == Path(out.anchor):
            raise InputError("is the working directory, one that holds it, the home directory or the filesystem "
                             "root; choose a new directory for the output", param=param, value=out)
        if force and replaces and edgekit_output(out) is None:
            raise InputError("holds files edgekit did not write (no edgekit manifest or marker), and {force} "
                             "replaces only an earlier edgekit output; move them or choose another directory",
                             param=param, value=out, mentions=("force",))
    check_writable(out.parent, param, out)  # the output is staged beside it
    return out
