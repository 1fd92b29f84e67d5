"""The bundle manifest: its schema, reading it, writing it last and atomically with the sha256 of every
file, and verifying a bundle on disk (files, schema, and the numbers where a runtime exists here).

A bundle is one directory per target; ``manifest.json`` is written last, so its presence means the
export finished. Every platform (Python runners, the browser, Android, iOS) reads the same keys.

Example (an ort-web bundle of the tiny digits model, two UNet widths; lists shortened)::

    {
      "format_version": 1,
      "stage": "export",
      "target": "ort-web",
      "profile": {"name": "web-ort", "...": "the validated profile, as used"},
      "created_with": {"edgekit": "0.1.0", "torch": "2.13.0+cpu", "onnxruntime": "1.32.0"},
      "source_model": {"name": "pipeline", "sha256": "<sha256_tree of the model dir>", "calibration": null},
      "precision": "fp32",
      "components": {
        "text_encoder": {"format": "onnx", "file": "text_encoder/model.onnx",
                         "files": ["text_encoder/model.onnx"], "precision": "fp32", "layout": "NCHW",
                         "inputs": [{"name": "input_ids", "dtype": "int32", "shape": ["batch", 16]}],
                         "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", 16, 64]}],
                         "bytes": 301234},
        "unet": {"widths": {
          "1.00": {"format": "onnx", "file": "unet/w1.00/model.onnx", "files": ["unet/w1.00/model.onnx"],
                   "precision": "fp32", "layout": "NCHW", "params": 4200000,
                   "inputs": [{"name": "sample", "dtype": "float32", "shape": ["batch", 4, 8, 8]},
                              {"name": "timestep", "dtype": "float32", "shape": ["batch"]},
                              {"name": "encoder_hidden_states", "dtype": "float32", "shape": ["batch", 16, 64]}],
                   "outputs": [{"name": "out_sample", "dtype": "float32", "shape": ["batch", 4, 8, 8]}],
                   "bytes": 16800000},
          "0.50": {"...": "same keys"}}},
        "vae_decoder": {"format": "onnx", "file": "vae_decoder/model.onnx", "...": "same keys"}
      },
      "widths": [1.0, 0.5],
      "geometry": {"image_size": 32, "image_channels": 3, "latent_shape": [4, 8, 8], "vae_scale_factor": 4,
                   "vae_scaling_factor": 0.18215, "image_range": [-1.0, 1.0]},
      "tokenizer": {"files": ["tokenizer/tokenizer.json", "tokenizer/vocab.json", "..."],
                    "tokenizer_json": "tokenizer/tokenizer.json", "max_length": 16,
                    "bos_id": 0, "eos_id": 1, "pad_id": 1, "vocab_size": 40},
      "scheduler": {"config": {"_class_name": "DPMSolverMultistepScheduler", "...": "diffusers config"},
                    "file": "scheduler/scheduler_config.json"},
      "sampling": {"guidance_scale": 4.0, "default_steps": 20, "batching": "batch2",
                   "schedules": {"4": {"format": "edgekit-linear-schedule/1", "timesteps": ["..."],
                                       "input_scale": ["..."], "sample_coeff": ["..."], "eps_coeffs": ["..."],
                                       "init_noise_sigma": 1.0}, "8": {}, "12": {}, "20": {}}},
      "verification": {
        "text_encoder": {"reference": "torch fp32", "rows": 2, "tolerance": 0.0001,
                         "checks": [{"runtime": "onnxruntime 1.32.0 (python, CPU)", "rel_err": 3e-07,
                                     "max_abs_err": 1e-06},
                                    {"runtime": "onnxruntime-web 1.30.0 (node, wasm)", "rel_err": 4e-07,
                                     "max_abs_err": 1e-06}],
                         "data": {"inputs": {"input_ids": {"file": "verification/text_encoder/input_ids.bin",
                                                           "dtype": "int32", "shape": [2, 16]}},
                                  "expected": {"file": "verification/text_encoder/expected.bin",
                                               "dtype": "float32", "shape": [2, 16, 64]}}},
        "unet": {"widths": {"1.00": {"...": "same keys"}}},
        "vae_decoder": {"...": "same keys; a check that cannot run here says why in 'skipped'"}
      },
      "table": [],
      "policy": {},
      "files": {"text_encoder/model.onnx": {"sha256": "<hex>", "bytes": 301234}, "...": "every file but this one"}
    }

Per-format extras in a component entry: ort-web ``opset``, and for split weights ``external_data``
([{file, bytes}], each chunk below the profile's ``max_file_mb``) with ``join`` (how the runtime puts
them together); tflite ``converter``, ``signature`` (the LiteRT signature key; its input/output names
are the entry's tensor names), ``ops`` (operator counts), ``flex_ops`` (always empty: export refuses
them), ``recipe`` (fp16/int8), ``io_quantization`` ({tensor: {scale, zero_point}} where a full-integer
model takes or gives int8: real = scale * (q - zero_point)); coreml ``minimum_deployment_target``,
``ops`` and ``const_dtypes`` (how the weights are stored). Fixed-shape targets give concrete batch
sizes in ``shape`` (UNet: 2 for ``batching: batch2``, 1 for ``two-calls``; text encoder and VAE: 1);
ort-web keeps "batch" as a free axis.

``table`` rows are {width, steps, latency_ms, device, prompt_accuracy, frechet_distance}, filled by
``edgekit bench``; ``policy`` is filled by the runtime-policy stage. Verification data are raw
little-endian arrays (C order) so that any platform can replay the check without a numpy reader.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from edgekit.constants import MANIFEST
from edgekit.errors import InputError, VerificationError
from edgekit.fsutil import sha256_file, staged_file

FORMAT_VERSION = 1
STAGE = "export"
COMPONENTS = ("text_encoder", "unet", "vae_decoder")
BATCHING = ("batch2", "two-calls")
FORMATS = ("onnx", "tflite", "mlpackage")
TOP_LEVEL = {
    "format_version": int, "stage": str, "target": str, "profile": dict, "created_with": dict,
    "source_model": dict, "precision": str, "components": dict, "widths": list, "geometry": dict,
    "tokenizer": dict, "scheduler": dict, "sampling": dict, "verification": dict, "table": list,
    "policy": dict, "files": dict,
}
ENTRY_KEYS = {"format": str, "file": str, "files": list, "precision": str, "layout": str, "inputs": list,
              "outputs": list, "bytes": int}


def width_key(width: float) -> str:
    """The manifest's key for a UNet width: 1.0 -> "1.00"."""
    return f"{float(width):.2f}"


