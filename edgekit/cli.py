"""The `edgekit` command: assembles the sub-commands of edgekit.commands and maps typed errors to one
line and exit code 2. No stage logic lives here; heavy libraries load only when a command runs."""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from contextlib import contextmanager

from edgekit.errors import EdgekitError
from edgekit.fsutil import disk_full

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `kill`, a CI timeout, a container stop), raised where Ctrl-C would be: every stage's Ctrl-C
    path runs (staged outputs removed, locks released, a Node child killed by subprocess.run), one line."""


_terminated: list[bool] = []


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the clean-up short
    _terminated.append(True)
    raise Terminated("terminated (SIGTERM); the output under way was removed")


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM handled like Ctrl-C for the duration of one command (only the main thread can set handlers;
    the previous handler is restored, so an in-process caller keeps its own)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _terminated.clear()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from edgekit.commands import COMMAND_MODULES

    from edgekit import __version__
    from edgekit.commands.examples import TOP_LEVEL, epilog

    parser = _Parser(prog="edgekit", description="Package Stable-Diffusion-style pipelines for phones and browsers.",
                     epilog=f"example:\n  {TOP_LEVEL}\n\nedgekit COMMAND --help shows a command's flags and an example.",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edgekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser, metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    for path, command in command_parsers(parser):  # every command's help ends with a runnable example
        command.epilog = epilog(path)
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    from edgekit.commands.common import flags_of

    for command in sub.choices.values():  # every command: other libraries' output live instead of logged
        command.add_argument("-v", "--verbose", action="store_true",
                             help="show other libraries' output (warnings, logs, converter lines) live on stderr "
                                  "instead of in the log file")
        command.set_defaults(command_flags=flags_of(command))  # errors name the parameter by this command's flag
    return parser


def command_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    """(command path, parser) of every sub-command, nested ones included ("policy", "policy simulate")."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help for choice in action._choices_actions}
            for name, command in action.choices.items():
                path = f"{prefix} {name}".strip()
                if command.description is None:  # the command's own --help opens with its one-line summary
                    command.description = listed.get(name)
                yield path, command
                yield from command_parsers(command, path)


def _quiet_libraries() -> None:
    """Library chatter (progress bars, optional-backend notices) stays off; no hub is ever contacted."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # converters' own tqdm bars (LiteRT's quantizer prints one per calibration pass); edgekit shows its own
    os.environ.setdefault("TQDM_DISABLE", "1")
    # torchao (pulled in by litert-torch, imported by diffusers when present) logs missing GPU kernels
    # and torch logs pytree deprecations at import: neither concerns a CPU user.
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = build_parser().parse_args(argv)
    from edgekit.logs import command_output

    try:
        # other libraries' output to a log file beside --out (edgekit.logs); SIGTERM raised as Ctrl-C would be
        with _sigterm_as_interrupt(), command_output(args):
            return args.func(args)
    except EdgekitError as exc:
        from edgekit.commands.common import error_line

        print(f"edgekit {args.command}: error: {error_line(exc, args.command_flags)}{_log_note(exc)}",
              file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: outputs are staged, so nothing half-written remains
        text = str(exc) or "interrupted"
        if _terminated and not isinstance(exc, Terminated):  # a stage's own words (package: stages kept)
            text = f"{text} (SIGTERM)"
        print(f"edgekit {args.command}: {text}{_log_note(exc)}", file=sys.stderr)
        return EXIT_TERMINATED if _terminated else EXIT_INTERRUPTED
    except OSError as exc:  # a full disk under a command that does not name its stage itself
        full, path = disk_full(exc)
        if not full:
            raise
        print(f"edgekit {args.command}: error: no space left on device writing {path or 'its output'}",
              file=sys.stderr)
        return 1


def _log_note(exc) -> str:
    """Where other libraries' output of a failed command went (edgekit.logs keeps it out of --out's folder)."""
    log = getattr(exc, "edgekit_log", None)
    return f" (other libraries' output: {log})" if log else ""


if __name__ == "__main__":
    sys.exit(main())
