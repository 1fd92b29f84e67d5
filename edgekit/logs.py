"""The terminal shows edgekit's own lines (stage progress, the summary, one-line errors); everything other
libraries print goes to a log file: Python warnings, logging, tqdm bars, ``print`` calls, and what C++ code
writes to file descriptors 1 and 2 (TensorFlow, ONNX Runtime, onnxsim), captured at the descriptor level.

``command_output(args)`` wraps one command run. Inside it, ``terminal_stdout()`` / ``terminal_stderr()`` are
the real terminal (``emit`` and the progress display write there); ``sys.stdout``, ``sys.stderr`` and fds 1
and 2 lead to the log. The log is kept only when something was written to it: ``<out>/edgekit.log`` for a
command whose ``--out`` is a directory it owns as a whole (``package``), else ``<out>.log`` beside the output
(a bundle holds only the files its manifest lists); its path is printed on stderr after the summary. A
command that fails leaves nothing beside its --out: a non-empty log stays in the temporary directory and the
command's one error line names it. With
``-v`` nothing is captured: other libraries' output shows live on stderr, and stdout still carries only
edgekit's own lines (or JSON with ``--json``).
"""
from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

LOG_NAME = "edgekit.log"
# Commands whose --out directory holds more than one artifact and may hold a log file too.
LOG_INSIDE_OUT = ("package",)

_terminal: list[tuple[io.TextIOBase, io.TextIOBase]] = []


def terminal_stdout():
    return _terminal[-1][0] if _terminal else sys.stdout


def terminal_stderr():
    return _terminal[-1][1] if _terminal else sys.stderr


def log_path_for(command: str, out) -> Path | None:
    if out is None or not Path(out).name:  # --out "" or "/": the command's own check names it
        return None
    out = Path(out)
    return out / LOG_NAME if command in LOG_INSIDE_OUT else out.with_name(out.name + ".log")


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


@contextmanager
def captured(log_file: Path, verbose: bool = False):
    """Send other libraries' output to ``log_file`` (or, ``verbose``, live to stderr); yields the log path
    holder: a list that ends holding the path written, or nothing when the log stayed empty. When the block
    fails, nothing is put beside the output (there is none): a non-empty log stays in the temporary directory
    and the holder names it there."""
    written: list[Path] = []
    failed = False
    _flush_all()
    saved_out, saved_err = os.dup(1), os.dup(2)
    old_streams = sys.stdout, sys.stderr
    term_out, own_out = _terminal_stream(sys.stdout, 1, saved_out)
    term_err, own_err = _terminal_stream(sys.stderr, 2, saved_err)
    if verbose:
        sink_fd, sink, tmp_path = saved_err, None, None
    else:
        handle, tmp_path = tempfile.mkstemp(prefix="edgekit-", suffix=".log")
        sink_fd = handle
        sink = io.TextIOWrapper(os.fdopen(os.dup(handle), "wb", buffering=0), encoding="utf-8",
                                line_buffering=True, errors="replace")
    os.dup2(sink_fd, 1)
    os.dup2(sink_fd, 2)
    sys.stdout = sink if sink is not None else term_err  # library print() calls never reach stdout
    sys.stderr = sink if sink is not None else term_err
    _terminal.append((term_out, term_err))
    try:
        yield written
    except BaseException:
        failed = True
        raise
    finally:
        _flush_all()
        _terminal.pop()
        sys.stdout, sys.stderr = old_streams
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err):
            os.close(fd)
        for stream, own in ((term_out, own_out), (term_err, own_err)):
            if own:
                stream.close()
        if sink is not None:
            sink.close()
            os.close(sink_fd)
            if not os.path.getsize(tmp_path):
                os.unlink(tmp_path)
            elif failed:
                written.append(Path(tmp_path))
            elif _move(Path(tmp_path), log_file):
                written.append(log_file)
            else:
                os.unlink(tmp_path)


def _terminal_stream(stream, fd: int, saved: int):
    """(the stream edgekit's own lines go to, whether it was opened here): a stream writing to ``fd`` gets a
    new one on the saved copy of ``fd``; any other stream object (an in-memory capture) is kept as it is."""
    try:
        backed = stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        backed = False
    if not backed:
        return stream, False
    raw = os.fdopen(os.dup(saved), "wb", buffering=0)
    return io.TextIOWrapper(raw, encoding="utf-8", line_buffering=True, errors="replace", write_through=True), True


def _move(src: Path, dst: Path) -> bool:
    """Put the log at ``dst`` when its folder exists (a failed command may have written nothing)."""
    if not dst.parent.is_dir():
        return False
    try:
        shutil.move(str(src), str(dst))
        return True
    except OSError:
        return False


@contextmanager
def command_output(args):
    """``captured`` for one parsed command line: the log beside (or inside) its --out, -v for live output.
    Commands without --out (verify, serve, policy, ...) keep their output as it is."""
    path = log_path_for(args.command, getattr(args, "out", None))
    if path is None or args.command == "serve":
        yield
        return
    written: list[Path] = []
    try:
        with captured(path, verbose=getattr(args, "verbose", False)) as written:
            yield
    except BaseException as exc:
        if written:  # named in the command's one error line (edgekit.cli), not on a line of its own
            try:
                exc.edgekit_log = written[0]
            except AttributeError:
                pass
        raise
    if written:
        print(f"other libraries' output: {written[0]} (-v shows it live)", file=sys.stderr)
