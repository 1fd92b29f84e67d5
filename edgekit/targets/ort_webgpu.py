"""The WebGPU form of an INT8 QDQ graph for onnxruntime-web: the same int8 weights, with the DequantizeLinear
forms that onnxruntime-web's WebGPU execution provider computes wrongly (and silently) rewritten into forms it
computes right.

Measured on onnxruntime-web 1.30.0 in Chromium 150's SwiftShader adapter, one op per graph against numpy
(benchmarks/webgpu_int8_bisect.py, results in benchmarks/results/webgpu_int8_bisect.md):

- DequantizeLinear of int8 with a per-channel scale (axis 0 or 1, zero points or not): right (rel-err 3e-8);
- of int8 with a per-tensor scale (scalar, or one channel): wrong (rel-err 1.3-1.4, unrelated numbers);
- of uint8, per-tensor or per-channel, constant or an activation: wrong (rel-err 4e7);
- QuantizeLinear to uint8, Cast int8 -> float, and Div/Round/Add/Clip/Sub/Mul: right.

A quantize_static QDQ graph (per-channel int8 weights, uint8 per-tensor activations) therefore breaks at every
activation DequantizeLinear. The rewrite, exact in value:

- an activation ``DequantizeLinear(QuantizeLinear(x, s, z), s, z)`` becomes
  ``(Clip(Round(x / s) + z, lo, hi) - z) * s`` in float (the QuantizeLinear goes when nothing else reads it);
- a constant uint8 weight becomes int8 (``q - 128`` and ``z - 128``: the same values);
- a constant per-tensor weight gets its scale and zero point repeated along an axis of length > 1, which is the
  per-channel form; a constant with no such axis (a scalar) is stored dequantized (a few floats).
The int8 weight bytes stay as they are, so the WebGPU graph costs what the INT8 graph costs.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

QDQ_DOMAINS = ("", "ai.onnx")


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def rewrite_qdq_for_webgpu(model, base_dir: Path | None = None):
    """A new ModelProto with the rewrite above; returns (model, {what: count}). A graph loaded without its
    external data (``base_dir``: where that data lies) keeps naming the same weight files for the weights the
    rewrite leaves alone, so the two graphs share them."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())  # the caller's graph is not changed
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers = Counter(i for n in graph.node for i in n.input)
    consumers.update(o.name for o in graph.output)
    counts: Counter = Counter()
    new_inits: list = []
    replace: dict[int, list] = {}  # node index -> nodes standing in its place
    drop: set[int] = set()
    index = {id(n): k for k, n in enumerate(graph.node)}

    def const(name, value):
        new_inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def array(name):
        return numpy_helper.to_array(inits[name], str(base_dir) if base_dir else "")

    for k, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear" or node.domain not in QDQ_DOMAINS:
            continue
        x, s = node.input[0], node.input[1]
        z = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if s not in inits or (z and z not in inits):
            continue
        scale = array(s).astype(np.float32)
        # no zero point: 0 of the quantized type (uint8 for an activation, as QuantizeLinear's default)
        zero = array(z) if z else np.zeros((), array(x).dtype if x in inits else np.uint8)
        tag = node.output[0]
        if x in inits:  # a constant weight (or bias)
            kind = inits[x].data_type
            if kind == TensorProto.INT32 or (kind == TensorProto.INT8 and scale.size > 1):
                continue  # int32 biases and per-channel int8: right on WebGPU as they are
            q = array(x)
            same_q = True
            if q.dtype == np.uint8:
                same_q = False
                q = (q.astype(np.int16) - 128).astype(np.int8)
                zero = (zero.astype(np.int16) - 128).astype(np.int8)
                counts["uint8 weights to int8"] += 1
            axis = _attr(node, "axis", 1)
            if scale.size == 1:
                long_axes = [a for a in range(q.ndim) if q.shape[a] > 1]
                if not long_axes:  # a scalar: store it dequantized
                    value = ((q.astype(np.float32) - zero.astype(np.float32)) * scale).astype(np.float32)
                    replace[k] = [helper.make_node("Identity", [const(f"{tag}__webgpu_float", value)], list(node.output),
                                                   name=f"{node.name}__webgpu")]
                    counts["scalar weights stored in float"] += 1
                    continue
                axis = long_axes[0]
                scale = np.full(q.shape[axis], scale.reshape(()), np.float32)
                zero = np.full(q.shape[axis], zero.reshape(()), np.int8)
                counts["per-tensor weights as per-channel"] += 1
            inputs = [x if same_q else const(f"{tag}__webgpu_q", q), const(f"{tag}__webgpu_s", scale), const(f"{tag}__webgpu_z", zero)]
            replace[k] = [helper.make_node("DequantizeLinear", inputs, list(node.output), name=f"{node.name}__webgpu",
                                           axis=axis)]
            continue
        q_node = producers.get(x)
        if q_node is None or q_node.op_type != "QuantizeLinear" or scale.size != 1:
            continue
        # an activation: the QuantizeLinear -> DequantizeLinear pair in float, with the pair's own rounding/clip
        info = np.iinfo(zero.dtype)
        zf = float(zero.reshape(()))
        src = q_node.input[0]
        names = [f"{tag}__webgpu_{p}" for p in ("div", "round", "shift", "clip", "center")]
        s_name = const(f"{tag}__webgpu_scale", np.float32(scale.reshape(())))
        z_name = const(f"{tag}__webgpu_zero", np.float32(zf))
        lo, hi = const(f"{tag}__webgpu_lo", np.float32(info.min)), const(f"{tag}__webgpu_hi", np.float32(info.max))
        replace[k] = [
            helper.make_node("Div", [src, s_name], [names[0]], name=names[0]),
            helper.make_node("Round", [names[0]], [names[1]], name=names[1]),
            helper.make_node("Add", [names[1], z_name], [names[2]], name=names[2]),
            helper.make_node("Clip", [names[2], lo, hi], [names[3]], name=names[3]),
            helper.make_node("Sub", [names[3], z_name], [names[4]], name=names[4]),
            helper.make_node("Mul", [names[4], s_name], list(node.output), name=f"{tag}__webgpu_mul"),
        ]
        counts["activation quantize-dequantize pairs in float"] += 1
        consumers[x] -= 1
        if consumers[x] == 0:
            drop.add(index[id(q_node)])
    nodes = []
    for k, node in enumerate(graph.node):
        if k in drop:
            continue
        nodes.extend(replace.get(k, [node]))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_inits)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    left = Counter(n.op_type for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    return model, {**dict(counts), **{f"{op} left": c for op, c in left.items()}}


def write_webgpu_graph(src: Path, dst: Path) -> dict:
    """``rewrite_qdq_for_webgpu`` of the graph at ``src``, written to ``dst``; returns what was rewritten."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    out, counts = rewrite_qdq_for_webgpu(model, Path(src).parent)
    onnx.save_model(out, str(dst))  # weights in external files stay there, named by the same locations
    onnx.checker.check_model(str(dst))  # by path: external weights are found beside it
    return counts


def needs_webgpu_graph(path: Path) -> bool:
    """Whether the graph holds a DequantizeLinear (a QDQ graph): fp32/fp16 graphs run on WebGPU as they are."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type == "DequantizeLinear" for n in graph.node)


IMAGE_SEEDS = (0, 1)  # images per width for the wasm-form vs WebGPU-form comparison (the e2e test draws seed 0)
PIXEL_TOLERANCE_255 = 8  # the page's WebGPU image against its wasm image, where both forms compute the same


def with_provider(manifest: dict, ep: str) -> dict:
    """A copy of ``manifest`` whose component entries name their ``ep`` graph (where they carry one)."""
    import copy

    out = copy.deepcopy(manifest)
    for comp in out["components"].values():
        for entry in (comp["widths"].values() if "widths" in comp else [comp]):
            own = entry.get("providers", {}).get(ep)
            if own:
                entry.update({k: v for k, v in own.items() if k in ("file", "files", "precision", "external_data")})
    return out


def record_image_difference(bundle_dir: Path, manifest: dict, prompt: str) -> dict:
    """Draw ``prompt`` at the fewest steps for IMAGE_SEEDS with the entries' own graphs and with their WebGPU
    forms, both in onnxruntime (CPU), per UNet width; record in each UNet entry's ``providers.webgpu`` the
    largest pixel difference (0..255) and the tolerance the page's WebGPU image is held to against its wasm
    image: PIXEL_TOLERANCE_255 where the two forms draw within it, else that measured difference + 2 (an INT8
    graph's integer kernels on wasm and its float form on WebGPU round differently; neither is the reference).
    Returns the manifest."""
    from edgekit.bundle import read_manifest
    from edgekit.runtime.sampler import BundleSampler

    from edgekit.components import by_role

    unets = manifest["components"][by_role("denoise").name]["widths"]
    if not any("webgpu" in e.get("providers", {}) for e in unets.values()):
        return manifest
    on_disk = read_manifest(bundle_dir)
    steps = min(int(s) for s in manifest["sampling"]["schedules"])
    own = BundleSampler(bundle_dir, on_disk, threads=1)
    gpu = BundleSampler(bundle_dir, with_provider(on_disk, "webgpu"), threads=1)
    for key, entry in unets.items():
        if "webgpu" not in entry.get("providers", {}):
            continue
        worst, means = 0.0, []
        for seed in IMAGE_SEEDS:
            a, _ = own.generate([prompt], [seed], steps, float(key))
            b, _ = gpu.generate([prompt], [seed], steps, float(key))
            diff = np.abs(np.round(np.clip(a, 0, 1) * 255) - np.round(np.clip(b, 0, 1) * 255))
            worst, means = max(worst, float(diff.max())), means + [float(diff.mean())]
        entry["providers"]["webgpu"]["image_vs_own_graph"] = {
            "runtime": "onnxruntime (python, CPU), both graphs", "prompt": prompt, "seeds": list(IMAGE_SEEDS),
            "steps": steps, "max_diff_255": worst, "mean_diff_255": round(float(np.mean(means)), 3),
            "page_tolerance_255": PIXEL_TOLERANCE_255 if worst <= PIXEL_TOLERANCE_255 else worst + 2}
    return manifest
