"""Count how often one edgekit command reads the source model directory: JSON file opens below it, whole-model
sha256 passes (and the bytes they hash), model-check passes; and its wall time. Instruments, does not guess.

    .venv/bin/python benchmarks/model_reads.py --label after -- package --out /tmp/x --targets ort-web ...
    PYTHONPATH=/work/before_h1 .venv/bin/python benchmarks/model_reads.py --label before -- package ...
    .venv/bin/python benchmarks/model_reads.py --hash-time /work/rs/model      # one full-model sha256 pass

The command runs in this process (edgekit.cli.main) with counters patched in before edgekit is imported, so
the edgekit on sys.path is the one measured (PYTHONPATH picks another checkout; the row records which file
was imported and that checkout's commit). Every file open (builtins.open, io.open, os.open: safe_read,
pathlib, diffusers and transformers all go through one of them) of a ``*.json`` path below the model
directory counts as a JSON read; every ``edgekit.fsutil.sha256_tree`` call is a hash pass, with the bytes
``sha256_file`` read inside it. Rows land in benchmarks/results/model_reads.json (one per label and command;
a rerun replaces its own row) and model_reads.md.
"""
from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version()}


def commit_of(path: Path) -> str:
    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "edgekit")
    return head + ("+uncommitted edgekit changes" if dirty else "")


