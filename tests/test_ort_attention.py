"""The fused-attention rewrite for the onnxruntime targets (edgekit.targets.ort_attention): every attention
block of edgekit's UNet export becomes one MultiHeadAttention node computing the same numbers in onnxruntime
and in onnxruntime-web; what does not match the pattern (a masked attention, a score matrix read twice, a
scale that is neither constant nor the default) is left alone; external weights are not touched."""
import collections
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.onnx_export import export_onnx
from edgekit.runtime.runners import node_available
from edgekit.targets.ort_attention import fuse_attention, fuse_attention_file


def _ops(path_or_model) -> collections.Counter:
    model = onnx.load(str(path_or_model), load_external_data=False) if not isinstance(path_or_model, onnx.ModelProto) \
        else path_or_model
    return collections.Counter(n.op_type for n in model.graph.node)


def _attention_modules(module) -> int:
    from diffusers.models.attention_processor import Attention

    return sum(isinstance(m, Attention) for m in module.modules())


def _run(path, feeds):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _unet_feeds(pipe, batch=2, seed=0):
    from edgekit.components import example_inputs

    return example_inputs(pipe, "unet", batch=batch, seed=seed)


@pytest.fixture(scope="module")
def unet_graphs(default_pipe, tmp_path_factory):
    """(plain export, fused copy, number fused) of the embedded model's UNet."""
    root = tmp_path_factory.mktemp("attn")
    plain = root / "plain" / "model.onnx"
    export_onnx(default_pipe, "unet", plain)
    fused = root / "fused" / "model.onnx"
    fused.parent.mkdir()
    shutil.copyfile(plain, fused)
    return plain, fused, fuse_attention_file(fused)


def test_every_unet_attention_block_becomes_one_node_with_the_same_numbers(unet_graphs, default_pipe):
    plain, fused, count = unet_graphs
    before, after = _ops(plain), _ops(fused)
    blocks = _attention_modules(default_pipe.unet)
    assert count == blocks == before["Softmax"] and blocks > 0
    assert after["MultiHeadAttention"] == blocks and after["Softmax"] == 0
    assert after["MatMul"] == before["MatMul"] - 2 * blocks  # the weight MatMuls (q, k, v, out, ff) all stay
    assert after["Conv"] == before["Conv"]
    for seed in (0, 1):
        feeds = _unet_feeds(default_pipe, seed=seed)
        assert _rel(_run(fused, feeds), _run(plain, feeds)) < 1e-5
    assert fuse_attention_file(fused) == 0  # a second pass finds nothing left


@pytest.mark.skipif(node_available() is not None, reason="onnxruntime-web under Node is not installed here")
def test_fused_graph_runs_in_onnxruntime_web(unet_graphs, default_pipe):
    from edgekit.runtime.runners import NodeOrtWebRunner

    plain, fused, _ = unet_graphs
    feeds = _unet_feeds(default_pipe, seed=3)
    runner = NodeOrtWebRunner(fused, list(feeds))
    assert _rel(runner.run(feeds), _run(plain, feeds)) < 1e-5


def test_masked_text_encoder_attention_is_left_alone(default_pipe, tmp_path):
    path = tmp_path / "te.onnx"
    export_onnx(default_pipe, "text_encoder", path)
    before = path.read_bytes()
    assert _ops(path)["Softmax"] > 0
    assert fuse_attention_file(path) == 0
    assert path.read_bytes() == before  # nothing matched: the file is not rewritten


def test_external_weights_stay_where_they_are(unet_graphs, default_pipe, tmp_path):
    plain, _, count = unet_graphs
    model = onnx.load(str(plain))
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=1024)
    data = (tmp_path / "model.onnx.data").read_bytes()
    assert fuse_attention_file(path) == count
    assert (tmp_path / "model.onnx.data").read_bytes() == data
    assert not list(tmp_path.glob("*.fusing"))
    feeds = _unet_feeds(default_pipe)
    assert _rel(_run(path, feeds), _run(plain, feeds)) < 1e-5


# Hand-built attention blocks, each one rule at a time.
B, S, L, H, D = 2, 6, 5, 2, 8


def _block(scale=None, second_reader=False, factor_input=False):
    """q (B,S,H*D), k/v (B,L,H*D) -> the exporter's attention pattern; ``scale`` a constant Mul on q and k
    (each by sqrt(scale)); ``second_reader`` a second consumer of the probabilities; ``factor_input`` the
    factor as a graph input (neither constant nor the default chain)."""
    inits = [numpy_helper.from_array(np.array([B, -1, H, D], np.int64), "split"),
             numpy_helper.from_array(np.array([B, -1, H * D], np.int64), "merge")]
    nodes = []
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("Reshape", [name, "split"], [name + "r"]),
                  helper.make_node("Transpose", [name + "r"], [name + "t"], perm=perm)]
    inputs = [helper.make_tensor_value_info("q", TensorProto.FLOAT, [B, S, H * D])] + \
             [helper.make_tensor_value_info(n, TensorProto.FLOAT, [B, L, H * D]) for n in "kv"]
    qs, ks = "qt", "kt"
    if scale is not None or factor_input:
        if factor_input:
            inputs.append(helper.make_tensor_value_info("f", TensorProto.FLOAT, []))
        else:
            inits.append(numpy_helper.from_array(np.array(np.sqrt(scale), np.float32), "f"))
        nodes += [helper.make_node("Mul", ["qt", "f"], ["qs"]), helper.make_node("Mul", ["kt", "f"], ["ks"])]
        qs, ks = "qs", "ks"
    nodes += [helper.make_node("MatMul", [qs, ks], ["scores"]),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vt"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "merge"], ["out"])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [B, S, H * D])]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, [B, H, S, L]))
    model = helper.make_model(helper.make_graph(nodes, "attn", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _feeds(factor_input=False):
    rng = np.random.default_rng(0)
    feeds = {"q": rng.standard_normal((B, S, H * D)).astype(np.float32),
             "k": rng.standard_normal((B, L, H * D)).astype(np.float32),
             "v": rng.standard_normal((B, L, H * D)).astype(np.float32)}
    if factor_input:
        feeds["f"] = np.array(0.5, np.float32)
    return feeds


@pytest.mark.parametrize("scale", [None, 0.125, 0.3])
def test_constant_scales_carry_over(scale, tmp_path):
    model = _block(scale)
    plain = tmp_path / "plain.onnx"
    onnx.save(model, str(plain))
    assert fuse_attention(model) == 1
    (node,) = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["num_heads"] == H
    assert attrs["scale"] == pytest.approx(1.0 if scale is None else scale, rel=1e-6)
    assert len(model.graph.node) == 1 and not model.graph.initializer  # the split constants went with the splits
    fused = tmp_path / "fused.onnx"
    onnx.save(model, str(fused))
    assert _rel(_run(fused, _feeds()), _run(plain, _feeds())) < 1e-6


def test_probabilities_read_twice_or_an_unknown_factor_stay(tmp_path):
    for model in (_block(0.125, second_reader=True), _block(factor_input=True)):
        before = model.SerializeToString()
        assert fuse_attention(model) == 0
        assert model.SerializeToString() == before
