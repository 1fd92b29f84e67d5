"""Activation ranges for ONNX Runtime's QDQ writer, measured within bounded memory (the ``ort-static`` method,
edgekit.quantize.ort_static): which tensors get ranges (``tensors_to_calibrate``), their min/max over the
calibration rows a few rows per run (``minmax_ranges``), or ORT's own histogram collector fed in passes over
bounded subsets of the tensors (``histogram_ranges``), and the calibrator that hands the measured ranges to
``quantize_static`` unchanged (``_precomputed_calibrator``)."""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

# Only weight-bearing ops (and the attention matmuls) get Q/DQ around them: quantizing every Add, Mul,
# Softmax and mask input as well breaks the text encoder (its causal mask spans -3.4e38..0, rel-err 1.3
# measured) and, on this small UNet, triples the Q/DQ node count that each step pays for.
DEFAULT_OP_TYPES = ("Conv", "MatMul", "Gemm")


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


def tensors_to_calibrate(model, op_types=DEFAULT_OP_TYPES) -> list[str]:
    """The float tensors ORT's calibrators measure: every non-initializer input and output of a node of
    ``op_types`` whose type shape inference knows (the selection of onnxruntime's
    ``CalibraterBase.select_tensors_to_calibrate``, so the QDQ writer finds a range for each tensor it asks)."""
    from onnx import TensorProto

    infos = {vi.name: vi for vi in model.graph.value_info}
    infos.update({o.name: o for o in model.graph.output})
    infos.update({i.name: i for i in model.graph.input})
    weights = {init.name for init in model.graph.initializer}
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16}
    names = set()
    for node in model.graph.node:
        if op_types and node.op_type not in op_types:
            continue
        for name in list(node.input) + list(node.output):
            info = infos.get(name)
            if (info is not None and info.type.HasField("tensor_type") and info.type.tensor_type.elem_type in floats
                    and name not in weights):
                names.add(name)
    return sorted(names)


def _has_external_data(model) -> bool:
    from onnx import TensorProto

    return any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


@contextlib.contextmanager
def _weights_moved_out(model):
    """A temporary copy of the loaded ``model`` with its weights in one external file. Weights inside the graph would be
    copied by every step of a range pass (shape inference, the augmented copy, its serialisation, the session):
    they are moved out once, and the pass measures from the copy."""
    import tempfile

    import onnx

    with tempfile.TemporaryDirectory(prefix="edgekit-ranges-") as tmp:
        moved = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(moved), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        del model
        yield moved


def _range_model(model, tensors: list[str]):
    """A copy of ``model``'s graph whose only outputs are ReduceMin/ReduceMax of ``tensors`` (one float each).
    Reducing inside the graph keeps memory at one inference's: no activation leaves the session, and ORT frees
    each tensor after its last reader. ``model`` is loaded without its external data, so the copy is small."""
    import onnx
    from onnx import helper, numpy_helper

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    graph = augmented.graph
    del graph.output[:]
    shape_name = "edgekit_range_shape"
    graph.initializer.append(numpy_helper.from_array(np.array([-1], dtype=np.int64), shape_name))
    reductions: dict[str, list] = {}
    for i, name in enumerate(tensors):
        for op in ("ReduceMin", "ReduceMax"):
            reduced, flat = f"edgekit_range_{i}_{op}_keep", f"edgekit_range_{i}_{op}"
            reductions.setdefault(name, []).extend([
                helper.make_node(op, [name], [reduced], keepdims=1, name=reduced),
                helper.make_node("Reshape", [reduced, shape_name], [flat], name=flat)])
            graph.output.append(helper.make_tensor_value_info(flat, onnx.TensorProto.FLOAT, [None]))
    # Each reduction right after the node that makes its tensor (graph inputs' first): ORT runs nodes in this
    # order where it can, so a tensor is freed once its own readers ran. Appended at the end instead, they
    # would keep every measured activation alive to the end of the run (13.2 GB measured on the real-size
    # UNet at 64x64 latents).
    nodes = [n for name in (i.name for i in graph.input) for n in reductions.pop(name, [])]
    for node in graph.node:
        nodes.append(node)
        for out in node.output:
            nodes.extend(reductions.pop(out, []))
    for rest in reductions.values():
        nodes.extend(rest)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return augmented


