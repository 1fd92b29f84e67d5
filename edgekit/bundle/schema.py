"""What a bundle manifest must hold: its schema (keys, types, consistency), its ``integrity`` record, and its
meaning (schedules recomputed from the scheduler config, tokenizer ids looked up in the tokenizer files it names,
geometry against the components' shapes). The format is described in edgekit.bundle, which reads, writes and
verifies bundles on disk."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np

from edgekit.components import BUNDLE_COMPONENTS, all_components, get_component
from edgekit.constants import FORMATS, MANIFEST
from edgekit.errors import InputError, VerificationError
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
