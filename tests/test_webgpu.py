"""The WebGPU form of INT8 QDQ graphs (edgekit.targets.ort_webgpu) and what the manifest says about it, checked
without a browser: the rewrite is exact in onnxruntime (CPU) and leaves none of the DequantizeLinear forms that
onnxruntime-web's WebGPU EP computes wrongly; an INT8 ort-web export names the WebGPU file per component with its
checks; check_manifest refuses a malformed `providers`; `verify --browser` without Chromium is one line, exit 2.
The browser itself: tests/test_webgpu_browser.py (slow)."""
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from edgekit.targets.ort_webgpu import rewrite_qdq_for_webgpu

RNG = np.random.default_rng(0)


def _model(nodes, inputs, inits, out_shape):
    graph = h.make_graph(nodes, "g", inputs, [h.make_tensor_value_info("y", T.FLOAT, out_shape)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model, feed):
    """The graph's meaning: no fusion into integer kernels (those round differently, on purpose of speed)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def _broken_forms(model):
    """DequantizeLinear nodes in a form measured wrong on WebGPU: uint8 input, or a one-value scale on int8."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    bad = []
    for n in model.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        x = n.input[0]
        kind = inits[x].data_type if x in inits else T.UINT8 if producers.get(x) is not None else None
        scale = nh.to_array(inits[n.input[1]])
        if kind == T.UINT8 or (kind == T.INT8 and scale.size == 1):
            bad.append(n.name)
    return bad


def test_rewrite_is_exact_and_leaves_no_broken_dequantize():
    x = RNG.normal(0, 1, (3, 16)).astype(np.float32)
    w_u8 = RNG.integers(0, 256, (16, 8)).astype(np.uint8)
    w_s8 = RNG.integers(-128, 128, (8, 4)).astype(np.int8)
    inits = [
        nh.from_array(np.float32(0.02), "xs"), nh.from_array(np.uint8(118), "xz"),
        nh.from_array(w_u8, "w1"), nh.from_array(RNG.uniform(.01, .05, 8).astype(np.float32), "w1s"),
        nh.from_array(np.full(8, 128, np.uint8), "w1z"),
        nh.from_array(w_s8, "w2"), nh.from_array(np.float32(0.03), "w2s"), nh.from_array(np.int8(2), "w2z"),
        nh.from_array(np.int8([5]).reshape(()), "k"), nh.from_array(np.float32(0.5), "ks"),
    ]
    nodes = [
        h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"),
        h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_act"),
        h.make_node("DequantizeLinear", ["w1", "w1s", "w1z"], ["w1d"], name="dq_u8_channel", axis=1),
        h.make_node("MatMul", ["xd", "w1d"], ["a"], name="mm1"),
        h.make_node("DequantizeLinear", ["w2", "w2s", "w2z"], ["w2d"], name="dq_s8_tensor"),
        h.make_node("MatMul", ["a", "w2d"], ["b"], name="mm2"),
        h.make_node("DequantizeLinear", ["k", "ks"], ["kd"], name="dq_scalar"),
        h.make_node("Mul", ["b", "kd"], ["y"], name="scale"),
    ]
    model = _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [3, 16])], inits, [3, 4])
    assert sorted(_broken_forms(model)) == ["dq_act", "dq_s8_tensor", "dq_scalar", "dq_u8_channel"]
    rewritten, counts = rewrite_qdq_for_webgpu(model)
    onnx.checker.check_model(rewritten)
    assert _broken_forms(rewritten) == []
    assert counts == {"activation quantize-dequantize pairs in float": 1, "uint8 weights to int8": 1,
                      "per-tensor weights as per-channel": 1, "scalar weights stored in float": 1,
                      "DequantizeLinear left": 2}
    assert len(model.graph.node) == 8  # the caller's graph is left as it was
    np.testing.assert_allclose(_run(rewritten, {"x": x}), _run(model, {"x": x}), rtol=1e-5, atol=1e-6)
    # the quantization grid is kept: values that round at .5 go the same way (half to even in both forms)
    edges = (np.arange(-40, 40, dtype=np.float32) + 0.5) * np.float32(0.02)
    pair = _model(nodes[:2] + [h.make_node("Identity", ["xd"], ["y"])], [h.make_tensor_value_info("x", T.FLOAT, [80])],
                  inits[:2], [80])
    assert np.array_equal(_run(rewrite_qdq_for_webgpu(pair)[0], {"x": edges}), _run(pair, {"x": edges}))


