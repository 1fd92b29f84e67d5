"""Flag types and output helpers shared by the sub-commands (no heavy imports here)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def step_list(text: str) -> tuple[int, ...]:
    """--steps 4,8,12,20: positive sampling step counts."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers such as 4,8,12,20, got '{text}'") \
            from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive whole numbers such as 4,8,12,20, got '{text}'")
    return values


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None


def add_model_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=None,
                   help="local diffusers pipeline directory (default: the embedded tiny digits model)")


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=positive_int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--guidance", type=number, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0)


def width_multiplier(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a width multiplier in (0, 1], got '{text}'") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a width multiplier in (0, 1], got {value}")
    return value


def add_width_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--width", type=width_multiplier, default=None,
                   help="width multiplier of a slimmable model (default: full width)")


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON object instead of text")


def progress():
    """A rich progress display on stderr; silent when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def emit(payload: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(payload, indent=2))
    else:
        print("\n".join(lines))


def default_prompts_file() -> Path:
    return Path(__file__).resolve().parent.parent.parent / "calibration_data" / "prompts.txt"


def read_json(path: Path, flag: str):
    """A JSON file given on the command line, or one InputError naming the flag."""
    from edgekit.errors import InputError

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{flag} {path}: not a readable JSON file ({exc})") from None
