"""NNCF post-training INT8 quantization of a component's ONNX graph, producing a QDQ ONNX model.

nncf.quantize picks its ONNX backend from the model type; the calibration rows go in as an
nncf.Dataset of input feeds. Units kept in float (sensitivity budget, --exclude) become an
IgnoredScope over the same node names the ort-static method excludes. Every component is quantized
with ModelType.TRANSFORMER (NNCF then keeps softmax/normalisation patterns in float and smooths the
attention matmuls): on the digits UNet the default model type gave held-out rel-err 0.18 and 92% prompt
accuracy, TRANSFORMER 0.048 (the MIXED preset changed nothing).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.quantize import ComponentArtifact, QuantizeOptions, Quantizer
from edgekit.quantize.ort_static import QDQ_FILE, compact_names, export_fp32_onnx, onnx_nodes_in_units, onnx_runner


def quantize_onnx_nncf(model_path: Path, rows: dict[str, np.ndarray], out_path: Path, *, transformer: bool = True,
                       ignored_nodes=(), batch_size: int = 8) -> dict:
    """FP32 ONNX + calibration rows -> NNCF QDQ INT8 ONNX at ``out_path``; returns the report."""
    import nncf
    import onnx

    started = time.perf_counter()
    n = len(next(iter(rows.values())))
    feeds = [{k: np.ascontiguousarray(v[s:s + batch_size]) for k, v in rows.items()} for s in range(0, n, batch_size)]
    model = onnx.load(str(model_path))
    kwargs = {}
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if ignored_nodes:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored_nodes), validate=False)
    nncf.set_log_level(logging.ERROR)
    # NNCF draws progress bars on stdout; keep stdout for the command's own output (--json).
    with contextlib.redirect_stdout(sys.stderr):
        quantized = nncf.quantize(model, nncf.Dataset(feeds), subset_size=len(feeds), **kwargs)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(quantized, str(out_path))
    ops = [node.op_type for node in quantized.graph.node]
    return {
        "format": "QDQ",
        "nncf_version": nncf.__version__,
        "model_type": "transformer" if transformer else "default",
        "preset": "performance (symmetric activations and weights)",
        "calibration_rows": int(n),
        "quantize_linear_nodes": sum(op == "QuantizeLinear" for op in ops),
        "dequantize_linear_nodes": sum(op == "DequantizeLinear" for op in ops),
        "nodes_ignored": len(list(ignored_nodes)),
        "seconds": round(time.perf_counter() - started, 2),
    }


class NncfQuantizer(Quantizer):
    name = "nncf"
    backend_module = "nncf"
    pip_package = "nncf"
    artifact_kind = "onnx"
    uses_options = ("exclude", "float_budget")
    # Peak RSS on SD-1.5-layout UNets of 13M, 34M and 52M parameters (32x32 latents, 4 rows): 1.58, 2.55 and
    # 3.24 GB, a line of 1072 MB + 44.2 bytes per parameter (about 11 float copies of the weights): 36 GB at
    # 860M (benchmarks/results/realsize_quantizers.md).
    memory_fit = (1072 * 2**20, 44.2)

    def quantize_component(self, pipe, component, calib_inputs, options: QuantizeOptions, float_units, root: Path,
                           workdir: Path) -> ComponentArtifact:
        fp32 = Path(workdir) / "fp32" / "model.onnx"
        graph = export_fp32_onnx(pipe, component, fp32)
        rel = Path("quantized") / component / QDQ_FILE
        report = quantize_onnx_nncf(fp32, calib_inputs, root / rel, transformer=True,
                                    ignored_nodes=onnx_nodes_in_units(fp32, float_units))
        report["fp32_graph"] = graph
        report["names_compacted_bytes"] = compact_names(root / rel)
        return ComponentArtifact("onnx", [rel.as_posix()], onnx_runner(root / rel), report)


QUANTIZER = NncfQuantizer
