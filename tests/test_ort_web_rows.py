"""onnxruntime-web's wasm32 heap holds at most 4 GB. A graph whose two-row call does not fit (an SD-1.5 UNet at
64x64 latents: 867 MB of INT8 weights plus ~1 GB attention score tensors per call) is checked one row per call,
the manifest entry says so (``rows_per_call``), and every runner of the bundle then feeds it that way."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.runtime.runners import node_available

# Eight different 256 MB-per-row tensors, all alive at the final Max: ~2.3 GB at one row, ~4.6 GB at two (past
# the heap). Each tensor stays well below 2 GB, so two rows fail by allocation, as the UNet's call does.
WIDE = 64_000_000
PARTS = 8


def _wide_graph(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    inits = [helper.make_tensor("shape", TensorProto.INT64, [2], [1, WIDE])]
    nodes = []
    for i in range(PARTS):  # different offsets: no common-subexpression merge of the eight
        inits.append(helper.make_tensor(f"off{i}", TensorProto.FLOAT, [1], [-float(i + 1)]))
        nodes += [helper.make_node("Add", ["x", f"off{i}"], [f"x{i}"]),
                  helper.make_node("Expand", [f"x{i}", "shape"], [f"wide{i}"])]
    nodes += [helper.make_node("Max", [f"wide{i}" for i in range(PARTS)], ["most"]),
              helper.make_node("ReduceMax", ["most"], ["y"], axes=[1], keepdims=1)]
    graph = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True)
    onnx.save_model(model, str(path))


def _bundle(root: Path, rows_per_call: int | None = None) -> Path:
    from edgekit.bundle import save_array

    _wide_graph(root / "unet" / "model.onnx")
    x = np.array([[1.5], [-2.0]], dtype=np.float32)
    entry = {"format": "onnx", "file": "unet/model.onnx", "inputs": [{"name": "x"}], "outputs": [{"name": "y"}]}
    if rows_per_call:
        entry["rows_per_call"] = rows_per_call
    record = {"tolerance": 1e-6, "data": {"inputs": {"x": save_array(root, "verification/x.bin", x)},
                                          "expected": save_array(root, "verification/y.bin", x - 1)}}
    (root / "manifest.json").write_text(json.dumps({"components": {"unet": entry},
                                                    "verification": {"unet": record}}))
    return root


@pytest.mark.skipif(node_available() is not None, reason="onnxruntime-web under Node is not installed here")
def test_node_check_falls_back_to_one_row_per_call_when_the_heap_is_exhausted(tmp_path):
    from edgekit.runtime.runners import check_bundle_in_node

    (result,) = check_bundle_in_node(_bundle(tmp_path / "b"))
    assert result["passed"] and result["rel_err"] == 0.0
    assert result["rows_per_call"] == 1
    assert "2 rows in one call" in result["all_rows_error"] and "bad_alloc" in result["all_rows_error"]

    # an entry that already says one row per call is run that way: no failed two-row attempt first
    (again,) = check_bundle_in_node(_bundle(tmp_path / "c", rows_per_call=1))
    assert again["passed"] and again["rel_err"] == 0.0 and "all_rows_error" not in again


def test_finish_records_rows_per_call_and_the_runners_honour_it(tmp_path, monkeypatch):
    """OrtWebTarget.finish writes the Node check's fallback into the entry and the sampling batching; a runner
    made from such an entry (Python onnxruntime) then feeds one row per call."""
    import edgekit.runtime.runners as runners
    from edgekit.profiles import shipped_profile
    from edgekit.targets.ort_web import OrtWebTarget

    root = _bundle(tmp_path / "b")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["components"]["unet"] = {"widths": {"1.00": manifest["components"]["unet"]}}
    manifest["verification"]["unet"] = {"widths": {"1.00": {**manifest["verification"]["unet"], "checks": []}}}
    manifest["sampling"] = {"batching": "batch2"}
    fallback = {"component": "unet@1.00", "runtime": "onnxruntime-web (node, wasm)", "rel_err": 0.0,
                "max_abs_err": 0.0, "tolerance": 1e-6, "passed": True, "rows_per_call": 1,
                "all_rows_error": "2 rows in one call: std::bad_alloc"}
    monkeypatch.setattr(runners, "node_available", lambda: None)
    monkeypatch.setattr(runners, "check_bundle_in_node", lambda stage: [fallback])
    out = OrtWebTarget().finish(root, manifest, shipped_profile("web-ort"))
    entry = out["components"]["unet"]["widths"]["1.00"]
    assert entry["rows_per_call"] == 1
    assert out["sampling"]["batching"] == "two-calls"
    check = out["verification"]["unet"]["widths"]["1.00"]["checks"][-1]
    assert check["rows_per_call"] == 1 and "bad_alloc" in check["all_rows_error"]

    seen = []
    small = np.array([[1.0], [2.0], [3.0]], dtype=np.float32)
    monkeypatch.setattr(runners.OrtRunner, "__init__", _tiny_session_init)  # no session: the feeding is the point
    runner = runners.runner_for(root, entry)
    monkeypatch.setattr(runner, "_run", lambda inputs: seen.append(len(inputs["x"])) or inputs["x"] * 2)
    assert np.array_equal(runner.run({"x": small}), small * 2)
    assert seen == [1, 1, 1]


def _tiny_session_init(self, path, threads=None):
    self.path = Path(path)
    self.input_names = ["x"]
    self.fixed_batch = None
    self.runtime = "test"
