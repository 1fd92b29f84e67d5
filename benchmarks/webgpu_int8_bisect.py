"""Which op breaks INT8 QDQ graphs on onnxruntime-web's WebGPU execution provider, and whether the rewrite in
edgekit.targets.ort_webgpu makes them right. Runs in headless Debian Chromium on its SwiftShader WebGPU adapter
(edgekit.runtime.browser), the onnxruntime-web version of package-lock.json.

1. One-op graphs against numpy: DequantizeLinear of int8 / uint8 / int32, per-tensor and per-channel, constant
   and from a graph input; QuantizeLinear; the float form of a QuantizeLinear -> DequantizeLinear pair.
2. The default model's INT8 ort-web bundle (edgekit export --precision int8): each component's stored check on
   wasm and WebGPU, its plain QDQ graph and its rewritten WebGPU form.

    .venv/bin/python benchmarks/webgpu_int8_bisect.py [--bundle INT8_BUNDLE] [--out DIR]

Without --bundle one is made (calibrate 4 images, export INT8 at widths 0.5 and 1.0).
-> benchmarks/results/webgpu_int8_bisect.{json,md}
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _graphs():
    """(name, what, model, input array, expected output) for every one-op case."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)

    def model(nodes, inputs, inits, shape):
        g = h.make_graph(nodes, "case", inputs, [h.make_tensor_value_info("y", T.FLOAT, shape)], inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    zero_in = np.zeros(1, np.float32)
    x1 = h.make_tensor_value_info("x", T.FLOAT, [1])

    def dq_const(q, scale, zp, axis):
        attrs = {} if axis is None else {"axis": axis}
        nodes = [h.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], **attrs), h.make_node("Add", ["dq", "x"], ["y"])]
        s = scale if axis is None else scale.reshape([-1 if i == axis else 1 for i in range(q.ndim)])
        z = zp if axis is None else zp.reshape(s.shape)
        ref = (q.astype(np.float64) - z) * s
        return model(nodes, [x1], [nh.from_array(q, "q"), nh.from_array(scale, "s"), nh.from_array(zp, "z")], list(q.shape)), zero_in, ref

    q8 = rng.integers(-128, 128, (64, 128)).astype(np.int8)
    u8 = rng.integers(0, 256, (64, 128)).astype(np.uint8)
    i32 = rng.integers(-5000, 5000, (128,)).astype(np.int32)
    ch128 = rng.uniform(.01, .1, 128).astype(np.float32)
    ch64 = rng.uniform(.01, .1, 64).astype(np.float32)
    cases = [
        ("dq_int8_per_channel_axis1", "DequantizeLinear int8 weight, per-channel (axis 1)", *dq_const(q8, ch128, np.zeros(128, np.int8), 1)),
        ("dq_int8_per_channel_axis0_zp", "DequantizeLinear int8 weight, per-channel (axis 0), zero points",
         *dq_const(q8, ch64, rng.integers(-20, 20, 64).astype(np.int8), 0)),
        ("dq_int8_per_tensor", "DequantizeLinear int8 weight, per-tensor", *dq_const(q8, np.float32(0.05), np.int8(0), None)),
        ("dq_int8_one_channel", "DequantizeLinear int8 weight, axis 0 of length 1",
         *dq_const(q8[:1], np.float32([0.05]), np.int8([0]), 0)),
        ("dq_uint8_per_tensor", "DequantizeLinear uint8 weight, per-tensor", *dq_const(u8, np.float32(0.05), np.uint8(128), None)),
        ("dq_uint8_per_channel", "DequantizeLinear uint8 weight, per-channel (axis 1)",
         *dq_const(u8, ch128, np.full(128, 128, np.uint8), 1)),
        ("dq_int32_per_channel", "DequantizeLinear int32 bias, per-channel", *dq_const(i32, ch128 / 100, np.zeros(128, np.int32), 0)),
        ("dq_int32_per_tensor", "DequantizeLinear int32 bias, per-tensor", *dq_const(i32, np.float32(1e-3), np.int32(0), None)),
    ]
    act = rng.normal(0, 1, (4, 64)).astype(np.float32)
    xin = h.make_tensor_value_info("x", T.FLOAT, [4, 64])
    for dtype, zp, lo, hi in ((np.uint8, 120, 0, 255), (np.int8, 0, -128, 127)):
        inits = [nh.from_array(np.float32(0.02), "s"), nh.from_array(dtype(zp), "z")]
        q = np.clip(np.round(act / 0.02) + zp, lo, hi)
        name = np.dtype(dtype).name
        cases.append((f"qdq_{name}_activation", f"QuantizeLinear -> DequantizeLinear, {name} activation, per-tensor",
                      model([h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                             h.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], [xin], inits, [4, 64]), act, (q - zp) * 0.02))
    uin = rng.integers(0, 256, (4, 64)).astype(np.uint8)
    cases.append(("dq_uint8_graph_input", "DequantizeLinear uint8 graph input, per-tensor",
                  model([h.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])], [h.make_tensor_value_info("x", T.UINT8, [4, 64])],
                        [nh.from_array(np.float32(0.02), "s"), nh.from_array(np.uint8(120), "z")], [4, 64]), uin, (uin - 120.0) * 0.02))
    cases.append(("q_uint8_then_cast", "QuantizeLinear uint8 activation, Cast to float",
                  model([h.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), h.make_node("Cast", ["q"], ["y"], to=T.FLOAT)], [xin],
                        [nh.from_array(np.float32(0.02), "s"), nh.from_array(np.uint8(120), "z")], [4, 64]),
                  act, np.clip(np.round(act / 0.02) + 120, 0, 255)))
    from edgekit.targets.ort_webgpu import rewrite_qdq_for_webgpu

    pair = next(c for c in cases if c[0] == "qdq_uint8_activation")
    cases.append(("qdq_uint8_activation_rewritten", "the uint8 pair above after rewrite_qdq_for_webgpu (float ops)",
                  rewrite_qdq_for_webgpu(pair[2])[0], act, pair[4]))
    return cases


