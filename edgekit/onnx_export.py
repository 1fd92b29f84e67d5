"""Export a component to ONNX (the graph that ORT, ORT-web, the ONNX quantizers and onnx2tf all start
from) and check it against torch in onnxruntime."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgekit.components import ComponentSpec, component_spec, export_module, example_inputs, run_torch
from edgekit.errors import VerificationError
from edgekit.quality import relative_error


class native_output_silenced:
    """Send file descriptors 1 and 2 to /dev/null while native code (onnxsim's C++ optimizer) prints
    warnings a user cannot act on; Python-level output is flushed first and restored after."""

    def __enter__(self):
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        self._null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(self._null, 1)
        os.dup2(self._null, 2)
        return self

    def __exit__(self, *exc):
        for fd, saved in zip((1, 2), self._saved):
            os.dup2(saved, fd)
            os.close(saved)
        os.close(self._null)
        return False

ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx.data"
TWO_GB = 2**31


def export_onnx(pipe, name: str, out_path: Path, opset: int = 17, dynamic_batch: bool = True,
                module=None) -> ComponentSpec:
    """Write ``out_path`` (and one external-data file beside it when the weights exceed 2 GB).

    ``module`` overrides the default export module (a patched or quantized copy of the component)."""
    import onnx
    import torch

    spec = component_spec(pipe, name)
    module = module if module is not None else export_module(pipe, name)
    dummy = example_inputs(pipe, name, batch=1)
    args = tuple(torch.from_numpy(dummy[n]) for n in spec.input_names())
    axes = {t.name: {0: "batch"} for t in spec.inputs + spec.outputs} if dynamic_batch else None
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about Python branches on static shapes
        raw = Path(tmp) / ONNX_FILE
        with torch.no_grad():
            torch.onnx.export(module, args, str(raw), input_names=spec.input_names(),
                              output_names=spec.output_names(), dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        model = onnx.load(str(raw))  # pulls in any per-tensor external files torch wrote
        size = sum(t.ByteSize() for t in model.graph.initializer)
        if size >= TWO_GB:
            data = out_path.name + ".data"
            onnx.save_model(model, str(out_path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data, size_threshold=1024)
        else:
            onnx.save_model(model, str(out_path))
    return spec


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def run_onnx(session, inputs: dict[str, np.ndarray]) -> np.ndarray:
    names = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in inputs.items() if k in names})[0]


def verify_onnx(pipe, name: str, path: Path, inputs: dict[str, np.ndarray] | None = None,
                tolerance: float | None = None, module=None) -> dict:
    """Relative and max-abs error of the ONNX model vs torch on ``inputs``; raises past ``tolerance``."""
    spec = component_spec(pipe, name)
    inputs = inputs if inputs is not None else example_inputs(pipe, name, batch=2, seed=1)
    reference = run_torch(module if module is not None else export_module(pipe, name), spec, inputs)
    actual = run_onnx(ort_session(path), inputs)
    result = {"rel_err": relative_error(actual, reference),
              "max_abs_err": float(np.max(np.abs(actual - reference))), "rows": int(len(reference))}
    limit = spec.fp32_tolerance if tolerance is None else tolerance
    if not np.isfinite(result["rel_err"]) or result["rel_err"] > limit:
        raise VerificationError(f"{name}: {os.fspath(path)} differs from torch: rel-err {result['rel_err']:.3g} "
                                f"> tolerance {limit:.3g} (max abs {result['max_abs_err']:.3g})")
    return result
