"""ONNX Runtime static INT8 quantization (QDQ, per-channel weights) fed by real calibration rows.

Library entry point (also used by the ORT-Web exporter for its INT8 bundle)::

    from edgekit.quantize.ort_static import quantize_onnx_static
    report = quantize_onnx_static(fp32_onnx_path, rows, out_path,
                                  calibrate_method="minmax",   # or "entropy", "percentile"
                                  activations="int8",          # or "uint8"; "int16" = A16W8
                                  per_channel=True, nodes_to_exclude=[...])

``compact=True`` also renames nodes and inner tensors to short ids after quantizing (the ``ort-static``
method does; names are not needed once the float exclusions are applied, and they are ~10% of a small
INT8 file). ``rows`` maps each graph input name to an array whose first axis is the row (e.g. the output of
``edgekit.components.inputs_from_calibration``); it is fed in batches through an ORT
CalibrationDataReader. The function writes ``out_path`` (a QDQ model whose weights are INT8 and whose
activations are INT8/UINT8, or INT16 through the com.microsoft Q/DQ ops below opset 21) and returns a
report dict (settings, quantized node count, seconds). ``onnx_nodes_in_units`` maps module-path units
(edgekit.quantize.sensitivity) to node names to exclude.

The ``ort-static`` method wraps it: export the component with edgekit.onnx_export, quantize, run in ORT.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.quantize import ComponentArtifact, QuantizeOptions, Quantizer, register
from edgekit.quantize.sensitivity import in_units

QDQ_FILE = "model.onnx"
# Only weight-bearing ops (and the attention matmuls) get Q/DQ around them: quantizing every Add, Mul,
# Softmax and mask input as well breaks the text encoder (its causal mask spans -3.4e38..0, rel-err 1.3
# measured) and, on this small UNet, triples the Q/DQ node count that each step pays for.
DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")


def node_module_path(node_name: str) -> str | None:
    """'/unet/down_blocks.0/resnets.0/conv1/Conv' -> 'down_blocks.0.resnets.0.conv1' (None if not scoped)."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 3:
        return None
    return ".".join(parts[1:-1])


def onnx_nodes_in_units(model_path: Path, float_units) -> list[str]:
    """Names of the graph nodes that belong to any of ``float_units`` (module paths)."""
    import onnx

    if not float_units:
        return []
    model = onnx.load(str(model_path), load_external_data=False)
    names = []
    for node in model.graph.node:
        path = node_module_path(node.name)
        if path is not None and in_units(path, float_units):
            names.append(node.name)
    return names


def compact_names(path: Path) -> int:
    """Rename the nodes, initializers and inner tensors of the ONNX model at ``path`` to short ids (graph
    inputs and outputs keep their names); returns the bytes saved. On the 4.2M-parameter UNet the QDQ
    graph carries about 0.5 MB of scope names (node, tensor and scale names), 10% of the INT8 file."""
    import os

    import onnx

    path = Path(path)
    before = os.path.getsize(path)
    model = onnx.load(str(path))
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = f"t{len(mapping):x}"
        return mapping[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i:x}"
        node.doc_string = ""
        for k, name in enumerate(node.input):
            node.input[k] = short(name)
        for k, name in enumerate(node.output):
            node.output[k] = short(name)
    del graph.value_info[:]
    onnx.save_model(model, str(path))
    return before - os.path.getsize(path)


class RowsReader:
    """An ORT CalibrationDataReader over in-memory rows, in fixed-size batches."""

    def __init__(self, rows: dict[str, np.ndarray], batch_size: int = 8) -> None:
        self.rows = rows
        self.batch_size = batch_size
        self.n = len(next(iter(rows.values())))
        self.start = 0

    def get_next(self):
        if self.start >= self.n:
            return None
        batch = {k: np.ascontiguousarray(v[self.start:self.start + self.batch_size]) for k, v in self.rows.items()}
        self.start += self.batch_size
        return batch

    def rewind(self) -> None:
        self.start = 0


def _as_reader(rows: dict[str, np.ndarray], batch_size: int):
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(RowsReader, CalibrationDataReader):
        pass

    return _Reader(rows, batch_size)


def activation_matmuls(model) -> list[str]:
    """MatMul nodes with no weight among their inputs (attention's query-key and score-value products).
    Quantizing them saves no bytes and, on small graphs, costs time: each adds Quantize/Dequantize pairs
    around activations (measured on the width-0.5 digits UNet, one batch-2 call on one thread: 2.30 ms
    with them, 1.57 ms without, FP32 1.60 ms; same held-out error)."""
    weights = {t.name for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}

    def from_weight(name: str) -> bool:
        while name not in weights and name in producers and producers[name].op_type in ("Transpose", "Cast", "Reshape"):
            name = producers[name].input[0]
        return name in weights

    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and n.name and not any(from_weight(i) for i in n.input)]


