"""Export targets by name: ``ort-web``, ``tflite``, ``coreml``, ``onnx``. A target is one module holding a
``Target`` subclass as ``TARGET``, registered in ``TARGETS`` (an ``edgekit.registry.Registry``, the pattern
of quantizers and runners); adding a target is adding a module and one ``add`` line here. Modules load
lazily, so importing this package loads no converter SDK."""
from __future__ import annotations

from edgekit.registry import Registry

TARGETS = Registry("target", "TARGET")
TARGETS.add("ort-web", "edgekit.targets.ort_web")
TARGETS.add("tflite", "edgekit.targets.tflite")
TARGETS.add("coreml", "edgekit.targets.coreml")
TARGETS.add("onnx", "edgekit.targets.onnx")

DEFAULT_PROFILES = {"ort-web": "web-ort", "tflite": "android-tflite", "coreml": "ios-coreml", "onnx": "onnx"}
_INSTANCES: dict[str, object] = {}


def target_names() -> list[str]:
    return TARGETS.names()


def get_target(name: str):
    """The target registered as ``name`` (one instance per process); an unknown name raises InputError naming
    the target and the known ones."""
    if name not in _INSTANCES:
        _INSTANCES[name] = TARGETS.get(name)()
    return _INSTANCES[name]
