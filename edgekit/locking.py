"""One writer at a time per output: an advisory lock (fcntl.flock) on ``.<name>.lock`` beside a bundle or a
package directory, held by every command that writes it (export, package, bench, an imported table). A second
writer is refused at once, in one line naming the holder's PID and command, instead of interleaving its
writes with the first one's (two exports into one --out; a bench writing its table into a manifest that an
export replaced meanwhile).

The lock file holds "<pid> <command>" for that message and is removed by its holder on release. A process
killed outright leaves the file but not the lock (the kernel drops a flock with its holder), so a later writer
takes it over. Locks are re-entrant within one process: a stage that holds its --out may call code that
locks the same path again (write_manifest inside bench)."""
from __future__ import annotations

import fcntl
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgekit.errors import EdgekitError

_held: dict[Path, int] = {}  # lock path -> nesting depth in this process


class OutputBusyError(EdgekitError):
    """Another edgekit process is writing the same output; nothing was written."""

    exit_code = 1


def lock_path(out: Path) -> Path:
    """The lock file of the output ``out``: beside it (a bundle holds no hidden files)."""
    out = Path(out).resolve()
    return out.parent / f".{out.name}.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")[:200].split(None, 1)
    except OSError:
        return "another process"
    if not text or not text[0].isdigit():
        return "another process"
    what = "".join(c for c in (text[1] if len(text) > 1 else "edgekit").strip() if c.isprintable())[:60]
    return f"PID {text[0]} ({what})"


@contextmanager
def output_lock(out: Path, what: str | None = None, *, param: str = "out") -> Iterator[Path]:
    """Hold the write lock of ``out`` for the block; OutputBusyError (naming the holder) when another process
    holds it. ``what``: this writer, as the holder's message shows it (default: the command line's command)."""
    path = lock_path(out)
    if path in _held:
        _held[path] += 1
        try:
            yield path
        finally:
            _held[path] -= 1
        return
    created = [p for p in reversed(path.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_locked(path, out, param)
    except OSError:
        # nowhere to put a lock (a parent that is a file, a read-only filesystem): the command's own output
        # checks name the problem, and the staged write's final rename still refuses a path that appeared
        fd = None
    if fd is None:
        _remove_empty(created)
        yield path
        return
    try:
        label = what or " ".join(["edgekit", *sys.argv[1:2]])
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {label}\n".encode())
        _held[path] = 1
        yield path
    finally:
        _held.pop(path, None)
        try:
            os.unlink(path)  # while still locked: a waiting opener sees the inode change and retries
        except OSError:
            pass
        os.close(fd)
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    """Remove the parents the lock created, deepest first, where they are still empty."""
    for parent in reversed(created):
        try:
            parent.rmdir()
        except OSError:
            break


def _open_locked(path: Path, out: Path, param: str) -> int:
    """An open descriptor of ``path`` holding its exclusive lock, or OutputBusyError naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(f"is being written by {_holder(path)}; wait for it to finish or choose another "
                                  f"path (lock {path.name})", param=param, value=Path(out)) from None
        except BaseException:
            os.close(fd)
            raise
        try:  # the holder before us may have removed the file between our open and our lock: lock the new one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def holds_lock(out: Path) -> bool:
    """Whether this process holds the write lock of ``out``."""
    return lock_path(out) in _held