def minmax_ranges(model_path: Path, rows: dict[str, np.ndarray], op_types=DEFAULT_OP_TYPES, *,
                  rows_per_run: int = 1, tensors_per_pass: int | None = None, progress=None) -> dict:
    """Min and max of every tensor ORT's MinMax calibrator measures, over all ``rows``, within about one
    inference's memory: ``{tensor: (min, max)}`` as float32 arrays of shape (1,) (the form ORT's calibrator
    hands its QDQ writer).

    onnxruntime's own path exposes every measured tensor's reductions as outputs of one session built
    on a shape-inferred copy of the whole model, with the weights loaded into Python twice; on the
    real-size SD-1.5 UNet (3.4 GB, 64x64 latents) that was killed at 24 GB. Here the graph is read without
    its external data, augmented with in-graph reductions only, and run ``rows_per_run`` rows at a time in
    a session without a memory arena; ``tensors_per_pass`` splits the tensors over several passes (each
    re-runs the rows) when even the reductions of all of them at once do not fit."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort

    from edgekit.progress import current as current_progress

    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    if not _has_external_data(model):
        moving = _weights_moved_out(model)
        del model  # the copy below holds the only reference until its weights are written out
        with moving as moved:
            return minmax_ranges(moved, rows, op_types, rows_per_run=rows_per_run,
                                 tensors_per_pass=tensors_per_pass, progress=progress)
    inferred = onnx.shape_inference.infer_shapes(model)
    tensors = tensors_to_calibrate(inferred, op_types)
    per_pass = len(tensors) if not tensors_per_pass else max(1, int(tensors_per_pass))
    feeds_names = [i.name for i in model.graph.input]
    n = len(next(iter(rows.values())))
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # As ORT's calibrator: no graph rewrite, so every measured tensor is computed as the QDQ graph sees it.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False  # an arena keeps its high-water mark for the session's life
    # Run nodes in the graph's order where the data allows, so each reduction runs right after its tensor is
    # made (``_range_model``) and the tensor is freed early. ORT's default order ran them late: on the
    # width-0.5 SD-1.5 UNet (0.8 GB) at 64x64 latents, one row, 7.7 GB peak in the default order, 2.3 GB in this.
    if hasattr(ort, "ExecutionOrder"):
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    passes = [tensors[i:i + per_pass] for i in range(0, len(tensors), per_pass)]
    progress = progress or current_progress()
    task = progress.add_task("activation ranges", total=len(passes) * n) if progress else None
    for part in passes:
        augmented = _range_model(model, part)
        # external data resolves relative to the model file: the augmented graph sits beside it
        fd, name = tempfile.mkstemp(prefix=f".{model_path.stem}.ranges-", suffix=".onnx", dir=model_path.parent)
        os.close(fd)
        try:
            onnx.save_model(augmented, name)
            session = ort.InferenceSession(name, sess_options=options, providers=["CPUExecutionProvider"])
        finally:
            os.unlink(name)
        del augmented
        outputs = [o.name for o in session.get_outputs()]
        for start in range(0, n, rows_per_run):
            feeds = {k: np.ascontiguousarray(rows[k][start:start + rows_per_run]) for k in feeds_names}
            for out_name, value in zip(outputs, session.run(None, feeds)):
                index, op = out_name[len("edgekit_range_"):].split("_", 1)
                tensor = part[int(index)]
                v = float(value.reshape(-1)[0])
                if op == "ReduceMin":
                    lows[tensor] = min(lows.get(tensor, v), v)
                else:
                    highs[tensor] = max(highs.get(tensor, v), v)
            if task is not None:
                progress.update(task, advance=min(rows_per_run, n - start))
        del session
    return {t: (np.array([lows[t]], dtype=np.float32), np.array([highs[t]], dtype=np.float32)) for t in tensors}


# What ORT's create_calibrator sets up for each histogram method (onnxruntime.quantization.calibrate): the
# collector below is fed with the same settings, so the ranges are the ones its calibrator would choose.
HISTOGRAM_SETTINGS = {
    "entropy": {"symmetric": False, "num_bins": 128, "num_quantized_bins": 128, "percentile": 99.999},
    "percentile": {"symmetric": True, "num_bins": 2048, "num_quantized_bins": 128, "percentile": 99.999},
}
# Activation bytes one histogram pass may hold (every row of its tensors, before they go to the collector).
HISTOGRAM_PASS_BYTES = 512 * 2**20


def _size_model(model, tensors: list[str]):
    """A copy of ``model``'s graph whose only outputs are the element counts (Size) of ``tensors``."""
    import onnx
    from onnx import helper

    counted = onnx.ModelProto()
    counted.CopyFrom(model)
    graph = counted.graph
    del graph.output[:]
    for i, name in enumerate(tensors):
        out = f"edgekit_size_{i}"
        graph.node.append(helper.make_node("Size", [name], [out], name=out))
        graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.INT64, []))
    del graph.value_info[:]
    return counted


