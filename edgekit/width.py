"""One value for a width multiplier, normalised once where it enters the library.

A width is stored in hundredths (1.0 -> 100, 0.75 -> 75), so equality, hashing and ordering are exact and every
spelling comes from one place:

- `float(w)` / `w.value`: the multiplier (0.75), for arithmetic on channel counts;
- `w.key`: the manifest / bundle key ("0.75", always two decimals; "1.00" for full width);
- `w.tag`: stage and folder names ("w0.75");
- `str(w)`: how a person reads it in messages and reports ("0.75", "1", "0.5").

`Width.parse` accepts a float, an int, a `Width`, a string ("0.5", "1.00", "w0.75") or None (full width) and
raises `WidthError` (a `ValueError` that names the value and the expectation) for anything else; callers at the
CLI boundary map that to their flag.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

RESOLUTION = 100  # hundredths: every width edgekit offers is a multiple of 0.01


class WidthError(ValueError):
    """A value that is not a width multiplier in (0, 1] on the 0.01 grid."""


@dataclass(frozen=True, order=True)
class Width:
    hundredths: int

    def __post_init__(self) -> None:
        if not isinstance(self.hundredths, int) or not 0 < self.hundredths <= RESOLUTION:
            raise WidthError(f"width {self.hundredths!r}/{RESOLUTION}: expected a multiplier in (0, 1]")

    @classmethod
    def parse(cls, value: "Width | float | int | str | None") -> "Width":
        if isinstance(value, Width):
            return value
        if value is None:
            return FULL
        if isinstance(value, bool):
            raise WidthError(f"width {value!r}: expected a multiplier in (0, 1]")
        text = value
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("w"):
                text = text[1:]
            try:
                number = float(text)
            except ValueError:
                raise WidthError(f"width {value!r}: expected a number such as 0.5 or 1.0") from None
        else:
            number = float(value)
        if not number == number or not 0 < number <= 1:  # NaN fails the first test
            raise WidthError(f"width {value!r}: expected a multiplier in (0, 1]")
        scaled = number * RESOLUTION
        hundredths = round(scaled)
        if abs(scaled - hundredths) > 1e-6 or hundredths == 0:
            raise WidthError(f"width {value!r}: expected a multiple of 0.01 in (0, 1]")
        return cls(int(hundredths))

    @property
    def value(self) -> float:
        return self.hundredths / RESOLUTION

    @property
    def key(self) -> str:
        return f"{self.value:.2f}"

    @property
    def tag(self) -> str:
        return f"w{self.key}"

    @property
    def is_full(self) -> bool:
        return self.hundredths == RESOLUTION

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return f"{self.value:g}"

    def __format__(self, spec: str) -> str:
        return format(self.value, spec) if spec else str(self)


FULL = Width(RESOLUTION)


def parse_widths(values: Iterable) -> tuple[Width, ...]:
    """Widths from any iterable of width spellings, in the given order; a repeat is an error."""
    widths = tuple(Width.parse(v) for v in values)
    seen = set()
    for w in widths:
        if w in seen:
            raise WidthError(f"width {w}: listed twice")
        seen.add(w)
    return widths