def quantize_onnx_static(model_path: Path, rows: dict[str, np.ndarray], out_path: Path, *,
                         calibrate_method: str = "minmax", activations: str = "int8", per_channel: bool = True,
                         nodes_to_exclude=(), op_types=DEFAULT_OP_TYPES, batch_size: int = 8,
                         compact: bool = False, weight_matmuls_only: bool = True) -> dict:
    """FP32 ONNX + calibration rows -> QDQ INT8 ONNX at ``out_path``; returns the report.
    ``weight_matmuls_only``: leave activation-by-activation MatMuls in float (see ``activation_matmuls``)."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    started = time.perf_counter()
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[calibrate_method]
    activation_type = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int16": QuantType.QInt16}[activations]
    extra = {}
    if activations == "int16":
        # Standard QuantizeLinear takes 16-bit only from opset 21; below it ORT's contrib Q/DQ ops carry it.
        extra["UseQDQContribOps"] = True
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(rows.values())))
    if calibrate_method != "minmax":
        # ORT's histogram calibrators stack every batch's outputs into one array: all batches must be equal.
        batch_size = max(b for b in range(1, min(batch_size, n) + 1) if n % b == 0)
    kept_float = activation_matmuls(onnx.load(str(model_path), load_external_data=False)) if weight_matmuls_only else []
    nodes_to_exclude = list(nodes_to_exclude) + [n for n in kept_float if n not in nodes_to_exclude]
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # the quantizer logs one warning per GroupNorm constant it leaves float
    try:
        with contextlib.redirect_stdout(sys.stderr):  # histogram calibrators print; stdout is for --json
            quantize_static(str(model_path), str(out_path), _as_reader(rows, batch_size),
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types), per_channel=per_channel,
                            activation_type=activation_type, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(nodes_to_exclude), calibrate_method=method, extra_options=extra)
    finally:
        root_logger.setLevel(level)
    model = onnx.load(str(out_path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    saved = compact_names(out_path) if compact else 0
    return {
        "names_compacted_bytes": saved,
        "activation_matmuls_kept_float": len(kept_float),
        "format": "QDQ",
        "calibrate_method": calibrate_method,
        "activations": activations,
        "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
        "op_types": list(op_types),
        "calibration_rows": int(n),
        "calibration_batch": int(batch_size),
        "quantize_linear_nodes": sum(op == "QuantizeLinear" for op in ops),
        "dequantize_linear_nodes": sum(op == "DequantizeLinear" for op in ops),
        "nodes_excluded": len(list(nodes_to_exclude)),
        "seconds": round(time.perf_counter() - started, 2),
    }


def export_fp32_onnx(pipe, component: str, out_path: Path) -> dict:
    """Export ``component`` with edgekit.onnx_export, then fold its shape arithmetic with onnxsim when it is
    installed (the ``onnx`` extra). On the small UNet this removes about two thirds of the nodes (4,493 ->
    1,575 measured on the reduced SD-1.5 UNet): graph bytes that INT8 cannot shrink and per-op overhead
    that every step pays. The same file is the FP32 baseline and the input of every ONNX quantizer."""
    import importlib.util

    import onnx

    from edgekit.onnx_export import export_onnx

    out_path = Path(out_path)
    export_onnx(pipe, component, out_path)
    model = onnx.load(str(out_path))
    before = len(model.graph.node)
    simplified = False
    if importlib.util.find_spec("onnxsim") is not None and model.ByteSize() < 2**31:
        import onnxsim

        from edgekit.onnx_export import native_output_silenced

        with native_output_silenced():
            candidate, ok = onnxsim.simplify(model)
        if ok:
            model, simplified = candidate, True
    del model.graph.value_info[:]  # shape annotations ORT re-derives; they only add bytes
    onnx.save_model(model, str(out_path))
    return {"nodes_exported": before, "nodes": len(model.graph.node), "onnxsim": simplified}


def onnx_runner(path: Path):
    from edgekit.onnx_export import ort_session, run_onnx

    session = ort_session(path)
    return lambda inputs: run_onnx(session, inputs)


@register
class OrtStaticQuantizer(Quantizer):
    name = "ort-static"
    backend_module = "onnxruntime"
    pip_package = "onnxruntime"
    artifact_kind = "onnx"
    uses_options = ("calibrate_method", "activations", "per_channel", "exclude", "float_budget")

    def quantize_component(self, pipe, component, calib_inputs, options: QuantizeOptions, float_units, root: Path,
                           workdir: Path) -> ComponentArtifact:
        fp32 = Path(workdir) / "fp32" / "model.onnx"
        graph = export_fp32_onnx(pipe, component, fp32)
        rel = Path("quantized") / component / QDQ_FILE
        excluded = onnx_nodes_in_units(fp32, float_units)
        report = quantize_onnx_static(fp32, calib_inputs, root / rel, calibrate_method=options.calibrate_method,
                                      activations=options.activations, per_channel=options.per_channel,
                                      nodes_to_exclude=excluded, compact=True)
        report["fp32_graph"] = graph
        return ComponentArtifact("onnx", [rel.as_posix()], onnx_runner(root / rel), report)
