"""Export targets by name: ``ort-web``, ``tflite``, ``coreml``, ``onnx``. A target is one module holding a
``Target`` subclass; adding a target is adding a module and registering it here. Modules load lazily,
so importing this package loads no converter SDK."""
from __future__ import annotations

import difflib
import importlib

from edgekit.errors import InputError

_MODULES: dict[str, str] = {}
_LOADED: dict[str, object] = {}


def register(name: str, module: str) -> None:
    """Map ``name`` to the module that defines its target class (``TARGET``); a duplicate is an error."""
    if name in _MODULES:
        raise ValueError(f"target '{name}' is already registered (by {_MODULES[name]})")
    _MODULES[name] = module


def target_names() -> list[str]:
    return list(_MODULES)


def get_target(name: str, flag: str = "--target"):
    if name not in _MODULES:
        close = difflib.get_close_matches(name, list(_MODULES), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise InputError(f"{flag} {name}: unknown target (known: {', '.join(_MODULES)}){hint}")
    if name not in _LOADED:
        _LOADED[name] = importlib.import_module(_MODULES[name]).TARGET()
    return _LOADED[name]


register("ort-web", "edgekit.targets.ort_web")
register("tflite", "edgekit.targets.tflite")
register("coreml", "edgekit.targets.coreml")
register("onnx", "edgekit.targets.onnx")

DEFAULT_PROFILES = {"ort-web": "web-ort", "tflite": "android-tflite", "coreml": "ios-coreml", "onnx": "onnx"}
