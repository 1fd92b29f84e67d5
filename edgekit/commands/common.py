"""Flag types and output helpers shared by the sub-commands (no heavy imports here)."""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got '{text[:80]}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def bounded_int(limit_name: str, what: str):
    """A flag type: a positive whole number of at most ``edgekit.limits.<limit_name>`` (``what`` it counts),
    refused while the command line is parsed, before any model or bundle is read."""
    def parse(text: str) -> int:
        from edgekit import limits

        value = positive_int(text)
        limit = getattr(limits, limit_name)
        if value > limit:
            raise argparse.ArgumentTypeError(f"{value}: over the limit of {limit:,} {what}")
        return value

    parse.__name__ = f"at most {limit_name}"
    return parse


def thread_count(text: str) -> int:
    """--threads: a positive whole number up to the CPUs this process may use."""
    from edgekit.limits import cpu_count

    value = positive_int(text)
    if value > cpu_count():
        raise argparse.ArgumentTypeError(f"{value}: more threads than the {cpu_count()} CPUs this process may use")
    return value


def prompt_text(text: str) -> str:
    """--prompt: text a tokenizer can encode (a lone surrogate, left by bytes that are not UTF-8, is refused)."""
    from edgekit.safe_read import lone_surrogate

    at = lone_surrogate(text)
    if at is not None:
        raise argparse.ArgumentTypeError(f"not valid UTF-8 text (a byte that is not UTF-8 at character {at}: "
                                         f"{ascii(text)[:80]}); expected a UTF-8 prompt")
    return text


def _comma_parts(text: str, example: str) -> list[str]:
    """The parts of a list flag's value: comma-separated (``4,8,12``), spaces also separating (``"4 8 12"``,
    ``"4, 8"``); an empty entry between commas (``4,,8``, a trailing comma) is refused."""
    chunks = text.split(",")
    if not text.strip() or any(not chunk.strip() for chunk in chunks):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list such as {example} with no empty "
                                         f"entries, got '{text}'")
    return [part for chunk in chunks for part in chunk.split()]


class ListFlag(argparse.Action):
    """A list flag given as one comma-separated value or as several (``--widths 0.5,1.0`` = ``--widths 0.5 1.0``):
    with ``nargs="+"``, each value parsed by the flag's type (a tuple), the parts joined into one tuple."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, tuple(v for value in values for v in value))


def list_flag(parse) -> dict:
    """The add_argument keywords of a list flag whose values ``parse`` turns into tuples."""
    return {"type": parse, "nargs": "+", "action": ListFlag}


def name_list(text: str) -> tuple[str, ...]:
    """--targets ort-web,tflite: names, no empty entries (each is checked by the command against its registry)."""
    return tuple(_comma_parts(text, "ort-web,tflite"))




def step_list(text: str) -> tuple[int, ...]:
    """--steps 4,8,12,20: positive sampling step counts."""
    try:
        values = tuple(int(v) for v in _comma_parts(text, "4,8,12,20"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 4,8,12,20, got '{text}'") \
            from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive whole numbers such as 4,8,12,20, got '{text}'")
    from edgekit.errors import InputError
    from edgekit.limits import check_step_counts

    try:
        return check_step_counts(values)
    except InputError as exc:
        raise argparse.ArgumentTypeError(exc.worded(None)) from None


def number(text: str) -> float:
    """A finite number: nan and inf are refused here, before they reach a sampler or an optimiser."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def positive_number(text: str) -> float:
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got '{text}'")
    return value


def non_negative_number(text: str) -> float:
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got '{text}'")
    return value


# The unsigned 32-bit range: the browser runtime reads a seed as `seed >>> 0`, and torch.Generator and
# numpy's default_rng take every such value unchanged (also seed + i, the per-image seeds commands derive).
SEED_MAX = 2**32 - 1


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole-number seed from 0 to {SEED_MAX}, got '{text}'") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected a whole-number seed from 0 to {SEED_MAX}, got {text.strip()}")
    return value


def add_seed_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=seed, default=0, help=f"random seed, 0 to {SEED_MAX} (default 0)")


def add_model_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help="local diffusers pipeline directory (default: the embedded tiny digits model; a hub model: "
                        "huggingface-cli download ID --local-dir DIR first)")


