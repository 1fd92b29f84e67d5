"""The bundle manifest: its schema, reading it, writing it last and atomically with the sha256 of every
file, and verifying a bundle on disk (files, schema, and the numbers where a runtime exists here).

A bundle is one directory per target; ``manifest.json`` is written last, so its presence means the
export finished. Every platform (Python runners, the browser, Android, iOS) reads the same keys.

Example (an ort-web bundle of the tiny digits model, two UNet widths; lists shortened)::

    {
      "format_version": 2,
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
      "files": {"text_encoder/model.onnx": {"sha256": "<hex>", "bytes": 301234}, "...": "every file but this one"},
      "integrity": {"format": "edgekit-canonical-json/1", "sha256": "<hex of the canonical body>",
                    "sections": {"components": "<hex>", "...": "one per top-level key but this one"}}
    }

Per-format extras in a component entry: ort-web ``opset``, for split weights ``external_data``
([{file, bytes}], each chunk below the profile's ``max_file_mb``) with ``join`` (how the runtime puts
them together), and ``rows_per_call`` where the all-rows call ran out of onnxruntime-web's 4 GB wasm heap
at export (the graph is fed that many rows per call; for the UNet ``sampling.batching`` is then two-calls); tflite ``converter``, ``signature`` (the LiteRT signature key; its input/output names
are the entry's tensor names), ``ops`` (operator counts), ``flex_ops`` (always empty: export refuses
them), ``recipe`` (fp16/int8), ``io_quantization`` ({tensor: {scale, zero_point}} where a full-integer
model takes or gives int8: real = scale * (q - zero_point)); coreml ``minimum_deployment_target``,
``ops`` and ``const_dtypes`` (how the weights are stored). Fixed-shape targets give concrete batch
sizes in ``shape`` (UNet: 2 for ``batching: batch2``, 1 for ``two-calls``; text encoder and VAE: 1);
ort-web keeps "batch" as a free axis.

``table`` rows are {width, steps, latency_ms, device, prompt_accuracy, frechet_distance}, filled by
``edgekit bench``; each names a width in ``widths`` and a step count in ``sampling.schedules``.
``policy`` is filled by the runtime-policy stage. Verification data are raw little-endian arrays
(C order) so that any platform can replay the check without a numpy reader.

What is trusted, and how:

- ``files`` lists every file of the bundle (but manifest.json) with its sha256 and size; a file on
  disk that is not listed, hidden files and symbolic links included, makes the bundle invalid. A
  bundle holds no hidden files at all.
- ``integrity`` covers the manifest's own content: ``sha256`` of the canonical JSON of everything
  but ``integrity`` (keys sorted, separators "," and ":", ASCII, non-finite numbers as the strings
  above: Python's ``json.dumps(body, sort_keys=True, separators=(",", ":"))``), and the same digest
  per top-level key in ``sections``, so that an edited manifest is refused naming the key it changed.
  It catches edits and damage, not a forger who recomputes it: ``manifest.sig`` (edgekit.signing, optional,
  outside ``files``) is an Ed25519 signature of ``integrity.sha256`` that ``verify --key`` checks.
- Only the first write of a freshly exported directory lists the files. Every later write (``bench``,
  ``--import-table``) first checks the files against the manifest on disk and refuses a damaged
  bundle, so a rewrite never renews the checksum of a changed file.
- ``verify`` also checks meaning: the schedules are recomputed from ``scheduler.config`` (which must
  equal ``scheduler.file``), the tokenizer's special ids are looked up in its own files, and the
  geometry must match the components' shapes.

``format_version`` 2 added ``integrity``; a manifest of another version is refused with one line
(re-export the bundle).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgekit.constants import MANIFEST, SIGNATURE
from edgekit.errors import InputError, VerificationError
from edgekit.fsutil import sha256_file, staged_file
from edgekit.bundle.schema import (BATCHING, CANONICAL, COMPONENTS, ENTRY_KEYS, EXECUTION_PROVIDERS,
                                   FORMAT_VERSION, NONFINITE, SCHEDULE_ATOL, SCHEDULE_RTOL, STAGE, TOP_LEVEL,
                                   bytes_on_disk, check_integrity, check_manifest, check_meaning, component_entries,
                                   entry_label, integrity, lookup, scheduler_config, strict_json, width_key)


def _disk_entries(bundle_dir: Path) -> dict[str, Path]:
    """Every non-directory entry below ``bundle_dir`` (hidden ones and symbolic links included, links not
    followed), by relative POSIX path, except the top-level manifest.json and its signature (edgekit.signing)."""
    entries = {}
    for root, dirs, names in os.walk(bundle_dir, followlinks=False):
        root_path = Path(root)
        for name in names + [d for d in dirs if (root_path / d).is_symlink()]:
            path = root_path / name
            rel = path.relative_to(bundle_dir).as_posix()
            if rel not in (MANIFEST, SIGNATURE):
                entries[rel] = path
    return dict(sorted(entries.items()))


def _refuse_odd_entry(bundle_dir: Path, rel: str, path: Path) -> None:
    if any(part.startswith(".") for part in Path(rel).parts):
        raise VerificationError(f"{path}: hidden file in the bundle (a bundle holds no hidden files; remove it)")
    if path.is_symlink() or not path.is_file():
        raise VerificationError(f"{path}: not a regular file (a bundle holds regular files only, no links)")


def _collect_files(bundle_dir: Path) -> dict:
    """The ``files`` listing of a freshly exported directory; refuses hidden files and links."""
    files = {}
    for rel, path in _disk_entries(bundle_dir).items():
        _refuse_odd_entry(bundle_dir, rel, path)
        files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return files


def write_manifest(bundle_dir: Path, manifest: dict) -> dict:
    """Write manifest.json atomically, with every file's sha256 and size and the manifest's ``integrity``.

    With no manifest.json in ``bundle_dir`` yet (a fresh export) every file is listed. Otherwise this is
    a rewrite (bench, an imported table, an export's last write): the files on disk are first verified
    against the manifest already there, and the bundle is refused (VerificationError naming the file)
    when one was changed, removed or added, so damage is never blessed with a fresh checksum.

    A rewrite holds the bundle's write lock (edgekit.locking) and re-reads the manifest under it: a manifest
    that was read before another process rewrote the bundle (it carries the ``integrity`` it was read with)
    is refused, so a stale copy is never combined with another export's ``files``.

    Returns the manifest as written (a new dict; the caller's is not changed)."""
    from edgekit.locking import output_lock

    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / MANIFEST).exists():
        if manifest.get("files"):
            raise InputError(f"{bundle_dir}: {MANIFEST} missing, so its files cannot be checked before the "
                             "manifest is rewritten (not a finished bundle)")
        return _write_checked(bundle_dir, manifest, _collect_files(bundle_dir))
    with output_lock(bundle_dir, param="bundle"):
        on_disk = read_manifest(bundle_dir)
        read_as = manifest.get("integrity", {}).get("sha256") if isinstance(manifest.get("integrity"), dict) else None
        if read_as is not None and read_as != on_disk["integrity"]["sha256"]:
            raise VerificationError(f"{bundle_dir / MANIFEST}: rewritten by another process since this command read "
                                    "it; nothing was written (rerun the command on the bundle as it is now)")
        verify_files(bundle_dir, on_disk)
        return _write_checked(bundle_dir, manifest, on_disk["files"])


def link_bundle(src: Path, dst: Path, manifest: dict | None = None) -> dict:
    """A copy of the finished bundle ``src`` in the new directory ``dst``: its files as hard links where the
    filesystem allows (copies otherwise), with ``manifest`` written as dst's manifest (src's, linked as it is,
    when None). ``manifest`` keeps src's files (a table and policy merged in, edgekit.runtime.bench.table_manifest);
    their sha256s are src's, not hashed again: the caller vouches for src's files (edgekit package: the export
    stage's output, checked against its recorded checksums). Returns the manifest as written."""
    from edgekit.fsutil import link_or_copy_tree

    source = read_manifest(src)
    if manifest is not None and manifest.get("files") != source["files"]:
        raise InputError(f"{dst}: the manifest to write lists other files than {src / MANIFEST}")
    link_or_copy_tree(src, dst, skip_top=() if manifest is None else (MANIFEST,))
    return source if manifest is None else _write_checked(dst, manifest, source["files"])


def _write_checked(bundle_dir: Path, manifest: dict, files: dict) -> dict:
    out = strict_json({k: v for k, v in manifest.items() if k != "integrity"} | {"files": files})
    out["integrity"] = integrity(out)
    check_manifest(out, str(bundle_dir / MANIFEST))
    with staged_file(bundle_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n")
    return out


def _parse_manifest(path: Path) -> dict:
    from edgekit.safe_read import read_json

    # bounded: a regular file (a FIFO is refused, never waited on), its size, nesting and numbers
    manifest = read_json(path, "bundle manifest")
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: expected a JSON object")
    return manifest


def read_manifest(bundle_dir: Path | str, param: str = "bundle", checked: bool = True) -> dict:
    """Parse a bundle's manifest.json, check its schema and its ``integrity``; errors name the file and key
    (a directory that is no bundle: ``param``, the caller's name for it).

    ``checked=False`` only parses, and also takes a manifest.json path: for readers that use nothing but
    the table and policy of a hand-written manifest (``policy simulate``) and load no bundle file."""
    bundle_dir = Path(bundle_dir)
    if not checked:
        path = bundle_dir / MANIFEST if bundle_dir.is_dir() else bundle_dir
        if not path.exists():  # a FIFO or device is named by _parse_manifest, never opened
            raise InputError(f"no {MANIFEST} (expected a bundle directory written by `edgekit export`, or its "
                             "manifest.json)", param=param, value=bundle_dir)
        return _parse_manifest(path)
    if not bundle_dir.is_dir():
        raise InputError("no such directory (expected a bundle written by edgekit export)", param=param,
                         value=bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.exists():  # a FIFO or device is named by _parse_manifest, never opened
        raise InputError(f"{MANIFEST} missing (not a finished bundle)", param=param, value=bundle_dir)
    manifest = _parse_manifest(path)
    check_manifest(manifest, str(path))
    check_integrity(manifest, str(path))
    return manifest


def verify_files(bundle_dir: Path, manifest: dict) -> int:
    """Check every listed file's size and sha256, and that nothing unlisted is on disk (hidden files and
    links included: a bundle has none). Returns the count. The fast check before loading a bundle."""
    bundle_dir = Path(bundle_dir)
    on_disk = _disk_entries(bundle_dir)
    for rel, path in on_disk.items():
        if rel not in manifest["files"]:
            hidden = any(part.startswith(".") for part in Path(rel).parts)
            raise VerificationError(f"{path}: not listed in {MANIFEST}" + (" (a hidden file; a bundle holds none)"
                                                                          if hidden else ""))
    for rel, info in manifest["files"].items():
        path = bundle_dir / rel
        if rel not in on_disk:
            raise VerificationError(f"{path}: missing (listed in {MANIFEST})")
        _refuse_odd_entry(bundle_dir, rel, path)
        if path.stat().st_size != info["bytes"]:
            raise VerificationError(f"{path}: {path.stat().st_size} bytes, {MANIFEST} says {info['bytes']}")
        if sha256_file(path) != info["sha256"]:
            raise VerificationError(f"{path}: sha256 differs from {MANIFEST} (file changed or corrupted)")
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


def check_bundle(bundle_dir: Path | str) -> tuple[dict, int]:
    """Everything but the numbers: schema and the manifest's integrity, every file's sha256 (and nothing
    unlisted), what the manifest means (check_meaning). Returns (manifest, files checked); raises
    VerificationError / InputError naming the file or key. edgekit.runtime.verify adds the numeric replay."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    count = verify_files(bundle_dir, manifest)
    check_meaning(bundle_dir, manifest)
    return manifest, count


__all__ = ["BATCHING", "CANONICAL", "COMPONENTS", "ENTRY_KEYS", "EXECUTION_PROVIDERS", "FORMAT_VERSION", "MANIFEST",
           "NONFINITE", "SCHEDULE_ATOL", "SCHEDULE_RTOL", "STAGE", "TOP_LEVEL", "bytes_on_disk", "check_bundle",
           "check_integrity", "check_manifest", "check_meaning", "component_entries", "entry_label", "integrity",
           "link_bundle", "load_array", "lookup", "read_manifest", "save_array", "scheduler_config", "strict_json",
           "verify_files", "width_key", "write_manifest"]
