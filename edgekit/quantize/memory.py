"""Will a quantize method fit this machine's memory? An estimate from the component's parameter count (read
from its weight files' headers, no weights loaded) and the method's measured growth, checked before any work.

Each ``Quantizer`` may declare ``memory_fit = (intercept_bytes, bytes_per_param)``: a least-squares line through
its peak resident memory on UNets of SD-1.5's layout at several widths (benchmarks/realsize_quantizers.py,
results in benchmarks/results/realsize_quantizers.md). A method without one (ort-static, whose activation
ranges are bounded by design) is never refused here.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

from edgekit.errors import InputError

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def safetensors_params(path: Path) -> int:
    """Number of values stored in a safetensors file, from its JSON header (the weights are not read)."""
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(length))
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in info["shape"]:
            count *= int(dim)
        total += count
    return total


def component_params(model_dir: Path, component: str) -> int | None:
    """Parameters of ``component`` in the pipeline at ``model_dir`` (None when its weights are not safetensors
    or cannot be read: then no estimate is made)."""
    from edgekit.components import get_component

    # a diffusers pipeline keeps each module's weights in the folder named like its pipeline attribute
    folder = Path(model_dir) / get_component(component).pipeline_attr
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    try:
        return sum(safetensors_params(f) for f in files)
    except (OSError, ValueError, KeyError, struct.error):
        return None


def available_bytes() -> int:
    """Memory the system could give a new process now (MemAvailable)."""
    import psutil

    return int(psutil.virtual_memory().available)


def estimate_bytes(quantizer, params: int) -> int | None:
    fit = getattr(quantizer, "memory_fit", None)
    if not fit:
        return None
    intercept, per_param = fit
    return int(intercept + per_param * params)


def check_memory(quantizer, model_dir: Path, components, param: str = "method") -> dict | None:
    """Raise InputError (one line: method, estimate, the measured line it comes from, what is available) when
    ``quantizer``'s estimated peak for the largest of ``components`` exceeds the available memory. Returns
    the estimate record (None when the method declares no fit or no component's size is known). ``param``:
    the caller's name for the method (a command words it as its flag)."""
    sizes = {c: component_params(model_dir, c) for c in components}
    sizes = {c: n for c, n in sizes.items() if n}
    if not sizes or getattr(quantizer, "memory_fit", None) is None:
        return None
    component = max(sizes, key=sizes.get)
    params = sizes[component]
    needed = estimate_bytes(quantizer, params)
    free = available_bytes()
    intercept, per_param = quantizer.memory_fit
    record = {"component": component, "params": params, "estimated_peak_bytes": needed, "available_bytes": free}
    if needed > free:
        raise InputError(f"needs about {needed / 2**30:.1f} GB for the {params / 1e6:.0f}M-parameter {component} "
                         f"(measured {intercept / 2**20:.0f} MB + {per_param:.1f} bytes per parameter, "
                         f"benchmarks/results/realsize_quantizers.md), {free / 2**30:.1f} GB available; use "
                         f"{{{param}}} ort-static (bounded memory) or a smaller model", param=param,
                         value=quantizer.name, mentions=(param,))
    return record
