"""Atomic output directories: stages write into a temporary sibling and rename it into place at the end,
so a crash or an error leaves no half-written output, and no stage ever writes inside its input."""
from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgekit.errors import InputError


def check_output_path(out: Path, protected: list[Path], *, flag: str = "--out", force: bool = False,
                      is_file: bool = False) -> Path:
    """Resolve ``out`` and refuse it when it overlaps an input or exists (unless ``force``).

    ``is_file``: the output is one file (replaced when ``force``), else a directory."""
    out = Path(out).resolve()
    for inp in protected:
        inp = Path(inp).resolve()
        if out == inp or inp in out.parents:
            raise InputError(f"{flag} {out}: is inside the input {inp}; choose a path outside it")
        if out in inp.parents:
            raise InputError(f"{flag} {out}: contains the input {inp}; choose a path outside it")
    if out.exists() and not force:
        raise InputError(f"{flag} {out}: already exists (pass --force to replace it)")
    if out.exists() and force and out.is_dir() == is_file:
        expected = "a file" if is_file else "a directory"
        raise InputError(f"{flag} {out}: exists and is not {expected}")
    return out


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it replaces ``out``, on error it is removed."""
    out = Path(out).resolve()
    created = [p for p in reversed(out.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            try:
                parent.rmdir()
            except OSError:
                break
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


@contextmanager
def staged_file(out: Path) -> Iterator[Path]:
    """Like ``staged_dir`` for a single file."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}{out.suffix}"
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(out)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_tree(root: Path) -> str:
    """One digest over every regular file below ``root`` (relative path and content), hidden files skipped."""
    digest = hashlib.sha256()
    root = Path(root)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        digest.update(str(rel.as_posix()).encode())
        digest.update(b"\0")
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()
