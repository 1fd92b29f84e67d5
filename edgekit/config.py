"""Strict reading of a config dataclass from plain data: an unknown key is an error that says what is known
and the closest name. Shared by every config class that a user can write as JSON or YAML."""
from __future__ import annotations

import difflib
from dataclasses import fields

from edgekit.errors import InputError


def check_keys(data, cls, where: str | None = None) -> None:
    """Raise InputError unless ``data`` is a mapping whose keys are all fields of dataclass ``cls``.
    ``where`` names the data in the message (a file, a section of one); default: the class name."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    names = sorted(f.name for f in fields(cls))
    for key in data:
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1)
            raise InputError(f"{where}: unknown key '{key}'" + (f" (did you mean '{near[0]}'?)" if near else "")
                             + f"; known: {', '.join(names)}")


def widths_param(values, param: str = "widths") -> tuple:
    """``values`` as Width values in the given order (edgekit.width.parse_widths), or an InputError about
    ``param`` naming the value that is not a width, or the one listed twice."""
    from edgekit.width import Width, WidthError

    widths = []
    for value in values:
        shown = f"{value:g}" if isinstance(value, float) else value
        try:
            width = Width.parse(value)
        except WidthError as exc:
            raise InputError(str(exc).partition(": ")[2] or str(exc), param=param, value=shown) from None
        if width in widths:
            raise InputError("a width is listed twice", param=param,
                             value=",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values))
        widths.append(width)
    return tuple(widths)
