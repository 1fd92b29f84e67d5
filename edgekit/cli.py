"""The `edgekit` command: assembles the sub-commands of edgekit.commands and maps typed errors to one
line and exit code 2. No stage logic lives here; heavy libraries load only when a command runs."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from edgekit.errors import EdgekitError
from edgekit.fsutil import disk_full

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from edgekit.commands import COMMAND_MODULES

    parser = _Parser(prog="edgekit", description="Package Stable-Diffusion-style pipelines for phones and browsers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    from edgekit.commands.common import flags_of

    for command in sub.choices.values():  # every command: other libraries' output live instead of logged
        command.add_argument("-v", "--verbose", action="store_true",
                             help="show other libraries' output (warnings, logs, converter lines) live on stderr "
                                  "instead of in the log file")
        command.set_defaults(command_flags=flags_of(command))  # errors name the parameter by this command's flag
    return parser


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
        with command_output(args):  # other libraries' output to a log file beside --out (edgekit.logs)
            return args.func(args)
    except EdgekitError as exc:
        from edgekit.commands.common import error_line

        print(f"edgekit {args.command}: error: {error_line(exc, args.command_flags)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C: outputs are staged, so nothing half-written remains
        print(f"edgekit {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a full disk under a command that does not name its stage itself
        full, path = disk_full(exc)
        if not full:
            raise
        print(f"edgekit {args.command}: error: no space left on device writing {path or 'its output'}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