def one_op_cases(work: Path) -> list[dict]:
    import onnx

    from edgekit.runtime.browser import run_graph_in_browser

    rows = []
    for name, what, model, x, ref in _graphs():
        onnx.save(model, work / f"{name}.onnx")
        (work / name).mkdir()
        x.tofile(work / name / "x.bin")
        request = {"inputs": {"x": {"file": f"{name}/x.bin", "dtype": x.dtype.name, "shape": list(x.shape)}}}
        (work / name / "request.json").write_text(json.dumps(request))
        answer = run_graph_in_browser(work, f"{name}.onnx", work / name / "request.json", work / name)
        row = {"case": name, "what": what, "adapter": answer["adapter"], "chromium": answer["chromium"]}
        for ep, got in answer["providers"].items():
            if "error" in got:
                row[ep] = {"error": got["error"]}
                continue
            y = np.fromfile(work / name / ep / "y.bin", np.float32)
            row[ep] = {"rel_err": float(np.linalg.norm(y - ref.ravel()) / np.linalg.norm(ref))}
        rows.append(row)
        print(name, {ep: row[ep] for ep in ("wasm", "webgpu")}, flush=True)
    return rows


def bundle_cases(bundle: Path, work: Path) -> list[dict]:
    """Each component's stored check on both EPs: the plain QDQ graph, then its WebGPU form."""
    import shutil

    from edgekit.runtime.browser import check_bundle_in_browser

    plain = work / "plain"
    shutil.copytree(bundle, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    for comp in manifest["components"].values():
        for entry in (comp["widths"].values() if "widths" in comp else [comp]):
            entry.pop("providers", None)
    (plain / "manifest.json").write_text(json.dumps(manifest))  # the driver reads no integrity: a study copy
    rows = []
    for form, where in (("INT8 QDQ graph as exported", plain), ("its WebGPU form (ort_webgpu rewrite)", bundle)):
        started = time.perf_counter()
        answer = check_bundle_in_browser(where)
        seconds = time.perf_counter() - started
        for r in answer["results"]:
            rows.append({"form": form, "component": r["component"], "provider": r["provider"], "file": r["file"],
                         "rel_err": r.get("rel_err"), "error": r.get("error"), "passed": r["passed"],
                         "tolerance": r["tolerance"], "run_ms": r.get("run_ms")})
        rows.append({"form": form, "check_wall_s": round(seconds, 1), "adapter": answer["adapter"], "chromium": answer["chromium"]})
    return rows


EDGEKIT = [sys.executable, "-m", "edgekit.cli"]


def _make_bundle(work: Path) -> Path:
    from edgekit.zoo.tiny_digits import SLIM_DIR

    subprocess.run([*EDGEKIT, "calibrate", "--model", str(SLIM_DIR), "--samples", "4", "--steps", "4", "--out",
                    str(work / "calib")], check=True)
    subprocess.run([*EDGEKIT, "export", "--model", str(SLIM_DIR), "--target", "ort-web", "--precision", "int8", "--calib",
                    str(work / "calib"), "--widths", "0.5,1.0", "--out", str(work / "int8")], check=True)
    return work / "int8"


def bytes_per_component(int8: Path, work: Path) -> list[dict]:
    """Bytes the page loads per component: the FP32 graph (exported here from the same model), the INT8 graph
    (wasm) and its WebGPU form."""
    from edgekit.zoo.tiny_digits import SLIM_DIR

    manifest = json.loads((int8 / "manifest.json").read_text())
    widths = [str(float(w)) for w in manifest["widths"]]
    subprocess.run([*EDGEKIT, "export", "--model", str(SLIM_DIR), "--target", "ort-web", "--precision", "fp32", "--widths",
                    ",".join(widths), "--out", str(work / "fp32")], check=True)
    fp32 = json.loads((work / "fp32" / "manifest.json").read_text())

    def entries(m):
        out = {"text_encoder": m["components"]["text_encoder"], "vae_decoder": m["components"]["vae_decoder"]}
        out.update({f"unet@{w}": e for w, e in m["components"]["unet"]["widths"].items()})
        return out

    rows = []
    for label, entry in entries(manifest).items():
        gpu = entry.get("providers", {}).get("webgpu", {})
        rows.append({"component": label, "fp32_bytes": entries(fp32)[label]["bytes"], "int8_bytes": entry["bytes"],
                     "webgpu_bytes": gpu.get("bytes", entry["bytes"])})
    return rows


def write_md(result: dict, path: Path) -> None:
    lines = ["# INT8 QDQ on onnxruntime-web's WebGPU EP: which op, and the rewrite", "",
             f"onnxruntime-web {result['onnxruntime_web']}, Chromium {result['chromium']}, WebGPU adapter "
             f"`{result['adapter']}` (headless, SwiftShader). Made by `benchmarks/webgpu_int8_bisect.py`.", "",
             "## One op per graph, against numpy (rel-err; ~1e-8 is right, >= 1 is unrelated numbers)", "",
             "| case | wasm | WebGPU |", "|---|---|---|"]
    fmt = lambda r: r.get("error") or f"{r['rel_err']:.2e}"  # noqa: E731
    for row in result["one_op"]:
        lines.append(f"| {row['what']} | {fmt(row['wasm'])} | {fmt(row['webgpu'])} |")
    lines += ["", "## The INT8 bundle's components on their stored verification inputs (rel-err against torch)", "",
              "| form | component | wasm | WebGPU |", "|---|---|---|---|"]
    table: dict = {}
    for row in result["bundle"]:
        if "component" in row:
            table.setdefault((row["form"], row["component"]), {})[row["provider"]] = row
    for (form, comp), eps in table.items():
        cell = lambda r: r.get("error") or f"{r['rel_err']:.3g}" + ("" if r["passed"] else " (fails)")  # noqa: E731
        lines.append(f"| {form} | {comp} | {cell(eps['wasm'])} | {cell(eps['webgpu'])} |")
    lines += ["", "## Bytes the page loads per component", "",
              "| component | FP32 graph | INT8 graph (wasm) | WebGPU form | WebGPU / FP32 |", "|---|---|---|---|---|"]
    for r in result["bytes"]:
        lines.append(f"| {r['component']} | {r['fp32_bytes']:,} | {r['int8_bytes']:,} | {r['webgpu_bytes']:,} | "
                     f"{r['webgpu_bytes'] / r['fp32_bytes']:.2f} |")
    total = {k: sum(r[k] for r in result["bytes"]) for k in ("fp32_bytes", "int8_bytes", "webgpu_bytes")}
    lines.append(f"| all | {total['fp32_bytes']:,} | {total['int8_bytes']:,} | {total['webgpu_bytes']:,} | "
                 f"{total['webgpu_bytes'] / total['fp32_bytes']:.2f} |")
    for row in result["bundle"]:
        if "check_wall_s" in row:
            lines.append(f"\n{row['form']}: the whole browser check took {row['check_wall_s']} s (both EPs, every component).")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="an INT8 ort-web bundle (default: made here)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    from edgekit.resources import find_ort_web

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "ops").mkdir()
        one_op = one_op_cases(work / "ops")
        bundle = args.bundle or _make_bundle(work)
        rows = bundle_cases(bundle, work)
        sizes = bytes_per_component(bundle, work)
    result = {"onnxruntime_web": json.loads((find_ort_web() / "package.json").read_text())["version"],
              "chromium": one_op[0]["chromium"], "adapter": one_op[0]["adapter"], "one_op": one_op, "bundle": rows, "bytes": sizes}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "webgpu_int8_bisect.json").write_text(json.dumps(result, indent=1) + "\n")
    write_md(result, args.out / "webgpu_int8_bisect.md")
    print((args.out / "webgpu_int8_bisect.md").read_text())


if __name__ == "__main__":
    main()
