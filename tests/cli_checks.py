"""What every refusal test checks of a command's stderr (one line, no traceback, the expected words in it), and how a
test runs a server command as a user would (`edgekit serve`: it answers its first page, then stops on Ctrl-C)."""
import re
import signal
import subprocess
import urllib.request
from pathlib import Path


def one_line(err: str, *needles: str) -> str:
    """The only non-empty line of ``err``, which holds every one of ``needles``; fails on a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def serve_answers(command: str, cwd: Path, env: dict) -> None:
    """Start ``command`` (a server line, as written) in ``cwd``: it must print its address, answer its first page,
    then stop cleanly on SIGINT."""
    proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", first)
        assert url, (command, first, proc.stderr.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(url.group(0), timeout=60) as response:
            assert response.status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 0
