"""The ort-web target: one ONNX graph per component for onnxruntime-web, in fp32, fp16 (float16
weights and compute, float32 inputs/outputs) or INT8 QDQ. INT8 has one route: the quantize stage's
ort-static method (``edgekit.quantize.quantize_component``), either run by that stage beforehand (its graphs
are shipped as they are) or run here on the export's representative rows.

Weights above the profile's file cap (a browser ArrayBuffer holds at most 2 GB) go to external-data
chunks, each below the cap; the page fetches them and passes them to
``InferenceSession.create(graph, {externalData: [{path, data}, ...]})``, which joins them by the
``location`` each tensor names. Every graph is checked against torch in onnxruntime (Python), and the
whole bundle once more in onnxruntime-web (wasm) under Node when the profile asks for it.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgekit.errors import InputError, VerificationError
from edgekit.profiles import TargetProfile
from edgekit.components import by_role
from edgekit.targets.base import ComponentJob, Target

MODEL_FILE = "model.onnx"
WEBGPU_FILE = "model.webgpu.onnx"
IMAGE_PROMPT = "a handwritten digit seven"  # the demo page's default prompt  # beside MODEL_FILE: the graph for onnxruntime-web's WebGPU EP, where it differs


def split_external_data(path: Path, cap_bytes: int) -> list[dict]:
    """Rewrite ``path`` so that its weights live in chunks ``model.onnx.data.N`` of at most ``cap_bytes``
    each (a tensor is never split). Returns [{file, bytes}] relative to the graph's folder."""
    import onnx
    from onnx.external_data_helper import set_external_data

    path = Path(path)
    model = onnx.load(str(path))  # loads any external data too
    old = set(path.parent.glob(path.name + ".data*"))
    chunks: list[int] = []
    for tensor in model.graph.initializer:
        if not tensor.HasField("raw_data") or len(tensor.raw_data) < 1024:
            continue
        size = len(tensor.raw_data)
        if size > cap_bytes:  # the profile's cap is honoured or refused, never exceeded silently
            raise InputError(f"{path}: weight tensor '{tensor.name}' holds {size / 2**20:.2f} MiB, over the profile's "
                             f"max_file_mb {cap_bytes / 2**20:g} (a tensor is never split across files); raise "
                             "max_file_mb")
        if not chunks or chunks[-1] + size > cap_bytes:
            chunks.append(0)
        chunks[-1] += size
        location = f"{path.name}.data.{len(chunks) - 1}"
        set_external_data(tensor, location=location)
    for f in old:
        f.unlink()
    onnx.save_model(model, str(path))
    return [{"file": f"{path.name}.data.{i}", "bytes": (path.parent / f"{path.name}.data.{i}").stat().st_size}
            for i in range(len(chunks))]


