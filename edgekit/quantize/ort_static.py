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

With ``calibrate_method="minmax"`` (the default) the activation ranges come from ``minmax_ranges``
(edgekit.quantize.ort_ranges), which measures them within about one inference's memory, and ORT's own QDQ writer takes them as a calibration
cache: the graph is the one ``quantize_static`` makes with its own calibrator (the same ranges give the same
file byte for byte), without that calibrator's memory (killed at 24 GB on the real-size SD-1.5 UNet at
64x64 latents; measured in benchmarks/results/realsize_quantize_memory.md). The histogram methods
(entropy, percentile) go through ``histogram_ranges``: passes over bounded subsets of the tensors feed ORT's
own HistogramCollector, whose thresholds the QDQ writer takes the same way. A float model past 2 GB keeps its weights in one external
file from export to the QDQ writer.

The ``ort-static`` method wraps it: export the component with edgekit.onnx_export, quantize, run in ORT.
"""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from edgekit.quantize import ComponentArtifact, QuantizeOptions, Quantizer
from edgekit.quantize.ort_ranges import (DEFAULT_OP_TYPES, _as_reader, _has_external_data, _NoRows,
                                         _precomputed_calibrator, activation_matmuls, histogram_ranges, minmax_ranges)
from edgekit.quantize.sensitivity import in_units

QDQ_FILE = "model.onnx"
# INT8 weights are a quarter of the float ones: from this much float ONNX (graph and weights) the INT8 file
# nears protobuf's 2 GB limit and is written with its weights in one external file beside it.
EXTERNAL_INT8_FROM_BYTES = 4 * (2**31 - 2**28)


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


def onnx_bytes(model_path: Path) -> int:
    """Bytes of an ONNX file and the external-data files it names."""
    import onnx
    from onnx import TensorProto

    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    files = {entry.value for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL
             for entry in t.external_data if entry.key == "location"}
    return model_path.stat().st_size + sum((model_path.parent / f).stat().st_size for f in files
                                           if (model_path.parent / f).is_file())


def quantize_onnx_static(model_path: Path, rows: dict[str, np.ndarray], out_path: Path, *,
                         calibrate_method: str = "minmax", activations: str = "int8", per_channel: bool = True,
                         nodes_to_exclude=(), op_types=DEFAULT_OP_TYPES, batch_size: int = 8,
                         compact: bool = False, weight_matmuls_only: bool = True, bounded_ranges: bool = True,
                         range_rows_per_run: int = 1, progress=None) -> dict:
    """FP32 ONNX + calibration rows -> QDQ INT8 ONNX at ``out_path``; returns the report.
    ``weight_matmuls_only``: leave activation-by-activation MatMuls in float (see ``activation_matmuls``).
    ``bounded_ranges``: measure the ranges with ``minmax_ranges`` (minmax: about one inference's memory) or
    ``histogram_ranges`` (entropy, percentile: one inference plus a bounded pass of activations), and hand
    them to ORT's QDQ writer, ``range_rows_per_run`` rows per inference; False runs ORT's own calibrator
    (every measured tensor an output of one session). Either way the QDQ graph is ORT's. A model whose INT8 form would pass 2 GB
    is written with one external-data file beside it (``<name>.data``), listed in the report's ``files``."""
    import inspect
    import logging
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData

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
    graph = onnx.load(str(model_path), load_external_data=False)
    external_source = _has_external_data(graph)
    kept_float = activation_matmuls(graph) if weight_matmuls_only else []
    del graph
    nodes_to_exclude = list(nodes_to_exclude) + [n for n in kept_float if n not in nodes_to_exclude]
    external_out = onnx_bytes(model_path) >= EXTERNAL_INT8_FROM_BYTES
    ranges_report: dict = {}
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)  # the quantizer logs one warning per GroupNorm constant it leaves float
    try:
        with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as tmp:  # stdout is for --json
            kwargs = dict(quant_format=QuantFormat.QDQ, op_types_to_quantize=list(op_types), per_channel=per_channel,
                          activation_type=activation_type, weight_type=QuantType.QInt8,
                          nodes_to_exclude=list(nodes_to_exclude), calibrate_method=method, extra_options=extra,
                          use_external_data_format=external_out)
            if bounded_ranges:
                t0 = time.perf_counter()
                if calibrate_method == "minmax":
                    ranges = TensorsData(CalibrationMethod.MinMax,
                                         minmax_ranges(model_path, rows, op_types, rows_per_run=range_rows_per_run,
                                                       progress=progress))
                    collector = f"in-graph min/max, {range_rows_per_run} row(s) per run"
                else:
                    ranges, plan = histogram_ranges(model_path, rows, calibrate_method, op_types,
                                                    rows_per_run=range_rows_per_run, progress=progress)
                    collector = (f"onnxruntime HistogramCollector over {plan['passes']} bounded pass(es), "
                                 f"{plan['stride']} row(s) per collect, {range_rows_per_run} row(s) per run")
                ranges_report = {"range_collector": collector, "tensors_measured": len(ranges.data),
                                 "ranges_seconds": round(time.perf_counter() - t0, 2)}
                if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
                    from onnxruntime.quantization.calibrate import save_tensors_data

                    cache = Path(tmp) / "ranges.json"
                    save_tensors_data(ranges, cache)
                    quantize_static(str(model_path), str(out_path), None, calibration_cache_path=str(cache), **kwargs)
                else:
                    with _precomputed_calibrator(ranges):
                        quantize_static(str(model_path), str(out_path), _NoRows(), **kwargs)
            else:
                ranges_report = {"range_collector": "onnxruntime calibrator"}
                # the calibrator saves its augmented copy of the model: with external data past 2 GB
                kwargs["use_external_data_format"] = external_out or external_source
                quantize_static(str(model_path), str(out_path), _as_reader(rows, batch_size), **kwargs)
    finally:
        root_logger.setLevel(level)
    model = onnx.load(str(out_path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    data_file = out_path.parent / (out_path.name + ".data")
    saved = compact_names(out_path) if compact and not data_file.exists() else 0
    return {
        "names_compacted_bytes": saved,
        "activation_matmuls_kept_float": len(kept_float),
        "format": "QDQ",
        "calibrate_method": calibrate_method,
        **ranges_report,
        "activations": activations,
        "weights": "int8 per-channel" if per_channel else "int8 per-tensor",
        "op_types": list(op_types),
        "calibration_rows": int(n),
        "calibration_batch": int(range_rows_per_run if ranges_report.get("tensors_measured") else batch_size),
        "quantize_linear_nodes": sum(op == "QuantizeLinear" for op in ops),
        "dequantize_linear_nodes": sum(op == "DequantizeLinear" for op in ops),
        "nodes_excluded": len(list(nodes_to_exclude)),
        "files": [out_path.name] + ([data_file.name] if data_file.exists() else []),
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
    # Past 2 GB export_onnx writes the weights to one external file beside the graph: read and rewrite the
    # graph only (the weights stay where they are), and skip onnxsim, which serialises the whole model.
    external = (out_path.parent / (out_path.name + ".data")).is_file()
    model = onnx.load(str(out_path), load_external_data=not external)
    before = len(model.graph.node)
    simplified = False
    if not external and importlib.util.find_spec("onnxsim") is not None and model.ByteSize() < 2**31:
        import onnxsim

        from edgekit.onnx_export import native_output_silenced

        with native_output_silenced():
            candidate, ok = onnxsim.simplify(model)
        if ok:
            model, simplified = candidate, True
    del model.graph.value_info[:]  # shape annotations ORT re-derives; they only add bytes
    onnx.save_model(model, str(out_path))
    return {"nodes_exported": before, "nodes": len(model.graph.node), "onnxsim": simplified,
            "external_data": external}


def onnx_runner(path: Path):
    from edgekit.onnx_export import ort_session, run_onnx

    session = ort_session(path)
    return lambda inputs: run_onnx(session, inputs)


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
        files = [(rel.parent / name).as_posix() for name in report.pop("files")]
        return ComponentArtifact("onnx", files, onnx_runner(root / rel), report)


QUANTIZER = OrtStaticQuantizer
