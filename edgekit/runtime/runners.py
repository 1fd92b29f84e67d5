"""Single-component runners: one exported graph, numpy inputs in, one numpy output out.

- ``OrtRunner``: an ONNX graph in onnxruntime (Python, CPU).
- ``LiteRTRunner``: a .tflite model in the stock LiteRT interpreter (ai_edge_litert), no Flex delegate.
- ``NodeOrtWebRunner``: an ONNX graph in onnxruntime-web (wasm) under Node, through ort_web.mjs (beside this
  module; onnxruntime-web found by edgekit.resources).
- ``inspect_mlpackage``: what a Core ML package holds (inputs, outputs, op types, weight storage);
  ``CoreMLRunner`` predicts on macOS only.

Every runner accepts any number of rows: a graph with a fixed batch axis is fed in slices (the last one
padded) so callers such as the bundle sampler never care about the exported batch size.

``RUNNERS`` (an ``edgekit.registry.Registry``, the pattern of targets and quantizers) maps a manifest entry's
``format`` to the runner class that owns it: how to open an entry (``from_entry``), why it cannot run here
(``unavailable``, None when it can) and what can still be checked then (``structure_check``). A target names
its format (``Target.file_format``) and asks this registry; ``runner_for(bundle_dir, entry)`` and
``recheck_entry`` go through it too, so no code outside a runner class switches on a format name.
"""
from __future__ import annotations

import json
import platform
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgekit.constants import MLPACKAGE, ONNX, TFLITE
from edgekit.errors import InputError, MissingBackendError, VerificationError
from edgekit.registry import Registry

NODE_SCRIPT = Path(__file__).resolve().parent / "ort_web.mjs"


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(actual - expected) / max(np.linalg.norm(expected), 1e-30))


def compare(actual: np.ndarray, expected: np.ndarray) -> dict:
    if np.shape(actual) != np.shape(expected):
        raise VerificationError(f"output shape {np.shape(actual)} differs from the reference {np.shape(expected)}")
    return {"rel_err": relative_error(actual, expected),
            "max_abs_err": float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))))}


class _Batched:
    """Feeds a graph whose batch axis may be fixed: rows go in slices of that size, the last padded."""

    input_names: list[str]
    fixed_batch: int | None = None
    runtime = ""
    format = ""  # the manifest entry "format" this runner runs

    @classmethod
    def unavailable(cls) -> str | None:
        """Why entries of this format cannot run on this machine, or None when they can."""
        return None

    @classmethod
    def from_entry(cls, bundle_dir: Path, entry: dict, node: bool = False, threads: int | None = None):
        """The runner for a manifest component entry of this format."""
        return cls(Path(bundle_dir) / entry["file"], threads)

    @classmethod
    def structure_check(cls, bundle_dir: Path, entry: dict) -> dict:
        """What can be checked without running the entry (where ``unavailable``); by default nothing."""
        raise MissingBackendError(f"{Path(bundle_dir) / entry['file']}: {cls.unavailable()}")

    def _run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        return self.run(dict(zip(self.input_names, args)))

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise InputError(f"{self.runtime}: inputs {missing} missing (graph takes {self.input_names})")
        rows = len(next(iter(inputs.values())))
        b = self.fixed_batch
        if b is None or b == rows:
            return self._run({n: inputs[n] for n in self.input_names})
        outs = []
        for start in range(0, rows, b):
            part = {}
            for n in self.input_names:
                chunk = inputs[n][start:start + b]
                if len(chunk) < b:  # pad with copies of the last row; the extra outputs are dropped
                    chunk = np.concatenate([chunk, np.repeat(chunk[-1:], b - len(chunk), axis=0)])
                part[n] = chunk
            outs.append(self._run(part)[: min(b, rows - start)])
        return np.concatenate(outs)


