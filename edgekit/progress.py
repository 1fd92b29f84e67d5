"""The running command's progress display, reachable from every layer: a command opens one
(``edgekit.commands.common.progress``) and the work loops below it say what they do through ``track`` and
``working`` without a display handed down each call. With no display open (library use, tests, a pipe),
both only pass through.
"""
from __future__ import annotations

from contextlib import contextmanager

_open: list = []  # the displays of the commands running in this process, innermost last


@contextmanager
def showing(display):
    """Open ``display`` (a rich Progress) and make it the one ``track`` and ``working`` report to."""
    with display:
        _open.append(display)
        try:
            yield display
        finally:
            _open.remove(display)


def current():
    """The open display, or None."""
    return _open[-1] if _open else None


def track(items, description: str, total: int | None = None):
    """Yield ``items``, one bar step each, with ``description`` shown while they run."""
    display = current()
    if display is None:
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    task = display.add_task(description, total=total)
    try:
        for item in items:
            yield item
            display.advance(task)
    finally:
        display.remove_task(task)


@contextmanager
def working(description: str):
    """A line naming one long call (an export, a conversion) with its elapsed time while it runs."""
    display = current()
    if display is None:
        yield
        return
    task = display.add_task(description, total=None)
    try:
        yield
    finally:
        display.remove_task(task)