def test_float_graph_needs_no_webgpu_form(tmp_path):
    from edgekit.targets.ort_webgpu import needs_webgpu_graph

    model = _model([h.make_node("Relu", ["x"], ["y"])], [h.make_tensor_value_info("x", T.FLOAT, [2])], [], [2])
    onnx.save(model, tmp_path / "m.onnx")
    assert not needs_webgpu_graph(tmp_path / "m.onnx")


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory, default_model, small_calib):
    """The default model exported INT8 for ort-web at width 1.0 (no Node, no browser: the browser is the slow test)."""
    from edgekit.cli import main

    root = tmp_path_factory.mktemp("webgpu_int8")
    profile = root / "profile.yaml"
    profile.write_text((__import__("policy_bundles").REPO / "targets" / "web-ort.yaml").read_text()
                       .replace("verify_in_node: true", "verify_in_node: false"))
    out = root / "bundle"
    assert main(["export", "--model", str(default_model), "--target", "ort-web", "--precision", "int8", "--calib",
                 str(small_calib), "--profile", str(profile), "--out", str(out)]) == 0
    return out


def test_int8_export_names_a_webgpu_form_per_component(int8_bundle, tmp_path_factory, default_model):
    from policy_bundles import exported

    m = json.loads((int8_bundle / "manifest.json").read_text())
    fp32 = json.loads((exported(tmp_path_factory, default_model) / "manifest.json").read_text())
    entries = {"text_encoder": m["components"]["text_encoder"], "vae_decoder": m["components"]["vae_decoder"],
               "unet": m["components"]["unet"]["widths"]["1.00"]}
    fp32_entries = {"text_encoder": fp32["components"]["text_encoder"], "vae_decoder": fp32["components"]["vae_decoder"],
                    "unet": fp32["components"]["unet"]["widths"]["1.00"]}
    for name, entry in entries.items():
        gpu = entry["providers"]["webgpu"]
        assert gpu["file"] == entry["file"].replace("model.onnx", "model.webgpu.onnx") and gpu["precision"] == "int8"
        assert gpu["file"] in m["files"] and gpu["file"] not in entry["files"]  # the page loads one or the other
        assert gpu["bytes"] == m["files"][gpu["file"]]["bytes"]
        # the INT8 graph itself, rewritten: its int8 weights as they are, a few constants per rewritten node
        assert gpu["bytes"] <= 1.1 * entry["bytes"], (name, gpu["bytes"], entry["bytes"])
        graph = onnx.load(str(int8_bundle / gpu["file"]))
        assert _broken_forms(graph) == [], name
        record = m["verification"][name] if name != "unet" else m["verification"]["unet"]["widths"]["1.00"]
        runtimes = [c["runtime"] for c in record["checks"]]
        assert any(r.endswith("model.webgpu.onnx") for r in runtimes), runtimes
        assert all(c["rel_err"] <= record["tolerance"] for c in record["checks"])
        assert "providers" not in record  # no browser check ran: nothing recorded, so the page keeps wasm
    # what the page loads on WebGPU: at most half the FP32 bundle's graphs (the text encoder's float embedding
    # table keeps that one component above half on its own)
    gpu_total = sum(e["providers"]["webgpu"]["bytes"] for e in entries.values())
    assert gpu_total <= 0.5 * sum(e["bytes"] for e in fp32_entries.values())
    image = entries["unet"]["providers"]["webgpu"]["image_vs_own_graph"]
    assert image["seeds"] == [0, 1] and 0 <= image["max_diff_255"] <= 255
    assert image["page_tolerance_255"] >= 8


