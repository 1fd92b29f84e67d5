"""Peak resident memory of one stage of a run, measured in the process that runs it.

Linux keeps each process's resident high-water mark (VmHWM in /proc/self/status); writing 5 to
/proc/self/clear_refs resets it to the current resident size, so a stage that starts with a reset reports its
own peak. Where the reset is refused (another kernel, a locked-down /proc) or there is no /proc (macOS:
getrusage), the number is the process's peak so far, and ``peak_rss_scope`` says so. Programs a stage runs
as child processes (Node, converters) are not in it. (The kernel's RUSAGE_CHILDREN peak is no measure of
them: a child forked from this process counts the pages it shared with it before exec, so a 0.7 GB package
process made a short Node check read as 0.7 GB.)
"""
from __future__ import annotations

import sys

STAGE, PROCESS_SO_FAR = "stage", "process so far"


def _high_water_mark() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _getrusage_peak() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def process_peak_rss() -> int | None:
    """The process's resident high-water mark in bytes (since the last reset), or None where unknown."""
    peak = _high_water_mark()
    return peak if peak is not None else _getrusage_peak()


class StageMemory:
    """Started at a stage's start; ``stop()`` returns the fields its record carries."""

    def __init__(self) -> None:
        self.scope = STAGE if _high_water_mark() is not None and _reset_high_water_mark() else PROCESS_SO_FAR

    def stop(self) -> dict:
        peak = process_peak_rss()
        if peak is None:
            return {}
        return {"peak_rss_bytes": peak, "peak_rss_scope": self.scope}


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def out_of_memory(stage: str, record: dict):
    """The error a stage that raised MemoryError ends with: its name and the peak measured in it."""
    from edgekit.errors import StageMemoryError

    peak = record.get("peak_rss_bytes")
    where = "" if peak is None else (f" at a measured peak of {gib(peak)} resident"
                                     + (" (the process's peak so far)" if record.get("peak_rss_scope") != STAGE else ""))
    return StageMemoryError(f"stage {stage}: out of memory{where} after {record.get('seconds', 0):.1f} s")