class OrtRunner(_Batched):
    format = ONNX

    @classmethod
    def from_entry(cls, bundle_dir, entry, node=False, threads=None):
        """onnxruntime here, or onnxruntime-web under Node when ``node``."""
        path = Path(bundle_dir) / entry["file"]
        if node:
            runner = NodeOrtWebRunner(path, [t["name"] for t in entry["inputs"]],
                                      [c["file"] for c in entry.get("external_data", [])])
        else:
            runner = cls(path, threads)
        if entry.get("rows_per_call") and runner.fixed_batch is None:
            runner.fixed_batch = int(entry["rows_per_call"])  # as the page feeds it (the wasm heap's limit)
        return runner

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        from edgekit.onnx_export import ort_session

        self.path = Path(path)
        self.session = ort_session(self.path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._types = {i.name: i.type for i in self.session.get_inputs()}
        first = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = first if isinstance(first, int) else None
        self.runtime = f"onnxruntime {ort.__version__} (python, CPU)"

    def _run(self, inputs):
        feed = {}
        for n, v in inputs.items():
            kind = self._types[n]
            dtype = np.int64 if "int64" in kind else np.int32 if "int32" in kind else \
                np.float16 if "float16" in kind else np.float32
            feed[n] = np.ascontiguousarray(v, dtype=dtype)
        return self.session.run(None, feed)[0]


class LiteRTRunner(_Batched):
    """The stock LiteRT interpreter (the pip ai_edge_litert build, which has no Flex delegate)."""

    format = TFLITE

    def __init__(self, path: Path, threads: int | None = None) -> None:
        try:
            from ai_edge_litert import __version__ as litert_version
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise MissingBackendError("running .tflite needs ai-edge-litert: pip install 'edgekit[tflite]'") from None
        self.path = Path(path)
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (RuntimeError, ValueError) as exc:
            raise VerificationError(f"{self.path}: the stock LiteRT interpreter refuses it: "
                                    f"{str(exc).splitlines()[0]}") from None
        signature = self.interpreter.get_signature_list()
        self.signature_key = next(iter(signature))
        self.runner = self.interpreter.get_signature_runner(self.signature_key)
        self.input_names = list(signature[self.signature_key]["inputs"])
        self.output_names = list(signature[self.signature_key]["outputs"])
        details = self.runner.get_input_details()
        # What each signature input takes (int8 for a full-integer model's quantized inputs).
        self.input_dtypes = {n: np.dtype(details[n]["dtype"]) for n in self.input_names}
        # A full-integer model takes and gives int8 tensors with (scale, zero point): float in, float out here.
        self._in_quant = {n: details[n]["quantization"] for n in self.input_names}
        self._out_quant = self.runner.get_output_details()[self.output_names[0]]["quantization"]
        self.fixed_batch = int(details[self.input_names[0]]["shape"][0])
        self.runtime = f"ai_edge_litert {litert_version} (stock LiteRT interpreter, CPU)"

    def _feed(self, name: str, value: np.ndarray) -> np.ndarray:
        dtype = self.input_dtypes[name]
        scale, zero = self._in_quant[name]
        if scale and dtype.kind in "iu" and np.asarray(value).dtype.kind == "f":
            info = np.iinfo(dtype)
            value = np.clip(np.round(np.asarray(value) / scale + zero), info.min, info.max)
        return np.ascontiguousarray(value, dtype=dtype)

    def _run(self, inputs):
        out = np.asarray(self.runner(**{n: self._feed(n, v) for n, v in inputs.items()})[self.output_names[0]])
        scale, zero = self._out_quant
        if scale and out.dtype.kind in "iu":
            out = (out.astype(np.float32) - zero) * np.float32(scale)
        return out


def node_available() -> str | None:
    """Why onnxruntime-web cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    from edgekit.resources import find_ort_web, ort_web_missing

    if find_ort_web() is None:
        return ort_web_missing()
    return None


def _node_version() -> str:
    from edgekit.resources import find_ort_web

    data = json.loads((find_ort_web() / "package.json").read_text())
    return data["version"]


class NodeOrtWebRunner(_Batched):
    """Each call starts Node, loads the graph in onnxruntime-web (wasm) and runs it once: a check, not a loop."""

    def __init__(self, path: Path, input_names: list[str], external_data: list[str] = (), timeout: float = 900) -> None:
        why = node_available()
        if why:
            raise MissingBackendError(f"onnxruntime-web under Node: {why}")
        self.path = Path(path)
        self.input_names = list(input_names)
        self.external_data = list(external_data)
        self.timeout = timeout
        self.runtime = f"onnxruntime-web {_node_version()} (node, wasm)"

    def _run(self, inputs):
        from edgekit.bundle import load_array, save_array

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            request = {"inputs": {n: save_array(tmp, f"{n}.bin", v) for n, v in inputs.items()},
                       "external_data": self.external_data}
            (tmp / "request.json").write_text(json.dumps(request))
            result = _node(["run", str(self.path), str(tmp / "request.json"), str(tmp)], self.timeout)
            first = next(iter(result["outputs"].values()))
            return load_array(tmp, {"file": Path(first["file"]).name, "dtype": first["dtype"], "shape": first["shape"]})


def _node(args: list[str], timeout: float) -> dict:
    import os

    from edgekit.resources import find_ort_web

    env = {**os.environ, "EDGEKIT_ORT_WEB": str(find_ort_web())}
    proc = subprocess.run(["node", str(NODE_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise VerificationError(f"onnxruntime-web (node): {proc.stderr.strip() or 'no output'}")
    result = json.loads(lines[-1])
    if proc.returncode != 0 and result.get("passed") is not False:
        raise VerificationError(f"onnxruntime-web (node): {proc.stderr.strip()}")
    return result


def check_bundle_in_node(bundle_dir: Path, labels: list[str] = (), timeout: float = 1800) -> list[dict]:
    """Run ort_web.mjs check on a bundle: every ONNX component replayed in onnxruntime-web.

    A component whose all-rows call runs out of the wasm32 heap (4 GB) is checked again in a fresh Node
    process one row per call; its result then carries ``rows_per_call`` and ``all_rows_error``, and the
    components after it are checked in another fresh process (a heap that failed once is not trusted)."""
    why = node_available()
    if why:
        raise MissingBackendError(f"onnxruntime-web under Node: {why}")
    results: list[dict] = []
    todo = [str(bundle_dir), *labels]
    while todo:
        out = _node(["check", *todo], timeout)
        results += out["results"]
        oom = out.get("out_of_memory")
        if oom is None:
            break
        (one,) = _node(["check", str(bundle_dir), "--rows-per-call", "1", oom["component"]], timeout)["results"]
        results.append({**one, "all_rows_error": f"{oom['rows']} rows in one call: {oom['error']}"})
        todo = [str(bundle_dir), *out["remaining"]] if out["remaining"] else []
    return results


def inspect_mlpackage(path: Path) -> dict:
    """Structure of a Core ML package without running it: I/O names, shapes and types, op-type counts,
    how the weights are stored (fp16/fp32 constants, int8 linear quantized, n-bit palettized)."""
    try:
        import coremltools as ct
        from coremltools.proto import MIL_pb2
    except ImportError:
        raise MissingBackendError("reading .mlpackage needs coremltools: pip install 'edgekit[coreml]'") from None
    spec = ct.utils.load_spec(str(path))

    def tensor(feature) -> dict:
        arr = feature.type.multiArrayType
        dtype = {65568: "float32", 65552: "float16", 131104: "int32"}.get(arr.dataType, str(arr.dataType))
        return {"name": feature.name, "dtype": dtype, "shape": [int(d) for d in arr.shape]}

    ops: Counter = Counter()
    const_dtypes: Counter = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                ops[op.type] += 1
                if op.type == "const":
                    for out in op.outputs:
                        tt = out.type.tensorType
                        if tt.dimensions and len(tt.dimensions) >= 1:
                            const_dtypes[MIL_pb2.DataType.Name(tt.dataType).lower()] += 1
    return {
        "spec_version": int(spec.specificationVersion),
        "model_type": spec.WhichOneof("Type"),
        "inputs": [tensor(f) for f in spec.description.input],
        "outputs": [tensor(f) for f in spec.description.output],
        "ops": dict(sorted(ops.items())),
        "const_dtypes": dict(sorted(const_dtypes.items())),
    }


class CoreMLRunner(_Batched):
    """Core ML prediction: macOS only (the Core ML framework does not exist elsewhere)."""

    format = MLPACKAGE

    @classmethod
    def unavailable(cls) -> str | None:
        return None if platform.system() == "Darwin" else "Core ML predictions need macOS (the Core ML framework)"

    @classmethod
    def from_entry(cls, bundle_dir, entry, node=False, threads=None):
        return cls(Path(bundle_dir) / entry["file"])

    @classmethod
    def structure_check(cls, bundle_dir, entry):
        """The package's inputs and shapes against the manifest entry, read with coremltools."""
        path = Path(bundle_dir) / entry["file"]
        info = inspect_mlpackage(path)
        got = [t["name"] for t in info["inputs"]]
        want = [t["name"] for t in entry["inputs"]]
        if got != want:
            raise VerificationError(f"{path}: inputs {got}, manifest says {want}")
        for t_got, t_want in zip(info["inputs"] + info["outputs"], entry["inputs"] + entry["outputs"]):
            if t_got["shape"] != t_want["shape"]:
                raise VerificationError(f"{path}: {t_got['name']} shape {t_got['shape']}, "
                                        f"manifest says {t_want['shape']}")
        return {"runtime": "coremltools (structure only)", "ops": sum(info["ops"].values()),
                "skipped": "numeric check needs macOS (Core ML framework)"}

    def __init__(self, path: Path) -> None:
        why = self.unavailable()
        if why:
            raise MissingBackendError(f"{path}: {why}; elsewhere only the structure is checked")
        import coremltools as ct

        self.path = Path(path)
        self.model = ct.models.MLModel(str(self.path))
        info = inspect_mlpackage(self.path)
        self.input_names = [t["name"] for t in info["inputs"]]
        self.output_name = info["outputs"][0]["name"]
        self.fixed_batch = info["inputs"][0]["shape"][0]
        self.runtime = f"coremltools {ct.__version__} (Core ML, macOS)"

    def _run(self, inputs):
        return np.asarray(self.model.predict({n: v for n, v in inputs.items()})[self.output_name])


RUNNERS = Registry("runner format", "RUNNER")
RUNNERS.add(OrtRunner.format, OrtRunner)
RUNNERS.add(LiteRTRunner.format, LiteRTRunner)
RUNNERS.add(CoreMLRunner.format, CoreMLRunner)


def runner_class(file_format: str) -> type[_Batched]:
    """The runner class of a manifest entry format (InputError naming the known formats otherwise)."""
    return RUNNERS.get(file_format)


def runner_for(bundle_dir: Path, entry: dict, node: bool = False, threads: int | None = None):
    """The runner a manifest component entry needs (Python ORT, or onnxruntime-web when ``node``)."""
    return runner_class(entry["format"]).from_entry(Path(bundle_dir), entry, node=node, threads=threads)


def recheck_entry(bundle_dir: Path, entry: dict, record: dict, node: bool = False) -> dict:
    """Replay the stored verification inputs; returns {runtime, rel_err, max_abs_err} or, where no
    runtime for the format exists here, the structural facts checked and why numbers were skipped."""
    from edgekit.bundle import load_array

    bundle_dir = Path(bundle_dir)
    cls = runner_class(entry["format"])
    if cls.unavailable():
        return cls.structure_check(bundle_dir, entry)
    data = record["data"]
    inputs = {n: load_array(bundle_dir, r) for n, r in data["inputs"].items()}
    expected = load_array(bundle_dir, data["expected"])
    runner = cls.from_entry(bundle_dir, entry, node=node)
    actual = runner.run(inputs)
    return {"runtime": runner.runtime, **compare(actual, expected)}