def to_float16(src: Path, dst: Path) -> None:
    """float16 weights and arithmetic with float32 graph inputs and outputs (the page feeds float32)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    # Resize takes its roi/scales as float32 only: it and the Constant nodes feeding it stay float32.
    producers = {out: node for node in model.graph.node for out in node.output}
    keep = [producers[i].name for node in model.graph.node if node.op_type == "Resize" for i in node.input[1:]
            if i in producers and producers[i].op_type == "Constant"]
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True,
                                    op_block_list=list(DEFAULT_OP_BLOCK_LIST) + ["Resize"], node_block_list=keep)
    size = sum(t.ByteSize() for t in half.graph.initializer)
    if size >= 2**31 - 2**20:
        onnx.save_model(half, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(half, str(dst))


class OrtWebTarget(Target):
    name = "ort-web"
    file_format = "onnx"
    precisions = ("fp32", "fp16", "int8")
    extra = "onnx"
    takes_quantized_onnx = True
    # a QDQ graph gets a WebGPU form beside it (edgekit.targets.ort_webgpu), and its image difference is recorded
    webgpu_forms: ClassVar[bool] = True
    browser_check = True

    def created_with(self) -> dict:
        import onnx
        import onnxruntime

        from edgekit.runtime.runners import _node_version, node_available

        out = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
        if node_available() is None:
            out["onnxruntime_web"] = _node_version()
        return out

    def write(self, job: ComponentJob, stage: Path, profile: TargetProfile) -> dict:
        from edgekit.components import component_spec
        from edgekit.onnx_export import export_onnx

        folder = job.output_dir(stage)
        path = folder / MODEL_FILE
        spec = component_spec(job.pipe, job.name)
        if job.precision == "fp32":
            export_onnx(job.pipe, job.name, path, opset=profile.opset, dynamic_batch=job.batch is None)
        elif job.precision == "int8":
            if job.prequantized is None:
                job.prequantized = self._quantize_int8(job, stage / ".raw" / job.rel_dir)
                source = {"from": "ort-static, run by the export"}
            else:
                # named inside the quantize stage's output: no host path travels with the bundle
                source = {"from": "quantize stage",
                          "graph": job.prequantized.relative_to(job.prequantized.parents[2]).as_posix()}
            _check_graph_inputs(job.prequantized, spec, job.label)
            for f in job.prequantized.parent.glob(job.prequantized.name + "*"):  # graph + any external data
                shutil.copyfile(f, folder / f.name.replace(job.prequantized.name, MODEL_FILE, 1))
            from edgekit.fsutil import sha256_file

            job.notes["quantization"] = {**source, **job.notes.get("quantization", {}),
                                         "sha256": sha256_file(job.prequantized)}
            shutil.rmtree(stage / ".raw", ignore_errors=True)
        else:
            raw_dir = stage / ".raw" / job.rel_dir
            raw = raw_dir / MODEL_FILE
            export_onnx(job.pipe, job.name, raw, opset=profile.opset, dynamic_batch=job.batch is None)
            to_float16(raw, path)
            shutil.rmtree(stage / ".raw")
        from edgekit.components import CACHE_COMPONENTS

        # the step-cache graphs are the UNet's network: fused where the UNet is
        if job.name in profile.fused_attention or (job.name in CACHE_COMPONENTS
                                                   and by_role("denoise").name in profile.fused_attention):
            from edgekit.targets.ort_attention import fuse_attention_file

            fused = fuse_attention_file(path)
            if fused:  # recorded in the manifest entry: the runtime must have onnxruntime's contrib ops
                job.notes["attention"] = {"op": "com.microsoft.MultiHeadAttention", "nodes": fused}
        files = sorted(p for p in folder.iterdir() if p.is_file())
        external = []
        cap = int(profile.max_file_mb * 2**20)
        if any(p.stat().st_size > cap for p in files):
            external = split_external_data(path, cap)
        elif len(files) > 1:
            external = [{"file": p.name, "bytes": p.stat().st_size} for p in files if p.name != MODEL_FILE]
        rel = f"{job.rel_dir}/{MODEL_FILE}"
        entry = {
            "format": self.file_format, "file": rel,
            "files": [rel] + [f"{job.rel_dir}/{c['file']}" for c in external],
            "precision": job.precision, "layout": "NCHW", "opset": profile.opset,
            "inputs": _specs(spec.inputs, job.batch), "outputs": _specs(spec.outputs, job.batch),
        }
        if external:
            entry["external_data"] = [{"file": f"{job.rel_dir}/{c['file']}", "bytes": c["bytes"]} for c in external]
            entry["join"] = ("onnxruntime-web: InferenceSession.create(model.onnx, {externalData: [{path: <file name>, "
                             "data: <fetched bytes>} per chunk]}); each tensor names its chunk")
        if self.webgpu_forms:
            self._add_webgpu_graph(job, folder, entry)
        return entry

    @staticmethod
    def _add_webgpu_graph(job: ComponentJob, folder: Path, entry: dict) -> None:
        """A QDQ graph's WebGPU form (edgekit.targets.ort_webgpu) beside it, named in ``entry["providers"]``; the
        page loads it on WebGPU only where the browser check passed it. Float graphs run there as they are."""
        from edgekit.targets.ort_webgpu import needs_webgpu_graph, write_webgpu_graph

        path = folder / MODEL_FILE
        if not needs_webgpu_graph(path):
            return
        counts = write_webgpu_graph(path, folder / WEBGPU_FILE)
        rel = f"{job.rel_dir}/{WEBGPU_FILE}"
        shared = entry["files"][1:]  # external weight chunks: both graphs name the same files
        gpu = {"file": rel, "files": [rel] + shared, "precision": job.precision,
               "bytes": (folder / WEBGPU_FILE).stat().st_size + sum((folder / Path(f).name).stat().st_size for f in shared),
               "rewrite": {"by": "edgekit.targets.ort_webgpu.rewrite_qdq_for_webgpu", **counts}}
        if "external_data" in entry:
            gpu["external_data"] = entry["external_data"]
        entry["providers"] = {"webgpu": gpu}

    def int8_route(self, job: ComponentJob, profile: TargetProfile) -> str | None:
        if job.precision == "int8":  # one route, ort-static QDQ: its graph from the quantize stage or made here
            return f"ort-static QDQ ({job.notes['quantization']['from']})"
        return super().int8_route(job, profile)

    def _quantize_int8(self, job: ComponentJob, work: Path) -> Path:
        """The quantize stage's own per-component route (``edgekit.quantize.quantize_component`` with the
        ort-static method and its default options: held-out rows, sensitivity ranking, float budget), run on the
        job's representative rows; returns the QDQ graph written under ``work``. The same function makes the
        graphs ``edgekit quantize`` / ``edgekit package`` hand to this target, so both ship the same INT8."""
        from edgekit.quantize import QuantizeOptions, get_quantizer, quantize_component

        quantizer = get_quantizer("ort-static")
        made, record = quantize_component(job.pipe, job.name, job.calibration, quantizer, QuantizeOptions(),
                                          work / "out", work / "tmp")
        report = made.report
        job.notes["quantization"] = {
            **{k: report[k] for k in ("format", "calibrate_method", "activations", "weights", "quantize_linear_nodes")},
            **{k: record[k] for k in ("calibration_rows", "heldout_rows", "heldout_rel_err")},
            "float_units": record["float_units"]["kept_by_budget"] + record["float_units"]["excluded_by_pattern"]}
        return work / "out" / made.files[0]

    def check(self, stage: Path, entry: dict, inputs: dict, expected: np.ndarray, profile: TargetProfile) -> list[dict]:
        from edgekit.runtime.runners import OrtRunner, compare

        runner = OrtRunner(stage / entry["file"])
        checks = [{"runtime": runner.runtime, **compare(runner.run(inputs), expected)}]
        gpu = entry.get("providers", {}).get("webgpu")
        if gpu:  # the WebGPU graph's arithmetic, here on the CPU (the browser check runs it on WebGPU)
            other = OrtRunner(stage / gpu["file"])
            checks.append({"runtime": f"{other.runtime}: {WEBGPU_FILE}", **compare(other.run(inputs), expected)})
        return checks

    def finish(self, stage: Path, manifest: dict, profile: TargetProfile) -> dict:
        """Replay every graph in onnxruntime-web under Node, as the page would load it, and (the profile's
        verify_in_browser) in headless Chromium on wasm and WebGPU."""
        from edgekit.targets.ort_webgpu import record_image_difference

        manifest = self._verify_in_node(stage, manifest, profile)
        if profile.verify_in_browser:
            manifest = record_browser_checks(stage, manifest)
        return record_image_difference(stage, manifest, IMAGE_PROMPT) if self.webgpu_forms else manifest

    def _verify_in_node(self, stage: Path, manifest: dict, profile: TargetProfile) -> dict:
        if not profile.verify_in_node:
            return manifest
        from edgekit.bundle import lookup
        from edgekit.runtime.runners import check_bundle_in_node, node_available

        why = node_available()
        if why:
            for comp in manifest["verification"].values():
                for record in (comp["widths"].values() if "widths" in comp else [comp]):
                    record["checks"].append({"runtime": "onnxruntime-web (node, wasm)", "skipped": why})
            return manifest
        for result in check_bundle_in_node(stage):
            name, _, width = result["component"].partition("@")
            record = lookup(manifest["verification"], name, width or None)
            if not result["passed"]:
                raise VerificationError(f"{result['component']}: onnxruntime-web output differs from torch: rel-err "
                                        f"{result['rel_err']:.3g} > tolerance {result['tolerance']:.3g}")
            record["checks"].append({k: result[k] for k in ("runtime", "rel_err", "max_abs_err", "rows_per_call",
                                                             "all_rows_error") if k in result})
            if "rows_per_call" in result:
                # the wasm heap (4 GB) did not hold the all-rows call: the page feeds this graph row by row
                lookup(manifest["components"], name, width or None)["rows_per_call"] = result["rows_per_call"]
                if name == by_role("denoise").name:  # the UNet itself, not the step-cache graphs
                    manifest["sampling"]["batching"] = "two-calls"
        return manifest


BROWSER_KEYS = ("provider", "file", "precision", "rel_err", "max_abs_err", "tolerance", "passed", "load_ms", "run_ms",
                "rows_per_call", "error")


def record_browser_checks(bundle_dir: Path, manifest: dict) -> dict:
    """Every ONNX graph of the bundle in headless Chromium on wasm and WebGPU (edgekit.runtime.browser);
    each verification record gets ``providers: {wasm: {...}, webgpu: {...}}`` with the rel-err, tolerance and
    ``passed``. A wrong or failing WebGPU result is recorded as not passed (the page then runs that component on
    wasm); a wrong wasm result is a VerificationError. Without Chromium every record says why it was skipped."""
    from edgekit.bundle import lookup
    from edgekit.runtime.browser import browser_missing, check_bundle_in_browser

    why = browser_missing()
    records = []
    for name, comp in manifest["verification"].items():
        records += [(f"{name}@{w}", r) for w, r in comp["widths"].items()] if "widths" in comp else [(name, comp)]
    if why:
        for _, record in records:
            record["providers"] = {"skipped": why}
        return manifest
    answer = check_bundle_in_browser(bundle_dir)
    for result in answer["results"]:
        if "skipped" in result:
            continue
        name, _, width = result["component"].partition("@")
        record = lookup(manifest["verification"], name, width or None)
        if result["provider"] == "wasm" and not result["passed"]:
            raise VerificationError(f"{result['component']}: onnxruntime-web (Chromium, wasm) "
                                    + (result["error"] if "error" in result else
                                       f"rel-err {result['rel_err']:.3g} > tolerance {result['tolerance']:.3g}"))
        record.setdefault("providers", {})[result["provider"]] = {
            "runtime": f"onnxruntime-web (Chromium {answer['chromium']}, {result['provider']})",
            **({"adapter": answer["adapter"]} if result["provider"] == "webgpu" else {}),
            **{k: result[k] for k in BROWSER_KEYS if k in result and k != "provider"}}
    return manifest


def _check_graph_inputs(path: Path, spec, label: str) -> None:
    """A graph made elsewhere (the quantize stage) takes exactly the spec's inputs: a UNet with a guidance
    embedding quantized without its timestep_cond input, or an input the bundle never feeds, is refused."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in initializers]
    if sorted(names) != sorted(spec.input_names()):
        raise InputError(f"{label}: {path} takes inputs {', '.join(names)}; the model's {spec.name} takes "
                                f"{', '.join(spec.input_names())}; re-run edgekit quantize on this model")


def _specs(specs, batch):
    from edgekit.targets.base import _tensor_dicts

    return _tensor_dicts(specs, batch)


TARGET = OrtWebTarget