def add_lora_flag(p: argparse.ArgumentParser) -> None:
    """--lora FILE[:SCALE], repeatable (edgekit.lora: fused into the model before the command runs)."""
    p.add_argument("--lora", action="append", default=None, metavar="FILE[:SCALE]",
                   help="a LoRA .safetensors file fused into the UNet and text encoder (diffusers/peft) before "
                        "anything runs, at SCALE (default 1); repeatable, fused in the order given")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=bounded_int("MAX_STEPS", "sampling steps"), default=None,
                   help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=number, default=None, help="guidance scale (default: the model's)")
    add_seed_flag(p)


def width_multiplier(text: str):
    """--width 0.5: parsed once into a Width (edgekit.width), the value every later stage compares exactly."""
    from edgekit.width import Width, WidthError

    try:
        return Width.parse(text)
    except WidthError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_width_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=width_multiplier, default=None,
                   help="width multiplier of a slimmable model (default: full width)")


def width_list(text: str) -> tuple[float, ...]:
    """--widths 0.5,0.75,1.0: finite numbers, no empty entries. Whether each is a width the command can use
    (in (0, 1], one the model or bundle has) is checked by the command's config, which names the value."""
    parts = _comma_parts(text, "0.5,0.75,1.0")
    try:
        return tuple(number(part) for part in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated width multipliers such as 0.5,0.75,1.0, "
                                         f"got '{text}'") from None


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def progress():
    """A rich progress display on stderr: what runs, done/total, elapsed and an estimate of the time left.
    Silent when stderr is not a terminal, and in every process of a launch group but the first."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from edgekit.compress.distill import is_main_process
    from edgekit.logs import terminal_stderr
    from edgekit.progress import showing

    console = Console(file=terminal_stderr())  # the terminal, also while other libraries' output is captured
    display = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True,
                       disable=not console.is_terminal or not is_main_process())
    # the first line counts the time from the start, so loading a model or one long call is never silent
    display.add_task("working", total=None)
    return showing(display)  # the work loops of every layer report to it (edgekit.progress)


def _stdout():
    from edgekit.logs import terminal_stdout

    return terminal_stdout()  # the terminal, also while other libraries' output is captured (edgekit.logs)


def emit(payload: dict, as_json: bool, lines: list[str]) -> None:
    from edgekit.compress.distill import is_main_process

    if not is_main_process():  # a launch group (accelerate launch) prints its summary once
        return
    if as_json:
        print(json.dumps(payload, indent=2), file=_stdout())
    else:
        print("\n".join(lines), file=_stdout())


def read_json(path: Path, param: str):
    """A JSON file given on the command line, or one InputError naming ``param`` (worded as its flag)."""
    from edgekit.safe_read import read_json as bounded_json

    # bounded: a regular file (a FIFO is refused, never waited on), its size, nesting and numbers
    return bounded_json(path, "JSON file", param=param, invalid="not a readable JSON file")


# Library parameter names whose flag is spelled differently (the rest: the flag is the name, "_" -> "-").
PARAM_FLAG_NAMES = {
    "model_dir": "model",
    "calibration": "calib",
    "calib_dir": "calib",
    "precisions": "precision",
    "recover_lr": "lr",
    "config_file": "config",
    "init_dir": "init",
    # fields of edgekit package's sections that it offers as flags
    "prune.ratio": "prune",
    "prune.recover_steps": "recover_steps",
    "slim.train_steps": "slim_steps",
}


def flags_of(parser: argparse.ArgumentParser) -> dict[str, str]:
    """A command's flags by destination name ("calib_samples" -> "--calib-samples")."""
    flags = {}
    for action in parser._actions:  # the first flag of a destination is its name (--samples, not an alias)
        if action.option_strings and action.dest not in flags:
            flags[action.dest] = next((o for o in action.option_strings if o.startswith("--")),
                                      action.option_strings[0])
        if isinstance(action, argparse._SubParsersAction):  # `policy simulate --trace`: the actions' own flags
            for sub in action.choices.values():
                flags = {**flags_of(sub), **flags}
    return flags


def error_line(exc: Exception, flags: dict[str, str]) -> str:
    """An edgekit error worded for the command that ran: the parameter it is about becomes that command's flag
    when the command has one (``widths`` -> ``--widths``); otherwise the library's words stay."""
    if not hasattr(exc, "worded"):
        return str(exc)

    def flag(param: str) -> str | None:
        return flags.get(PARAM_FLAG_NAMES.get(param, param))

    return exc.worded((flag(exc.param) or exc.param) if exc.param else None, flag)
