"""Atomic output directories: stages write into a temporary sibling and rename it into place at the end,
so a crash or an error leaves no half-written output, and no stage ever writes inside its input.

A temporary sibling is named ``.<name>.partial-<pid>[suffix]``. A process killed outright (SIGKILL, power
loss) cannot remove its own; the next write of the same output removes those whose process is gone."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgekit.errors import EdgekitError

PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)(?P<suffix>\.[^.]*)?$")
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class OutOfSpaceError(EdgekitError):
    """The disk filled up while a stage wrote its output; the partial output was removed."""

    exit_code = 1


def disk_full(exc: BaseException) -> tuple[bool, str | None]:
    """Whether ``exc``, or an error that led to it, is a full disk; and the path being written when known.
    shutil.copytree gathers its per-file errors into one shutil.Error of (source, target, message) strings."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
            for entry in exc.args[0]:
                if len(entry) == 3 and any(f"[Errno {code}]" in str(entry[2]) for code in DISK_FULL):
                    return True, str(entry[1])
        elif isinstance(exc, OSError) and exc.errno in DISK_FULL:
            return True, exc.filename
        exc = exc.__cause__ or exc.__context__
    return False, None


def free_space(path: Path) -> str:
    """'N MiB free there' for the filesystem holding ``path``, or 'free space unknown'."""
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.0f} MiB free there"
    except OSError:
        return "free space unknown"


@contextmanager
def out_of_space_names(stage: str, out: Path, then: str = "nothing was written to it, free some space and rerun"):
    """A full disk while ``stage`` writes ``out`` becomes one OutOfSpaceError naming ``out``, the file that did
    not fit when it lies elsewhere (a temporary directory, a file inside ``out``), the free space, and ``then``:
    what the user does next. A staged sibling of ``out`` is removed by the time this runs, so a file in it is
    not named (nothing half-written is left there)."""
    try:
        yield
    except OSError as exc:
        full, path = disk_full(exc)
        if not full:
            raise
        where = f" (at {path})" if path and not _named_by(Path(path), Path(out)) else ""
        raise OutOfSpaceError(f"{stage}: no space left on device writing {out}{where}, {free_space(out.parent)}; "
                              f"{then}") from None


def _named_by(path: Path, out: Path) -> bool:
    """Whether naming ``out`` already says where ``path`` is: it is ``out``, or lies in a staged sibling of it."""
    path, out = path.resolve(), out.resolve()
    if path == out:
        return True
    try:
        top = path.relative_to(out.parent).parts[0]
    except (ValueError, IndexError):
        return False
    match = PARTIAL.match(top)
    return match is not None and match["name"] == out.name


def pid_alive(pid: int) -> bool:
    """True when a process with this id runs (as any user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def remove_stale_partials(directory: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary siblings in ``directory`` (of the output ``name``, or of any output) left by
    processes that no longer run; a running process's are left alone. Returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for path in entries:
        match = PARTIAL.match(path.name)
        if match is None or (name is not None and match["name"] != name) or pid_alive(int(match["pid"])):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class OutputConflictError(EdgekitError):
    """The output path changed under a running command (another process or a person wrote it): nothing was
    replaced or deleted, and this run's own output was discarded."""

    exit_code = 1


