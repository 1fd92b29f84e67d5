"""Progress for long work: on a terminal a command shows what it is doing (rich, with done/total, elapsed and
an estimate); through a pipe it shows nothing; with --json stdout carries the JSON object alone. Work loops
in lower layers report to the command's display through edgekit.progress without it being passed down."""
import io
import json
import os
import pty
import subprocess
import sys
import threading

import pytest

from edgekit.progress import current, showing, track, working


def _run(argv, terminal: bool) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `edgekit ARGV`, stderr on a pseudo-terminal when ``terminal``."""
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "160"}
    cmd = [sys.executable, "-m", "edgekit.cli", *map(str, argv)]
    if not terminal:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    chunks = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout = proc.stdout.read().decode()
    code = proc.wait(timeout=600)
    reader.join(timeout=30)
    os.close(master)
    return code, stdout, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    out = tmp_path_factory.mktemp("progress") / "calib"
    code, stdout, err = _run(["calibrate", "--samples", "4", "--steps", "4", "--out", out, "--json"], terminal=True)
    assert code == 0, err
    return out, stdout, err


def test_calibrate_shows_progress_on_a_terminal_and_json_alone_on_stdout(calib):
    out, stdout, err = calib
    assert "calibrate" in err and "eta" in err  # the bar: what runs and the estimate of the time left
    assert json.loads(stdout)["out"]  # stdout is one JSON object, nothing else


def test_pipe_stays_quiet(tmp_path):
    code, stdout, err = _run(["calibrate", "--samples", "1", "--steps", "2", "--out", tmp_path / "c"],
                             terminal=False)
    assert code == 0, err
    assert err.strip() == "" and stdout.startswith("wrote ")


def test_quantize_names_the_component_it_works_on(calib, tmp_path):
    code, stdout, err = _run(["quantize", "--method", "ort-static", "--calib", calib[0], "--components",
                              "text_encoder", "--out", tmp_path / "q", "--json"], terminal=True)
    assert code == 0, err
    assert "quantize ort-static: text_encoder" in err
    assert json.loads(stdout)


def test_lower_layers_report_to_the_open_display():
    from rich.console import Console
    from rich.progress import Progress, TextColumn

    screen = io.StringIO()
    display = Progress(TextColumn("{task.description} {task.completed}/{task.total}"),
                       console=Console(file=screen, force_terminal=True, width=120), auto_refresh=False)
    assert list(track([1, 2, 3], "no display")) == [1, 2, 3] and current() is None  # library use: pass-through
    with showing(display):
        assert current() is display
        seen = []
        for item in track([1, 2, 3], "ranking units"):
            seen.append(item)
            display.refresh()
        with working("exporting unet"):
            display.refresh()
        assert seen == [1, 2, 3] and not display.tasks  # finished lines leave the display
    assert current() is None
    text = screen.getvalue()
    assert "ranking units 2/3" in text and "exporting unet" in text