class Counters:
    """The patched-in counters of one run below ``root`` (the resolved source model directory)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root  # None: the first directory the model checks run on (the command's default model)
        self.json_reads: Counter = Counter()  # absolute path -> opens
        self.hash_roots: list[str] = []
        self.hash_bytes: Counter = Counter()  # per hashed root
        self.check_passes = 0
        self._hashing: list[str] = []

    def opened(self, file) -> None:
        try:
            path = os.fspath(file)
        except TypeError:
            return  # a file descriptor
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not path.endswith(".json"):
            return
        self.json_reads[os.path.abspath(path)] += 1

    def install(self) -> None:
        real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

        def counted_open(file, *args, **kwargs):
            self.opened(file)
            return real_open(file, *args, **kwargs)

        def counted_os_open(path, *args, **kwargs):
            self.opened(path)
            return real_os_open(path, *args, **kwargs)

        builtins.open = counted_open
        io.open = counted_open
        os.open = counted_os_open
        assert real_io_open is real_open  # io.open is builtins.open: one counter for both

        from edgekit import fsutil, model_checks  # fsutil and model_checks import no converter SDK

        real_tree, real_file, real_checks = fsutil.sha256_tree, fsutil.sha256_file, model_checks.check_model_configs

        def counted_tree(root, *args, **kwargs):
            key = str(Path(root).resolve())
            self.hash_roots.append(key)
            self._hashing.append(key)
            try:
                return real_tree(root, *args, **kwargs)
            finally:
                self._hashing.pop()

        def counted_file(path, *args, **kwargs):
            if self._hashing:
                self.hash_bytes[self._hashing[-1]] += os.stat(path).st_size
            return real_file(path, *args, **kwargs)

        def counted_checks(root, *args, **kwargs):
            if self.root is None:
                self.root = Path(root).resolve()
            self.check_passes += 1  # once per full model check (old: each check_model_dir; new: once per dir)
            return real_checks(root, *args, **kwargs)

        fsutil.sha256_tree, fsutil.sha256_file = counted_tree, counted_file
        model_checks.check_model_configs = counted_checks

    def summary(self) -> dict:
        root = str(self.root)
        below = {Path(p).relative_to(root).as_posix(): n for p, n in self.json_reads.items()
                 if Path(p).is_relative_to(root)}
        return {
            "model_dir": root,
            "json_reads_of_model_dir": sum(below.values()),
            "json_reads_by_file": dict(sorted(below.items())),
            "model_check_passes": self.check_passes,
            "sha256_passes_of_model_dir": self.hash_roots.count(root),
            "bytes_hashed_of_model_dir": self.hash_bytes[root],
            "sha256_passes_all_dirs": len(self.hash_roots),
            "bytes_hashed_all_dirs": sum(self.hash_bytes.values()),
            "hashed_dirs": dict(Counter(self.hash_roots)),
        }


def model_dir_of(argv: list[str]) -> Path | None:
    """The --model the command names, else None (the first directory the model checks run on)."""
    return Path(argv[argv.index("--model") + 1]).resolve() if "--model" in argv else None


def run_command(label: str, argv: list[str]) -> dict:
    import edgekit

    counters = Counters(model_dir_of(argv))
    counters.install()
    from edgekit.cli import main  # after the patches: modules that bind fsutil names at import get the counters

    started = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - started
    checkout = Path(edgekit.__file__).resolve().parent.parent
    return {"label": label, "command": "edgekit " + " ".join(argv), "exit_code": code,
            "wall_seconds": round(seconds, 1), "edgekit_file": edgekit.__file__, "commit": commit_of(checkout),
            "machine": machine(), **counters.summary()}


def hash_time(model: Path) -> dict:
    from edgekit.fsutil import sha256_tree

    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    started = time.perf_counter()
    digest = sha256_tree(model)
    seconds = time.perf_counter() - started
    return {"label": "one sha256_tree pass", "model_dir": str(model), "bytes": size, "seconds": round(seconds, 2),
            "sha256": digest, "machine": machine(),
            "command": f"nice -n 15 python benchmarks/model_reads.py --hash-time {model}"}


def write(row: dict, key: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "model_reads.json"
    data = json.loads(path.read_text()) if path.is_file() else {"runs": [], "hash_time": None}
    if key == "hash_time":
        data["hash_time"] = row
    else:
        data["runs"] = [r for r in data["runs"] if (r["label"], r["command"]) != (row["label"], row["command"])]
        data["runs"].append(row)
    path.write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "model_reads.md").write_text(markdown(data))


def markdown(data: dict) -> str:
    lines = ["# Model-directory reads of one edgekit command (benchmarks/model_reads.py)", "",
             "Counted in-process: JSON file opens below the source model directory, whole-model sha256 passes "
             "(edgekit.fsutil.sha256_tree) and the bytes they read, full model-check passes, wall time.", "",
             "| label | commit | JSON reads | model checks | model sha256 passes | model bytes hashed | "
             "all sha256 passes | wall s | exit |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        lines.append(f"| {r['label']} | {r['commit']} | {r['json_reads_of_model_dir']} | {r['model_check_passes']} | "
                     f"{r['sha256_passes_of_model_dir']} | {r['bytes_hashed_of_model_dir']:,} | "
                     f"{r['sha256_passes_all_dirs']} | {r['wall_seconds']} | {r['exit_code']} |")
    lines.append("")
    for r in data["runs"]:
        lines += [f"- {r['label']}: `{r['command']}` (edgekit from {r['edgekit_file']}; {r['machine']['cpu']}, "
                  f"{r['machine']['cores']} cores, OMP_NUM_THREADS={r['machine']['omp_threads']})"]
    lines += [f"- note: {note}" for note in data.get("notes", [])]
    timed = data.get("hash_time")
    if timed:
        lines += ["", f"One sha256_tree pass over {timed['model_dir']} ({timed['bytes'] / 2**30:.2f} GiB): "
                      f"{timed['seconds']} s on {timed['machine']['cpu']} (`{timed['command']}`): the cost of each "
                      "whole-model hash pass saved at real size."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", help="the row's name (before / after)")
    parser.add_argument("--hash-time", type=Path, help="time one sha256_tree pass over this model directory")
    args, rest = parser.parse_known_args()
    if args.hash_time is not None:
        row = hash_time(args.hash_time.resolve())
        write(row, "hash_time")
        print(json.dumps(row, indent=2))
        return 0
    argv = rest[1:] if rest[:1] == ["--"] else rest
    if not args.label or not argv:
        parser.error("give --label and, after --, the edgekit command to run")
    row = run_command(args.label, argv)
    write(row, "run")
    print(json.dumps({k: v for k, v in row.items() if k != "json_reads_by_file"}, indent=2))
    return 0 if row["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