# renameat2(2) flags: rename only when the target does not exist; swap two paths in one step.
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_UNSUPPORTED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2 with ``flags``; False where the C library or the filesystem lacks it (then the caller falls
    back), OSError (FileExistsError for an existing target with NOREPLACE) otherwise."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return False
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` in one step, refusing (FileExistsError) when ``dst`` exists: a path that
    appeared meanwhile is never replaced. Without renameat2 a file is hard linked (atomic and exclusive too);
    a directory is checked then renamed (rename refuses a non-empty target, so no content is ever lost)."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if not Path(src).is_dir():
        try:
            os.link(src, dst)
        except FileExistsError:
            raise
        except OSError:
            pass
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        raise


def _exchange(a: Path, b: Path) -> None:
    """Swap two existing paths: in one step where the filesystem allows, else by two renames."""
    if _renameat2(a, b, _RENAME_EXCHANGE):
        return
    aside = b.parent / f".{b.name}.partial-{os.getpid()}.swap"
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


# What marks a directory as edgekit's own output: the last file its stage writes. A directory holding one of
# these (with the content edgekit gives it) or nothing at all may be replaced by --force; any other is not.
PACKAGE_MARKER = ".edgekit-package.json"


def _json_object(path: Path) -> dict | None:
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 64 * 2**20:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def edgekit_output(path: Path) -> str | None:
    """What edgekit stage wrote the directory ``path`` ("export bundle", "calibration", ...), "empty" for an
    empty directory, or None when nothing says edgekit wrote it (a foreign directory: never deleted)."""
    from edgekit.constants import CALIB_META, MANIFEST

    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return None
    try:
        if not any(path.iterdir()):
            return "empty"
    except OSError:
        return None
    manifest = _json_object(path / MANIFEST)
    if manifest is not None and isinstance(manifest.get("stage"), str):
        return f"{manifest['stage']} output"
    package = _json_object(path / PACKAGE_MARKER)
    if package is not None and str(package.get("format", "")).startswith("edgekit-package/"):
        return "package output"
    meta = _json_object(path / CALIB_META)
    if meta is not None and isinstance(meta.get("components"), dict) and isinstance(meta.get("config"), dict):
        return "calibration"
    report = _json_object(path / "compress_report.json")
    if report is not None and isinstance(report.get("config"), dict) and "out" in report:
        return "compressed model"
    return None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _refuse_appeared(out: Path, what: str = "directory") -> OutputConflictError:
    return OutputConflictError(f"appeared while this command ran (another process or person wrote it); it was left "
                               f"as it is and this run's {what} discarded: choose another path, or pass {{force}} "
                               "to replace an edgekit output", param="out", value=out, mentions=("force",))


@contextmanager
def staged_dir(out: Path, *, force: bool = False, owned: bool = False, new: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it takes the place of ``out`` in one rename, on error
    it is removed.

    Nothing edgekit did not write is ever deleted: an ``out`` that did not exist when the stage began and
    exists at its end (another run, a person) is refused unless ``force``; an existing ``out`` is replaced
    only when it is an edgekit output (its stage's manifest or marker, ``edgekit_output``) or empty, or when
    the caller ``owned`` it (a folder inside edgekit's own package output). The old one is swapped out in one
    step, checked again where no one else can reach it, and only then removed. ``new``: the caller checked that
    ``out`` did not exist (no --force), so anything there at the end appeared meanwhile, even before this
    block began, and is kept."""
    out = Path(out).resolve()
    created = [p for p in reversed(out.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out.parent, out.name)
    started_as = _identity(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        try:
            rename_noreplace(tmp, out)
            return
        except FileExistsError:
            pass
        if new or (started_as is None and not force):
            raise _refuse_appeared(out, "output")
        if out.is_symlink() or not out.is_dir():
            raise OutputConflictError("is a file now, not a directory; nothing was replaced and this run's output "
                                      "was discarded", param="out", value=out)
        checked = _identity(out)
        if not owned and edgekit_output(out) is None:
            raise OutputConflictError("holds files edgekit did not write (no edgekit manifest or marker); nothing "
                                      "was replaced and this run's output was discarded: move them or choose "
                                      "another path", param="out", value=out)
        _exchange(tmp, out)
        # ``tmp`` now holds what was at ``out``: what was checked, unless it was swapped in the meantime
        if _identity(tmp) != checked and (owned or edgekit_output(tmp) is None):
            _exchange(tmp, out)
            raise OutputConflictError("was replaced by other files while this command ran; they were kept and this "
                                      "run's output discarded", param="out", value=out)
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(created):
            try:
                parent.rmdir()
            except OSError:
                break
        raise


@contextmanager
def staged_file(out: Path, *, force: bool = False, new: bool = False) -> Iterator[Path]:
    """Like ``staged_dir`` for a single file: a file that existed when the block began (a rewrite the caller
    decided on), or any file with ``force``, is replaced in one rename; a path that appeared meanwhile is
    refused and kept; a directory is never replaced. ``new``: the caller checked that ``out`` did not exist
    (no --force): any file there at the end appeared meanwhile and is kept."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(out.parent, out.name)
    existed = os.path.lexists(out)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}{out.suffix}"
    try:
        yield tmp
        if out.is_dir():
            raise OutputConflictError("is a directory now; it was left as it is and this run's file discarded",
                                      param="out", value=out)
        if (existed or force) and not new:
            tmp.replace(out)
            return
        try:
            rename_noreplace(tmp, out)
        except FileExistsError:
            raise _refuse_appeared(out, "file") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# Hard linking failed for a reason that copying does not share: another filesystem, a filesystem without
# hard links, a file the user may read but not link (fs.protected_hardlinks), too many links to one inode.
_LINK_FALLBACK = {errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


def link_or_copy_tree(src: Path, dst: Path, *, skip_hidden: bool = True, skip_top: tuple[str, ...] = ()) -> dict:
    """Mirror the regular files below ``src`` into ``dst`` as hard links where the filesystem allows, copies
    otherwise; returns counts and bytes of each. Symlinks are followed (the target's content is mirrored).

    A stage's unchanged source components cost no disk this way (a real-size UNet is 3.4 GB). A hard link is
    the same inode as the source: whoever writes into ``dst`` must replace a file (write a new one, unlink,
    rename) and never open a mirrored one for writing, or the source changes too. Every stage writes its
    results as new files, so none does. ``skip_hidden``: leave out names starting with '.' at every level;
    ``skip_top``: names left out at the top level only (a stage's own manifest)."""
    src, dst = Path(src), Path(dst)
    stats = {"linked": 0, "copied": 0, "linked_bytes": 0, "copied_bytes": 0}
    can_link = True
    for root, dirs, files in os.walk(src, followlinks=True):
        rel = Path(root).relative_to(src)
        top = rel == Path(".")
        dirs[:] = sorted(d for d in dirs if not (skip_hidden and d.startswith("."))
                         and not (top and d in skip_top))
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for name in sorted(files):
            if (skip_hidden and name.startswith(".")) or (top and name in skip_top):
                continue
            source, target = Path(root) / name, dst / rel / name
            real = source.resolve()
            if not real.is_file():
                continue  # a dangling link, a socket or a device: nothing a model directory needs
            size = real.stat().st_size
            if can_link:
                try:
                    os.link(real, target)
                    stats["linked"] += 1
                    stats["linked_bytes"] += size
                    continue
                except OSError as exc:
                    if exc.errno not in _LINK_FALLBACK:
                        raise
                    can_link = exc.errno not in (errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP)
            shutil.copy2(real, target)
            stats["copied"] += 1
            stats["copied_bytes"] += size
    return stats


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
