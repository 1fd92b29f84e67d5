"""What every refusal test checks of a command's stderr (one line, no traceback, the expected words in it), and how a
test runs a server command as a user would (`edgekit serve`: it answers its first page, then stops on Ctrl-C)."""
import re
import signal
import subprocess
import sys
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


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
    # SIGINT back to its default in the server: a test run started in the background (`cmd &`, nohup) hands
    # its children an ignored SIGINT, and Python then never raises KeyboardInterrupt, so Ctrl-C could not be tested
    proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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


@contextmanager
def served(bundle: Path):
    """`edgekit serve BUNDLE` on a free port of 127.0.0.1 for the block: yields the page's address."""
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "serve", str(bundle), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving "), line + proc.stderr.read()
        url = line.split(" at ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
