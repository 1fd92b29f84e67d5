"""edgekit.bundle without any converter: the manifest schema, write_manifest (sha256 of every file,
atomic, written last), read_manifest errors, and verify_files catching changed, missing and added files."""
import copy
import json

import numpy as np
import pytest

from edgekit.bundle import (FORMAT_VERSION, check_manifest, load_array, read_manifest, save_array, verify_files,
                            width_key, write_manifest)
from edgekit.errors import InputError, VerificationError

ENTRY = {"format": "onnx", "precision": "fp32", "layout": "NCHW", "bytes": 4,
         "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
         "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}]}


def _entry(rel):
    return {**ENTRY, "file": rel, "files": [rel]}


def _manifest():
    return {
        "format_version": FORMAT_VERSION, "stage": "export", "target": "ort-web", "profile": {"name": "web-ort"},
        "created_with": {"edgekit": "test"}, "source_model": {"name": "m", "sha256": "0" * 64},
        "precision": "fp32",
        "components": {"text_encoder": _entry("text_encoder/model.onnx"),
                       "unet": {"widths": {"1.00": _entry("unet/w1.00/model.onnx"),
                                           "0.50": _entry("unet/w0.50/model.onnx")}},
                       "vae_decoder": _entry("vae_decoder/model.onnx")},
        "widths": [1.0, 0.5],
        "geometry": {"image_size": 32, "latent_shape": [4, 8, 8], "vae_scale_factor": 4, "vae_scaling_factor": 0.18},
        "tokenizer": {"files": ["tokenizer/tokenizer.json"], "max_length": 16, "bos_id": 0, "eos_id": 1, "pad_id": 1},
        "scheduler": {"config": {"_class_name": "DDIMScheduler"}},
        "sampling": {"guidance_scale": 4.0, "default_steps": 4, "batching": "batch2",
                     "schedules": {"4": {"steps": 4, "timesteps": [999, 749, 499, 249]}}},
        "verification": {}, "table": [], "policy": {}, "files": {},
    }


@pytest.fixture
def bundle(tmp_path):
    root = tmp_path / "bundle"
    for rel in ("text_encoder/model.onnx", "unet/w1.00/model.onnx", "unet/w0.50/model.onnx",
                "vae_decoder/model.onnx", "tokenizer/tokenizer.json"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    written = write_manifest(root, _manifest())
    return root, written


def test_write_manifest_lists_every_file_with_sha256_and_is_readable(bundle):
    root, written = bundle
    assert set(written["files"]) == {"text_encoder/model.onnx", "unet/w1.00/model.onnx", "unet/w0.50/model.onnx",
                                     "vae_decoder/model.onnx", "tokenizer/tokenizer.json"}
    import hashlib

    for rel, info in written["files"].items():
        assert info["sha256"] == hashlib.sha256((root / rel).read_bytes()).hexdigest()
        assert info["bytes"] == (root / rel).stat().st_size
    assert read_manifest(root) == written
    assert verify_files(root, written) == 5
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_write_manifest_refuses_to_renew_a_changed_file(bundle):
    root, written = bundle
    before = (root / "manifest.json").read_bytes()
    (root / "vae_decoder/model.onnx").write_bytes(b"new weights")
    with pytest.raises(VerificationError, match="vae_decoder/model.onnx: .*bytes, manifest.json says"):
        write_manifest(root, written)
    assert (root / "manifest.json").read_bytes() == before


def test_flipped_byte_missing_and_extra_files_are_named(bundle):
    root, written = bundle
    target = root / "unet/w0.50/model.onnx"
    data = bytearray(target.read_bytes())
    data[0] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match=r"unet/w0.50/model.onnx: sha256 differs"):
        verify_files(root, written)
    target.unlink()
    with pytest.raises(VerificationError, match=r"unet/w0.50/model.onnx: missing"):
        verify_files(root, written)
    target.write_bytes(b"unet/w0.50/model.onnx")
    (root / "stray.bin").write_bytes(b"x")
    with pytest.raises(VerificationError, match="stray.bin: not listed"):
        verify_files(root, written)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("sampling"), "missing key 'sampling'"),
    (lambda m: m.update(stage="quantize"), "stage 'quantize'"),
    (lambda m: m.update(widths=[1.0]), "do not match widths"),
    (lambda m: m["components"]["text_encoder"].pop("inputs"), "components.text_encoder.inputs"),
    (lambda m: m["sampling"].update(batching="batch3"), "sampling.batching"),
    (lambda m: m["sampling"]["schedules"].update({"8": {"steps": 4, "timesteps": [1]}}), r"schedules\['8'\]"),
    (lambda m: m.update(extra=1), "unknown key"),
    (lambda m: m["components"]["unet"]["widths"]["1.00"].update(format="pt"), "format 'pt'"),
])
def test_schema_errors_name_the_key(bundle, edit, message):
    root, written = bundle
    broken = copy.deepcopy(written)
    edit(broken)
    (root / "manifest.json").write_text(json.dumps(broken))
    with pytest.raises(InputError, match=message):
        read_manifest(root)


def test_read_manifest_refuses_non_bundles(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        read_manifest(tmp_path / "absent")
    with pytest.raises(InputError, match="manifest.json missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_check_manifest_accepts_the_written_manifest(bundle):
    check_manifest(bundle[1], "here")


def test_arrays_round_trip_as_raw_little_endian(tmp_path):
    for arr in (np.arange(12, dtype=np.int64).reshape(3, 4), np.linspace(-1, 1, 10, dtype=np.float32)):
        record = save_array(tmp_path, "v/a.bin", arr)
        assert (tmp_path / "v/a.bin").stat().st_size == arr.nbytes
        np.testing.assert_array_equal(load_array(tmp_path, record), arr)


def test_width_keys():
    assert width_key(1) == "1.00" and width_key(0.5) == "0.50" and width_key(0.75) == "0.75"


def test_manifest_is_strict_json_even_with_infinite_scheduler_values(bundle):
    from edgekit.bundle import scheduler_config

    root, written = bundle
    manifest = copy.deepcopy(written)
    manifest["scheduler"]["config"]["lambda_min_clipped"] = float("-inf")
    again = write_manifest(root, manifest)
    text = (root / "manifest.json").read_text()
    assert "-Infinity\"" in text and "NaN" not in text.replace('"NaN"', "")
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert scheduler_config(again)["lambda_min_clipped"] == float("-inf")
