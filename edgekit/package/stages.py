"""The stage engine of `edgekit package`: runs named stages, each keyed by a digest of what it reads and
checksummed when it ends, and reuses a stage whose output exists under the same key and is undamaged."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from edgekit import __version__

STAGES_DIR = "stages"


def digest(inputs: dict) -> str:
    text = json.dumps({"edgekit": __version__, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def write_json(path: Path, data: dict) -> None:
    from edgekit.fsutil import staged_file

    with staged_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


class PackageInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the stage under way left nothing behind, the finished ones stay for a resume."""


class Stages:
    """Runs named stages, each skipped when its output exists under the same key and is undamaged.

    At the end of a stage the sha256 of every file of its output is recorded with its key (stages/<name>.json);
    before a stage is reused, its output is checked against that record. A stage reruns when it has no record,
    when its key changed, when its output is damaged (a file changed, missing or added), or when its inputs name
    the key of a stage that ran in this run (so a rerun of a damaged stage reruns everything that read it)."""

    def __init__(self, root: Path, say: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.say = say or (lambda line: None)  # one line per stage event, for a person watching a terminal
        self.records: list[dict] = []
        self.current: str | None = None  # the stage running now (named in a failure)
        self._ran: dict[str, str] = {}  # key -> name of every stage that ran in this run
        self.results: dict[str, dict] = {}  # stage name -> its result (ran or reused): what the report is built from

    def run(self, name: str, inputs: dict, build: Callable[[Path], dict], output: Path | None = None) -> dict:
        """``build(output)`` makes the stage's output (atomically) and returns its JSON-able result. The key
        digests ``inputs``; ``output`` is the directory whose presence, with the key file, marks it done. A stage
        writes only its own output: it never rewrites an earlier stage's files."""
        from edgekit.fsutil import OutOfSpaceError, disk_full
        from edgekit.usage import StageMemory, out_of_memory

        key = digest(inputs)
        self.current = name
        state = self.root / STAGES_DIR / f"{name}.json"
        saved = self._saved(state)
        rerun = state.exists()
        reason = (f"damaged (file {STAGES_DIR}/{state.name} unreadable)" if saved is None and rerun
                  else self._rerun_reason(saved, key, inputs, output))
        if reason is None:
            self.say(f"stage {name}: reused")
            earlier = {k: saved[k] for k in ("seconds", "memory") if k in saved}  # what the run that made it took
            self.records.append({"stage": name, "key": key, "ran": False, "seconds": 0.0,
                                 **({"made_by_earlier_run": earlier} if earlier else {})})
            self.results[name] = self._located(saved["result"], output)
            return self.results[name]
        state.unlink(missing_ok=True)
        if output is not None and output.exists() and output.is_relative_to(self.root / STAGES_DIR):
            shutil.rmtree(output)  # a stale intermediate; final bundles are replaced atomically by their stage
        record = {"stage": name, "key": key, "ran": True, **({"reran": reason} if rerun else {})}
        self.say(f"stage {name}: running" + (f" again, {reason}" if rerun else ""))
        started = time.perf_counter()
        memory = StageMemory()  # the stage's own peak RSS (edgekit.usage)
        try:
            result = build(output)
            files = _checksums(output) if output is not None else {}
            seconds, peak = round(time.perf_counter() - started, 1), memory.stop()
            write_json(state, {"stage": name, "key": key, "seconds": seconds, "memory": peak,
                                "output": None if output is None else output.relative_to(self.root).as_posix(),
                                "files": files, "result": result})
        except BaseException as exc:
            self.records.append({**record, "failed": True, "seconds": round(time.perf_counter() - started, 1),
                                 **memory.stop()})
            if isinstance(exc, MemoryError):
                raise out_of_memory(name, self.records[-1]) from None
            full, path = disk_full(exc)
            if full:
                where = path or output or self.root
                raise OutOfSpaceError(f"stage {name}: no space left on device writing {where} "
                                      f"({_free(self.root)} free); the stage's partial output was removed, "
                                      "free some space and rerun to resume") from None
            raise
        self.records.append({**record, "seconds": seconds, **peak})
        self.say(f"stage {name}: done in {self.records[-1]['seconds']:.1f} s")
        self._ran[key] = name
        self.results[name] = self._located(result, output)
        return self.results[name]

    def _saved(self, state: Path) -> dict | None:
        """The record of an earlier run of the stage, or None when there is none or it is unreadable."""
        try:
            saved = json.loads(state.read_text())
        except (OSError, ValueError):
            return None
        return saved if isinstance(saved, dict) and "key" in saved and "result" in saved else None

    def _rerun_reason(self, saved: dict | None, key: str, inputs: dict, output: Path | None) -> str | None:
        """Why the stage must run (None: its earlier output can be reused)."""
        if saved is None:
            return "not run before"
        if saved["key"] != key:
            return "settings or inputs changed"
        upstream = sorted({self._ran[k] for k in _strings(inputs) if k in self._ran})
        if upstream:
            return f"its input {', '.join(upstream)} reran"
        if output is None:
            return None
        if not isinstance(saved.get("files"), dict):
            return "damaged (no checksums recorded)"
        damage = _damage(self.root, output, saved["files"])
        return f"damaged ({damage})" if damage else None

    @staticmethod
    def _located(result: dict, output: Path | None) -> dict:
        """Results name their directory where it is now (a package output may have been moved)."""
        return result if output is None else {**result, "dir": str(output)}

    def key(self, name: str) -> str:
        return next(r["key"] for r in reversed(self.records) if r["stage"] == name)


def _strings(value) -> set[str]:
    """Every string inside a stage's inputs (where the keys of the stages it reads appear)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_strings(v) for v in value)) if value else set()
    return set()


def _checksums(output: Path) -> dict[str, str]:
    """sha256 of every file below ``output``, by POSIX path relative to it."""
    from edgekit.fsutil import sha256_file

    return {p.relative_to(output).as_posix(): sha256_file(p) for p in sorted(output.rglob("*")) if p.is_file()}


def _damage(root: Path, output: Path, files: dict[str, str]) -> str | None:
    """What differs between ``output`` and its recorded checksums, naming the first file (None: intact)."""
    from edgekit.fsutil import sha256_file

    where = output.relative_to(root).as_posix() if output.is_relative_to(root) else str(output)
    if not output.is_dir():
        return f"{where} missing"
    on_disk = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    missing = sorted(set(files) - on_disk)
    added = sorted(on_disk - set(files))
    changed = [rel for rel in sorted(set(files) & on_disk) if sha256_file(output / rel) != files[rel]]
    problems = ([f"file {where}/{rel} missing" for rel in missing] + [f"file {where}/{rel} changed" for rel in changed]
                + [f"file {where}/{rel} not written by this stage" for rel in added])
    if not problems:
        return None
    return problems[0] + (f"; {len(problems) - 1} more" if len(problems) > 1 else "")


def _free(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown"
