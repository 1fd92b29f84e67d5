"""One pattern for every extension point: a ``Registry`` maps a name to the module that defines the entry.

Components, targets, quantize methods and runners are each one ``Registry``, filled where the extension point
lives (``edgekit/components/__init__.py``, ``edgekit/targets/__init__.py``, ...) by ``add(name, "module")``:
the module is imported the first time the entry is asked for and must define the entry under the registry's
``attr`` (``COMPONENT``, ``TARGET``, ``QUANTIZER``, ``RUNNER``). So importing a registry loads no converter SDK,
adding an entry is adding one module plus one line, and the layering test sees every registered module by its
name. An entry defined in the registry's own module may be added as the object itself. A name registered twice
is an error; an unknown name is an ``InputError`` that says what is known and the closest name.
"""
from __future__ import annotations

import difflib
import importlib

from edgekit.errors import InputError


class Registry:
    def __init__(self, kind: str, attr: str) -> None:
        self.kind = kind  # what an entry is, in messages ("target", "quantize method")
        self.attr = attr  # the module attribute that holds the entry
        self._sources: dict[str, object] = {}
        self._loaded: dict[str, object] = {}

    def add(self, name: str, source) -> None:
        """Register ``name``: a module name (loaded lazily; its ``attr`` is the entry) or the entry itself."""
        if name in self._sources and self._sources[name] is not source:
            raise ValueError(f"{self.kind} '{name}' is registered twice ({self._describe(self._sources[name])}, "
                             f"{self._describe(source)})")
        self._sources[name] = source

    def names(self) -> list[str]:
        """Every registered name, in registration order."""
        return list(self._sources)

    def __contains__(self, name: object) -> bool:
        return name in self._sources

    def get(self, name: str):
        """The entry registered as ``name``; InputError naming the known ones otherwise."""
        if name not in self._sources:
            close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.4)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise InputError(f"unknown {self.kind} '{name}' (known: {', '.join(self.names())}){hint}")
        if name not in self._loaded:
            source = self._sources[name]
            self._loaded[name] = getattr(importlib.import_module(source), self.attr) if isinstance(source, str) \
                else source
        return self._loaded[name]

    def entries(self) -> list:
        """Every entry, in registration order (loads every module)."""
        return [self.get(n) for n in self._sources]

    @staticmethod
    def _describe(source) -> str:
        return source if isinstance(source, str) else getattr(source, "__qualname__", repr(source))
