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

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from edgekit.components import BUNDLE_COMPONENTS, all_components, get_component
from edgekit.constants import FORMATS, MANIFEST, SIGNATURE
from edgekit.errors import InputError, VerificationError
from edgekit.fsutil import sha256_file, staged_file
from edgekit.width import Width, WidthError

FORMAT_VERSION = 2
STAGE = "export"
COMPONENTS = BUNDLE_COMPONENTS  # every bundle has these (edgekit.components); a target may add others
BATCHING = ("batch2", "two-calls")
CANONICAL = "edgekit-canonical-json/1"
TOP_LEVEL = {
    "format_version": int, "stage": str, "target": str, "profile": dict, "created_with": dict,
    "source_model": dict, "precision": str, "components": dict, "widths": list, "geometry": dict,
    "tokenizer": dict, "scheduler": dict, "sampling": dict, "verification": dict, "table": list,
    "policy": dict, "files": dict, "integrity": dict,
}
ENTRY_KEYS = {"format": str, "file": str, "files": list, "precision": str, "layout": str, "inputs": list,
              "outputs": list, "bytes": int}
# Recomputed schedules may differ from the stored ones by float noise across diffusers/torch versions.
SCHEDULE_RTOL = 1e-6
SCHEDULE_ATOL = 1e-9


def width_key(width) -> str:
    """The manifest's key for a UNet width (any Width spelling): 1.0 -> "1.00"."""
    return Width.parse(width).key


def component_entries(manifest: dict) -> Iterator[tuple[str, str | None, dict]]:
    """(component, width key or None, entry) for every exported graph, in the registry's order."""
    for component in all_components():
        comp = manifest["components"].get(component.name)
        if comp is None:
            continue
        name = component.name
        if component.per_width:
            for key, entry in comp["widths"].items():
                yield name, key, entry
        else:
            yield name, None, comp


def bytes_on_disk(bundle_dir: Path, manifest: dict) -> int:
    """The bytes the manifest's files take on disk: a file hard-linked under several names (the onnx target's
    pipeline views) counts once."""
    seen, total = set(), 0
    for rel in manifest["files"]:
        st = (Path(bundle_dir) / rel).stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def entry_label(name: str, width: str | None) -> str:
    return name if width is None else f"{name}@{width}"


def lookup(section: dict, name: str, width: str | None) -> dict | None:
    """The per-component record of ``section`` (components or verification) for (name, width)."""
    comp = section.get(name)
    if comp is None:
        return None
    return comp.get("widths", {}).get(width) if width is not None else comp


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