def component_entries(manifest: dict) -> Iterator[tuple[str, str | None, dict]]:
    """(component, width key or None, entry) for every exported graph."""
    for name in COMPONENTS:
        comp = manifest["components"].get(name)
        if comp is None:
            continue
        if "widths" in comp:
            for key, entry in comp["widths"].items():
                yield name, key, entry
        else:
            yield name, None, comp


def entry_label(name: str, width: str | None) -> str:
    return name if width is None else f"{name}@{width}"


def lookup(section: dict, name: str, width: str | None) -> dict | None:
    """The per-component record of ``section`` (components or verification) for (name, width)."""
    comp = section.get(name)
    if comp is None:
        return None
    return comp.get("widths", {}).get(width) if width is not None else comp


def _collect_files(bundle_dir: Path) -> dict:
    files = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        if rel == MANIFEST or any(part.startswith(".") for part in Path(rel).parts):
            continue
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


NONFINITE = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}


def strict_json(obj):
    """``obj`` with every non-finite float as the string "Infinity", "-Infinity" or "NaN": the manifest is
    strict JSON that browsers, Kotlin and Swift parse (a diffusers scheduler config may hold -inf)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return "NaN" if np.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def scheduler_config(manifest: dict) -> dict:
    """The diffusers scheduler config of a manifest with its non-finite numbers restored."""
    return {k: NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in manifest["scheduler"]["config"].items()}


def write_manifest(bundle_dir: Path, manifest: dict) -> dict:
    """Recompute every file's sha256 and size, check the schema, and write manifest.json atomically.

    Returns the manifest as written (a new dict; the caller's is not changed)."""
    bundle_dir = Path(bundle_dir)
    out = strict_json({**manifest, "files": _collect_files(bundle_dir)})
    check_manifest(out, str(bundle_dir / MANIFEST))
    with staged_file(bundle_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    return out


def read_manifest(bundle_dir: Path | str, flag: str = "BUNDLE") -> dict:
    """Parse and schema-check a bundle's manifest.json; errors name the file and the key."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise InputError(f"{flag} {bundle_dir}: no such directory (expected a bundle written by edgekit export)")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise InputError(f"{flag} {bundle_dir}: {MANIFEST} missing (not a finished bundle)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    check_manifest(manifest, str(path))
    return manifest


def check_manifest(m, where: str) -> None:
    """Raise InputError at the first key that is missing, of the wrong type, or inconsistent."""
    if not isinstance(m, dict):
        raise InputError(f"{where}: expected a JSON object")
    for key, tp in TOP_LEVEL.items():
        if key not in m:
            raise InputError(f"{where}: missing key '{key}'")
        if not isinstance(m[key], tp) or (tp is int and isinstance(m[key], bool)):
            raise InputError(f"{where}: '{key}' should be a {tp.__name__}, got {type(m[key]).__name__}")
    unknown = set(m) - set(TOP_LEVEL)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {sorted(unknown)}")
    if m["format_version"] != FORMAT_VERSION:
        raise InputError(f"{where}: format_version {m['format_version']} (this edgekit reads {FORMAT_VERSION})")
    if m["stage"] != STAGE:
        raise InputError(f"{where}: stage '{m['stage']}', expected '{STAGE}'")
    for key in ("name", "sha256"):  # by name and hash: no path of the packaging host
        if not isinstance(m["source_model"].get(key), str):
            raise InputError(f"{where}: source_model.{key} should be a string")
    if not m["widths"] or not all(isinstance(w, (int, float)) and 0 < w <= 1 for w in m["widths"]):
        raise InputError(f"{where}: widths should be a non-empty list of numbers in (0, 1]")
    missing = [c for c in COMPONENTS if c not in m["components"]]
    if missing:
        raise InputError(f"{where}: components lacks {missing}")
    unet_widths = set(m["components"]["unet"].get("widths", {}))
    if unet_widths != {width_key(w) for w in m["widths"]}:
        raise InputError(f"{where}: components.unet.widths {sorted(unet_widths)} do not match widths {m['widths']}")
    for name, width, entry in component_entries(m):
        label = f"components.{name}" + (f".widths.{width}" if width else "")
        for key, tp in ENTRY_KEYS.items():
            if not isinstance(entry.get(key), tp):
                raise InputError(f"{where}: {label}.{key} missing or not a {tp.__name__}")
        if entry["format"] not in FORMATS:
            raise InputError(f"{where}: {label}.format '{entry['format']}' is not one of {FORMATS}")
        for t in entry["inputs"] + entry["outputs"]:
            if not (isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("dtype"), str)
                    and isinstance(t.get("shape"), list)):
                raise InputError(f"{where}: {label} tensor {t!r} should be {{name, dtype, shape}}")
        for f in entry["files"]:
            if m["files"] and f not in m["files"] and not any(k.startswith(f.rstrip("/") + "/") for k in m["files"]):
                raise InputError(f"{where}: {label} names {f}, which the files list lacks")
    geometry = m["geometry"]
    for key in ("image_size", "latent_shape", "vae_scale_factor", "vae_scaling_factor"):
        if key not in geometry:
            raise InputError(f"{where}: geometry.{key} missing")
    for key in ("files", "max_length", "bos_id", "eos_id", "pad_id"):
        if key not in m["tokenizer"]:
            raise InputError(f"{where}: tokenizer.{key} missing")
    if not isinstance(m["scheduler"].get("config"), dict) or "_class_name" not in m["scheduler"]["config"]:
        raise InputError(f"{where}: scheduler.config should be a diffusers scheduler config with _class_name")
    s = m["sampling"]
    for key in ("guidance_scale", "default_steps", "batching", "schedules"):
        if key not in s:
            raise InputError(f"{where}: sampling.{key} missing")
    if s["batching"] not in BATCHING:
        raise InputError(f"{where}: sampling.batching '{s['batching']}' is not one of {BATCHING}")
    for steps, table in s["schedules"].items():
        if not steps.isdigit() or not isinstance(table, dict) or table.get("steps") != int(steps) \
                or not table.get("timesteps"):
            raise InputError(f"{where}: sampling.schedules['{steps}'] is not a schedule table of {steps} steps")
    for rel, info in m["files"].items():
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and isinstance(info.get("bytes"), int)):
            raise InputError(f"{where}: files['{rel}'] should be {{sha256, bytes}}")
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise InputError(f"{where}: files['{rel}'] is not a path inside the bundle")
    for row in m["table"]:
        if not isinstance(row, dict):
            raise InputError(f"{where}: table rows should be objects")


def verify_files(bundle_dir: Path, manifest: dict) -> int:
    """Check every listed file's size and sha256, and that no unlisted file was added. Returns the count."""
    bundle_dir = Path(bundle_dir)
    for rel, info in manifest["files"].items():
        path = bundle_dir / rel
        if not path.is_file():
            raise VerificationError(f"{path}: missing (listed in {MANIFEST})")
        if path.stat().st_size != info["bytes"]:
            raise VerificationError(f"{path}: {path.stat().st_size} bytes, {MANIFEST} says {info['bytes']}")
        if sha256_file(path) != info["sha256"]:
            raise VerificationError(f"{path}: sha256 differs from {MANIFEST} (file changed or corrupted)")
    extra = sorted(set(_collect_files(bundle_dir)) - set(manifest["files"]))
    if extra:
        raise VerificationError(f"{bundle_dir / extra[0]}: not listed in {MANIFEST}")
    return len(manifest["files"])


def save_array(bundle_dir: Path, rel: str, array: np.ndarray) -> dict:
    """Write ``array`` as raw little-endian C-order bytes; returns its {file, dtype, shape} record."""
    array = np.ascontiguousarray(array)
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    path = Path(bundle_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(array.tobytes())
    return {"file": rel, "dtype": str(array.dtype.name), "shape": list(array.shape)}


def load_array(bundle_dir: Path, record: dict) -> np.ndarray:
    dtype = np.dtype(record["dtype"]).newbyteorder("<")
    data = np.frombuffer((Path(bundle_dir) / record["file"]).read_bytes(), dtype=dtype)
    return data.reshape(record["shape"]).astype(np.dtype(record["dtype"]))


def verify(bundle_dir: Path | str, numeric: bool = True, node: bool = False) -> dict:
    """Check a bundle: schema, every file's sha256, then (``numeric``) replay each component's stored
    verification inputs in the runtime that exists here and compare with the stored torch outputs.

    Returns {"files": n, "checks": [...]} ; raises VerificationError naming the file or component."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    count = verify_files(bundle_dir, manifest)
    checks = []
    if numeric:
        from edgekit.runtime.runners import recheck_entry

        for name, width, entry in component_entries(manifest):
            record = lookup(manifest["verification"], name, width)
            label = entry_label(name, width)
            if not record or "data" not in record:
                checks.append({"component": label, "skipped": "no verification data in the bundle"})
                continue
            result = recheck_entry(bundle_dir, entry, record, node=node)
            result["component"] = label
            tolerance = float(record["tolerance"])
            if "rel_err" in result and not (np.isfinite(result["rel_err"]) and result["rel_err"] <= tolerance):
                raise VerificationError(f"{label}: {bundle_dir / entry['file']} rel-err {result['rel_err']:.3g} "
                                        f"> tolerance {tolerance:.3g} in {result['runtime']}")
            checks.append(result)
    return {"bundle": os.fspath(bundle_dir), "target": manifest["target"], "files": count, "checks": checks}
