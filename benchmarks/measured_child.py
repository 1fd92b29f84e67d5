"""One measuring step of a benchmark in its own process: wall time, the child's own peak RSS (ru_maxrss from
wait4, so nothing the parent holds counts) and the JSON object it prints last. The child is killed past
``timeout`` seconds and, when ``max_rss_mb`` is given, as soon as its resident size passes that cap (polled)."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    """A running process's resident size (VmRSS) in MiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_child(cmd: list[str], timeout: float, max_rss_mb: float | None = None, poll: float = 0.2) -> dict:
    """{wall_s, peak_rss_mb} plus the child's last stdout line as JSON; on failure ``failed`` (why) and
    ``log_tail`` (its last 800 characters of output) instead of the JSON."""
    started = time.perf_counter()
    killed = None
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - started > timeout:
                killed = f"timeout after {timeout:.0f} s"
            elif max_rss_mb is not None and rss_mb(proc.pid) > max_rss_mb:
                killed = f"killed past {max_rss_mb / 1024:g} GB RSS"
            if killed:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(poll)
        seconds = time.perf_counter() - started
        log.seek(0)
        text = log.read()
    result = {"wall_s": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}
    code = os.waitstatus_to_exitcode(status)
    if killed or code != 0:
        result["failed"] = killed or f"exit {code}" + (" (killed: out of memory or a signal)" if code < 0 else "")
        result["log_tail"] = text[-800:]
        return result
    result.update(json.loads(text.strip().splitlines()[-1]))
    return result