def _canonical_sha256(value) -> str:
    text = json.dumps(strict_json(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def integrity(manifest: dict) -> dict:
    """The ``integrity`` record of ``manifest``: sha256 of its canonical body (everything but ``integrity``)
    and of each top-level key, so that a changed manifest can be refused naming what changed."""
    body = {k: v for k, v in manifest.items() if k != "integrity"}
    return {"format": CANONICAL, "sha256": _canonical_sha256(body),
            "sections": {k: _canonical_sha256(v) for k, v in sorted(body.items())}}


def check_integrity(m: dict, where: str) -> None:
    """Raise VerificationError when the manifest's content differs from what its ``integrity`` records."""
    recorded = m["integrity"]
    if recorded.get("format") != CANONICAL:
        raise VerificationError(f"{where}: integrity.format {recorded.get('format')!r}, expected '{CANONICAL}'")
    expected = integrity(m)
    if recorded.get("sha256") == expected["sha256"]:
        return
    sections = recorded.get("sections") if isinstance(recorded.get("sections"), dict) else {}
    changed = [k for k in expected["sections"] if sections.get(k) != expected["sections"][k]]
    changed += sorted(set(sections) - set(expected["sections"]))
    if not changed:
        raise VerificationError(f"{where}: integrity.sha256 does not match the manifest's content (the manifest "
                                "was edited after edgekit wrote it; re-export the bundle)")
    raise VerificationError(f"{where}: '{changed[0]}' changed after edgekit wrote the manifest (its sha256 differs "
                            f"from integrity.sections{f'; also {changed[1:]}' if len(changed) > 1 else ''}); "
                            "re-export the bundle or re-run the command that wrote it")


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


def _parse_manifest(path: Path, flag: str) -> dict:
    from edgekit.safe_read import read_json

    # bounded: a regular file (a FIFO is refused, never waited on), its size, nesting and numbers
    manifest = read_json(path, "bundle manifest")
    if not isinstance(manifest, dict):
        raise InputError(f"{path}: expected a JSON object")
    return manifest


def read_manifest(bundle_dir: Path | str, flag: str = "BUNDLE", checked: bool = True) -> dict:
    """Parse a bundle's manifest.json, check its schema and its ``integrity``; errors name the file and key.

    ``checked=False`` only parses, and also takes a manifest.json path: for readers that use nothing but
    the table and policy of a hand-written manifest (``policy simulate``) and load no bundle file."""
    bundle_dir = Path(bundle_dir)
    if not checked:
        path = bundle_dir / MANIFEST if bundle_dir.is_dir() else bundle_dir
        if not path.exists():  # a FIFO or device is named by _parse_manifest, never opened
            raise InputError(f"{flag} {bundle_dir}: no {MANIFEST} (expected a bundle directory written by "
                             "`edgekit export`, or its manifest.json)")
        return _parse_manifest(path, flag)
    if not bundle_dir.is_dir():
        raise InputError(f"{flag} {bundle_dir}: no such directory (expected a bundle written by edgekit export)")
    path = bundle_dir / MANIFEST
    if not path.exists():  # a FIFO or device is named by _parse_manifest, never opened
        raise InputError(f"{flag} {bundle_dir}: {MANIFEST} missing (not a finished bundle)")
    manifest = _parse_manifest(path, flag)
    check_manifest(manifest, str(path))
    check_integrity(manifest, str(path))
    return manifest


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_manifest(m, where: str) -> None:
    """Raise InputError at the first key that is missing, of the wrong type, or inconsistent."""
    if not isinstance(m, dict):
        raise InputError(f"{where}: expected a JSON object")
    version = m.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{where}: 'format_version' missing or not a whole number (not an edgekit bundle manifest)")
    if version != FORMAT_VERSION:
        age = "an older" if version < FORMAT_VERSION else "a newer"
        raise InputError(f"{where}: format_version {version} was written by {age} edgekit (this edgekit reads "
                         f"{FORMAT_VERSION}); re-export the bundle with this edgekit")
    for key, tp in TOP_LEVEL.items():
        if key not in m:
            raise InputError(f"{where}: missing key '{key}'")
        if not isinstance(m[key], tp) or (tp is int and isinstance(m[key], bool)):
            raise InputError(f"{where}: '{key}' should be a {tp.__name__}, got {type(m[key]).__name__}")
    unknown = set(m) - set(TOP_LEVEL)
    if unknown:
        raise InputError(f"{where}: unknown key(s) {sorted(unknown)}")
    if m["stage"] != STAGE:
        raise InputError(f"{where}: stage '{m['stage']}', expected '{STAGE}'")
    for key in ("name", "sha256"):  # by name and hash: no path of the packaging host
        if not isinstance(m["source_model"].get(key), str):
            raise InputError(f"{where}: source_model.{key} should be a string")
    if not m["widths"] or not all(_is_number(w) and _key_or_none(w) for w in m["widths"]):
        raise InputError(f"{where}: widths {m['widths']!r} should be a non-empty list of width multipliers in (0, 1] "
                         "on the 0.01 grid")
    missing = [c for c in COMPONENTS if c not in m["components"]]
    if missing:
        raise InputError(f"{where}: components lacks {missing}")
    for component in all_components():
        comp = m["components"].get(component.name)
        if comp is None:
            continue
        if not isinstance(comp, dict):
            raise InputError(f"{where}: components.{component.name} should be an object")
        if component.per_width:
            keys = set(comp.get("widths", {})) if isinstance(comp.get("widths"), dict) else set()
            if keys != {width_key(w) for w in m["widths"]}:
                raise InputError(f"{where}: components.{component.name}.widths {sorted(keys)} do not match widths "
                                 f"{m['widths']}")
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
        _check_providers(m, entry.get("providers"), label, where)
    geometry = m["geometry"]
    for key in ("image_size", "latent_shape", "vae_scale_factor", "vae_scaling_factor"):
        if key not in geometry:
            raise InputError(f"{where}: geometry.{key} missing")
    for key in ("files", "max_length", "bos_id", "eos_id", "pad_id"):
        if key not in m["tokenizer"]:
            raise InputError(f"{where}: tokenizer.{key} missing")
    for key in ("max_length", "bos_id", "eos_id", "pad_id"):
        value = m["tokenizer"][key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InputError(f"{where}: tokenizer.{key} {value!r} should be a whole number >= 0")
    if not isinstance(m["scheduler"].get("config"), dict) or "_class_name" not in m["scheduler"]["config"]:
        raise InputError(f"{where}: scheduler.config should be a diffusers scheduler config with _class_name")
    s = m["sampling"]
    for key in ("guidance_scale", "default_steps", "batching", "schedules"):
        if key not in s:
            raise InputError(f"{where}: sampling.{key} missing")
    if not _is_number(s["guidance_scale"]) or s["guidance_scale"] < 0:
        raise InputError(f"{where}: sampling.guidance_scale {s['guidance_scale']!r} should be a finite number >= 0")
    if s["batching"] not in BATCHING:
        raise InputError(f"{where}: sampling.batching '{s['batching']}' is not one of {BATCHING}")
    if not isinstance(s["schedules"], dict) or not s["schedules"]:
        raise InputError(f"{where}: sampling.schedules should be a non-empty object of schedule tables")
    for steps, table in s["schedules"].items():
        if not steps.isdigit() or not isinstance(table, dict) or table.get("steps") != int(steps) \
                or not table.get("timesteps"):
            raise InputError(f"{where}: sampling.schedules['{steps}'] is not a schedule table of {steps} steps")
    if str(s["default_steps"]) not in s["schedules"]:
        raise InputError(f"{where}: sampling.default_steps {s['default_steps']!r} has no schedule in "
                         f"sampling.schedules {sorted(s['schedules'], key=int)}")
    if "step_cache" in s:  # step caching (edgekit.step_cache): its plans name graphs the bundle carries
        from edgekit.step_cache import check_section

        check_section(m, where)
    for rel, info in m["files"].items():
        if not (isinstance(info, dict) and isinstance(info.get("sha256"), str) and isinstance(info.get("bytes"), int)):
            raise InputError(f"{where}: files['{rel}'] should be {{sha256, bytes}}")
        if rel.startswith("/") or ".." in Path(rel).parts or rel == MANIFEST:
            raise InputError(f"{where}: files['{rel}'] is not a path inside the bundle")
    widths = {width_key(w) for w in m["widths"]}
    for i, row in enumerate(m["table"]):
        if not isinstance(row, dict):
            raise InputError(f"{where}: table rows should be objects")
        width, steps = row.get("width"), row.get("steps")
        if not _is_number(width) or _key_or_none(width) not in widths:
            raise InputError(f"{where}: table row {i} names width {width!r}, which the bundle lacks "
                             f"(widths {sorted(widths, reverse=True)})")
        if not isinstance(steps, int) or isinstance(steps, bool) or str(steps) not in s["schedules"]:
            raise InputError(f"{where}: table row {i} names {steps!r} steps, which have no schedule in the bundle "
                             f"(schedules {sorted(s['schedules'], key=int)})")


EXECUTION_PROVIDERS = ("wasm", "webgpu")  # onnxruntime-web's, as a manifest entry's providers name them


def _check_providers(m: dict, providers, label: str, where: str) -> None:
    """An ONNX entry's optional ``providers``: {execution provider: {file, files, precision, ...}}, the graph the
    page loads on that provider instead of the entry's own (edgekit.targets.ort_webgpu)."""
    if providers is None:
        return
    if not isinstance(providers, dict) or not set(providers) <= set(EXECUTION_PROVIDERS):
        raise InputError(f"{where}: {label}.providers should be an object keyed by {EXECUTION_PROVIDERS}")
    for ep, alt in providers.items():
        if not (isinstance(alt, dict) and isinstance(alt.get("file"), str) and isinstance(alt.get("files"), list)
                and alt["file"] in alt["files"] and isinstance(alt.get("precision"), str)):
            raise InputError(f"{where}: {label}.providers.{ep} should be {{file, files (holding file), precision}}")
        for f in alt["files"]:
            if m["files"] and f not in m["files"]:
                raise InputError(f"{where}: {label}.providers.{ep} names {f}, which the files list lacks")


def _key_or_none(width) -> str | None:
    try:
        return width_key(width)
    except WidthError:
        return None


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


def _first_difference(stored, expected, path: str) -> tuple[str, object, object] | None:
    """(path, stored, expected) of the first number or shape that differs beyond the schedule tolerance."""
    if isinstance(expected, (list, tuple)):
        if not isinstance(stored, list) or len(stored) != len(expected):
            return path, f"{len(stored) if isinstance(stored, list) else stored!r} entries", f"{len(expected)} entries"
        for i, (a, b) in enumerate(zip(stored, expected)):
            diff = _first_difference(a, b, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        if not _is_number(stored) or abs(stored - expected) > SCHEDULE_ATOL + SCHEDULE_RTOL * abs(expected):
            return path, stored, expected
        return None
    return None if stored == expected else (path, stored, expected)


def _check_schedules(bundle_dir: Path, m: dict, where: str) -> None:
    from edgekit.schedule import schedule_table

    sched = m["scheduler"]
    if sched.get("file"):
        path = bundle_dir / sched["file"]
        try:
            on_disk = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VerificationError(f"{path}: not a readable scheduler config ({exc})") from None
        if _canonical_sha256(on_disk) != _canonical_sha256(sched["config"]):
            raise VerificationError(f"{where}: scheduler.config differs from {path}")
    config = scheduler_config(m)
    for steps, table in m["sampling"]["schedules"].items():
        try:
            expected = strict_json(schedule_table(config, int(steps)))
        except InputError as exc:
            raise VerificationError(f"{where}: scheduler.config cannot be tabulated ({exc})") from None
        for key, value in expected.items():
            diff = _first_difference(table.get(key), value, f"sampling.schedules['{steps}'].{key}")
            if diff:
                raise VerificationError(f"{where}: {diff[0]} is {diff[1]!r}, but scheduler.config "
                                        f"({config['_class_name']}) gives {diff[2]!r}")


def _token_id(vocab: dict, token) -> int | None:
    if isinstance(token, dict):
        token = token.get("content")
    return vocab.get(token) if isinstance(token, str) else None


def _check_tokenizer(bundle_dir: Path, m: dict, where: str) -> None:
    """The special ids against the tokenizer's own files (tokenizer.json's vocabulary and added tokens;
    tokenizer_config.json's token names and max length, where the bundle ships one)."""
    tok = m["tokenizer"]
    if not tok.get("tokenizer_json"):
        return
    path = bundle_dir / tok["tokenizer_json"]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        raw = data["model"]["vocab"]
        # BPE/WordPiece: {token: id}; Unigram: [[token, score], ...] with the position as the id
        vocab = dict(raw) if isinstance(raw, dict) else {entry[0]: i for i, entry in enumerate(raw)}
        vocab.update({t["content"]: t["id"] for t in data.get("added_tokens") or []})
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(f"{path}: not a readable tokenizer.json ({type(exc).__name__}: {exc})") from None
    ids = set(vocab.values())
    for key in ("bos_id", "eos_id", "pad_id"):
        if tok[key] not in ids:
            raise VerificationError(f"{where}: tokenizer.{key} {tok[key]} is not a token id of {path}")
    if "vocab_size" in tok and tok["vocab_size"] != len(ids):
        raise VerificationError(f"{where}: tokenizer.vocab_size {tok['vocab_size']}, but {path} holds {len(ids)} ids")
    names = {}
    config_path = path.parent / "tokenizer_config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise VerificationError(f"{config_path}: not valid JSON ({exc})") from None
        if isinstance(config, dict):
            names = {"bos_id": config.get("bos_token"), "eos_id": config.get("eos_token"),
                     "pad_id": config.get("pad_token")}
            if isinstance(config.get("model_max_length"), int) and config["model_max_length"] != tok["max_length"]:
                raise VerificationError(f"{where}: tokenizer.max_length {tok['max_length']}, but {config_path} says "
                                        f"model_max_length {config['model_max_length']}")
    post = data.get("post_processor") or {}
    if not names.get("eos_id") and isinstance(post.get("sep"), list):
        names["eos_id"] = post["sep"][0]
    if not names.get("bos_id") and isinstance(post.get("cls"), list):
        names["bos_id"] = post["cls"][0]
    for key, name in names.items():
        expected = _token_id(vocab, name)
        if expected is not None and expected != tok[key]:
            raise VerificationError(f"{where}: tokenizer.{key} {tok[key]}, but {path.parent.name}'s own files give "
                                    f"{expected} for {name if isinstance(name, str) else name.get('content')!r}")


def _check_geometry(m: dict, where: str) -> None:
    for name, width, entry in component_entries(m):
        problem = get_component(name).geometry_problem(entry, m["geometry"])
        if problem:
            label = f"components.{name}" + (f".widths.{width}" if width else "")
            raise VerificationError(f"{where}: {problem} ({label})")


def check_meaning(bundle_dir: Path | str, manifest: dict) -> None:
    """What the bytes mean: schedules recomputed from the scheduler config, tokenizer ids against the
    tokenizer's files, geometry against the components' shapes. Raises VerificationError naming the key."""
    bundle_dir = Path(bundle_dir)
    where = str(bundle_dir / MANIFEST)
    _check_geometry(manifest, where)
    _check_tokenizer(bundle_dir, manifest, where)
    _check_schedules(bundle_dir, manifest, where)


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