def test_check_manifest_refuses_malformed_providers(int8_bundle):
    from edgekit.bundle import check_manifest
    from edgekit.errors import InputError

    m = json.loads((int8_bundle / "manifest.json").read_text())
    for bad, said in (({"cuda": {}}, "keyed by"),
                      ({"webgpu": {"file": "text_encoder/model.webgpu.onnx", "files": [], "precision": "int8"}}, "holding file"),
                      ({"webgpu": {"file": "x.onnx", "files": ["x.onnx"], "precision": "int8"}}, "files list lacks")):
        copy = json.loads(json.dumps(m))
        copy["components"]["text_encoder"]["providers"] = bad
        with pytest.raises(InputError, match=said):
            check_manifest(copy, "manifest.json")


def test_verify_browser_without_chromium_names_the_package(int8_bundle, run_cli, monkeypatch, tmp_path):
    import edgekit.runtime.browser as browser

    monkeypatch.setattr(browser, "find_chromium", lambda: None)
    copy = tmp_path / "b"
    shutil.copytree(int8_bundle, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    code, out, err = run_cli("verify", copy, "--browser")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--browser" in lines[0] and "'chromium'" in lines[0], err
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


def test_webgpu_form_shares_external_weight_files(tmp_path):
    """A graph whose weights lie in external files (above the profile's file cap): the WebGPU form names the same
    files for every weight it leaves alone, so the two graphs share them, and it computes what the original does."""
    from edgekit.targets.ort_webgpu import write_webgpu_graph

    w = RNG.integers(-128, 128, (64, 256)).astype(np.int8)
    inits = [nh.from_array(np.float32(0.02), "xs"), nh.from_array(np.uint8(118), "xz"), nh.from_array(w, "w"),
             nh.from_array(RNG.uniform(.01, .05, 256).astype(np.float32), "ws"), nh.from_array(np.zeros(256, np.int8), "wz")]
    nodes = [h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]), h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             h.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1), h.make_node("MatMul", ["xd", "wd"], ["y"])]
    model = _model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [2, 64])], inits, [2, 256])
    onnx.save_model(model, tmp_path / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    weights = (tmp_path / "model.onnx.data").read_bytes()
    write_webgpu_graph(tmp_path / "model.onnx", tmp_path / "model.webgpu.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data", "model.webgpu.onnx"]
    assert (tmp_path / "model.onnx.data").read_bytes() == weights
    def external(path):
        graph = onnx.load(str(path), load_external_data=False).graph
        return {t.name: {e.key: e.value for e in t.external_data} for t in graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL}

    assert "w" in external(tmp_path / "model.onnx")
    assert external(tmp_path / "model.webgpu.onnx") == external(tmp_path / "model.onnx")  # same file, same offsets
    assert (tmp_path / "model.webgpu.onnx").stat().st_size < 4096  # the graph alone, the weights stay shared
    x = RNG.normal(0, 1, (2, 64)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    run = lambda p: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(tmp_path / "model.webgpu.onnx"), run(tmp_path / "model.onnx"), rtol=1e-5, atol=1e-5)


def test_package_checks_the_browser_bundle_in_chromium_unless_told_not_to(tmp_path):
    """The main job's ort-web bundle carries per-EP browser checks (the page then uses WebGPU where they passed);
    the other targets' profiles are left alone; `browser_check: false` (--no-browser-check) turns it off."""
    from edgekit.package import PackageConfig, plan

    on = plan("edgekit/zoo/tiny_digits/slim", PackageConfig.from_dict({"targets": ["ort-web", "tflite", "onnx"]}),
              tmp_path / "a")
    assert {n: p.verify_in_browser for n, p in on.profiles.items()} == {"ort-web": True, "tflite": False, "onnx": False}
    off = PackageConfig.from_dict({"targets": ["ort-web"], "browser_check": False})
    assert PackageConfig.from_dict(off.to_dict()) == off
    assert plan("edgekit/zoo/tiny_digits/slim", off, tmp_path / "b").profiles["ort-web"].verify_in_browser is False