def _exposing_model(model, tensors: list[str]):
    """A copy of ``model``'s graph whose only outputs are ``tensors`` themselves."""
    import onnx
    from onnx import helper

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    graph = exposed.graph
    del graph.output[:]
    for name in tensors:
        graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    del graph.value_info[:]
    return exposed


def _range_session(augmented, model_path: Path):
    """An ORT session over ``augmented`` (a graph whose weights live beside ``model_path``), set up as
    ``minmax_ranges`` does: no graph rewrite, no memory arena, graph order where the data allows."""
    import os
    import tempfile

    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_cpu_mem_arena = False
    if hasattr(ort, "ExecutionOrder"):
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    fd, name = tempfile.mkstemp(prefix=f".{model_path.stem}.ranges-", suffix=".onnx", dir=model_path.parent)
    os.close(fd)
    try:
        onnx.save_model(augmented, name)
        return ort.InferenceSession(name, sess_options=options, providers=["CPUExecutionProvider"])
    finally:
        os.unlink(name)


def histogram_passes(row_bytes: dict[str, int], n_rows: int, pass_bytes: int) -> tuple[list[list[str]], int]:
    """Plan the histogram passes: (tensor groups, stride). Every tensor reaches the collector ``stride`` rows at a
    time (all rows when the largest tensor's rows fit ``pass_bytes``), and each group's tensors hold at most
    ``pass_bytes`` over ``stride`` rows (a tensor past that alone gets a group of its own)."""
    largest = max(row_bytes.values(), default=1)
    stride = int(min(n_rows, max(1, pass_bytes // max(largest, 1))))
    groups: list[list[str]] = []
    current: list[str] = []
    held = 0
    for name, per_row in row_bytes.items():
        size = per_row * stride
        if current and held + size > pass_bytes:
            groups.append(current)
            current, held = [], 0
        current.append(name)
        held += size
    if current:
        groups.append(current)
    return groups, stride


def histogram_ranges(model_path: Path, rows: dict[str, np.ndarray], calibrate_method: str,
                     op_types=DEFAULT_OP_TYPES, *, rows_per_run: int = 1, pass_bytes: int = HISTOGRAM_PASS_BYTES,
                     progress=None):
    """The entropy or percentile ranges ORT's calibrator would choose, within a bounded memory: returns
    (an ``onnxruntime.quantization.calibrate.TensorsData`` for ORT's QDQ writer, {"passes", "stride"}).

    ORT's histogram calibrators make every measured tensor an output of one session and keep every row's
    outputs before histogramming them. Here the tensors are split into passes (``histogram_passes``) of at
    most ``pass_bytes`` of activations; each pass runs the rows (``rows_per_run`` per run) through a graph
    that exposes only its tensors, and hands them, ``stride`` rows at a time, to ORT's own
    ``HistogramCollector`` with ORT's settings for the method (``HISTOGRAM_SETTINGS``); ORT's code computes
    the thresholds. When the largest tensor's rows all fit ``pass_bytes`` the stride is every row and the
    ranges are those of ORT's calibrator; otherwise they are those of ORT's strided calibration
    (``CalibStridedMinMax``: each stride's histograms merged into the last). The memory is one inference plus
    one pass; the cost is one inference for the element counts and the rows re-run once per pass."""
    import onnx
    from onnxruntime.quantization.calibrate import CalibrationMethod, HistogramCollector, TensorsData

    from edgekit.progress import current as current_progress

    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    if not _has_external_data(model):
        moving = _weights_moved_out(model)
        del model  # the copy below holds the only reference until its weights are written out
        with moving as moved:
            return histogram_ranges(moved, rows, calibrate_method, op_types, rows_per_run=rows_per_run,
                                    pass_bytes=pass_bytes, progress=progress)
    inferred = onnx.shape_inference.infer_shapes(model)
    tensors = tensors_to_calibrate(inferred, op_types)
    feeds_names = [i.name for i in model.graph.input]
    n = len(next(iter(rows.values())))
    one_row = {k: np.ascontiguousarray(rows[k][:1]) for k in feeds_names}
    counts = _range_session(_size_model(model, tensors), model_path).run(None, one_row)
    row_bytes = {t: int(c) * 4 for t, c in zip(tensors, counts)}
    passes, stride = histogram_passes(row_bytes, n, int(pass_bytes))
    settings = HISTOGRAM_SETTINGS[calibrate_method]
    collector = HistogramCollector(method=calibrate_method, symmetric=settings["symmetric"],
                                   num_bins=settings["num_bins"], num_quantized_bins=settings["num_quantized_bins"],
                                   percentile=settings["percentile"], scenario="same")
    progress = progress or current_progress()
    task = progress.add_task(f"{calibrate_method} histograms", total=len(passes) * n) if progress else None
    for part in passes:
        session = _range_session(_exposing_model(model, part), model_path)
        for first in range(0, n, stride):
            held: dict[str, list] = {t: [] for t in part}
            for start in range(first, min(first + stride, n), rows_per_run):
                stop = min(start + rows_per_run, first + stride, n)
                feeds = {k: np.ascontiguousarray(rows[k][start:stop]) for k in feeds_names}
                for name, value in zip(part, session.run(part, feeds)):
                    held[name].append(value)
                if task is not None:
                    progress.update(task, advance=stop - start)
            collector.collect({t: np.concatenate(v, axis=0) for t, v in held.items()})
            del held
        del session
    method = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[calibrate_method]
    return TensorsData(method, collector.compute_collection_result()), {"passes": len(passes), "stride": stride}


@contextlib.contextmanager
def _precomputed_calibrator(ranges: dict):
    """Make ``quantize_static`` take ``ranges`` (``{tensor: (min, max)}`` or a TensorsData) instead of calibrating (for an onnxruntime without
    ``calibration_cache_path``): its calibrator factory is replaced for this block by one that measures
    nothing and returns the ranges; the QDQ writer and everything after it are ORT's own."""
    import importlib

    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData

    ort_quantize = importlib.import_module("onnxruntime.quantization.quantize")  # the package exports a function by that name

    class Precomputed:
        def collect_data(self, _reader):
            pass

        def compute_data(self):
            return ranges if isinstance(ranges, TensorsData) else TensorsData(CalibrationMethod.MinMax, dict(ranges))

    original = ort_quantize.create_calibrator
    ort_quantize.create_calibrator = lambda *args, **kwargs: Precomputed()
    try:
        yield
    finally:
        ort_quantize.create_calibrator = original


class _NoRows:
    """A calibration reader with no rows, for a ``quantize_static`` whose ranges are already known."""

    def get_next(self):
        return None

    def rewind(self):
        pass
