"""The tflite target: .tflite files with no Flex ops that the stock LiteRT interpreter (ai_edge_litert)
loads and that match torch, in float32, float16 and full-integer INT8 (representative rows).

Default tests convert the text encoder only (seconds); the whole bundle with the UNet, and INT8 from
real calibration shards, are slow tests."""
import json

import numpy as np
import pytest

from edgekit.bundle import read_manifest
from edgekit.profiles import shipped_profile
from edgekit.targets import get_target
from edgekit.targets.base import ComponentJob


@pytest.fixture(scope="module")
def pipe(sd15_reduced):
    from edgekit.loader import open_model

    return open_model(sd15_reduced)


def _write_and_check(pipe, tmp_path, precision, calibration=None, name="text_encoder", batch=1):
    from edgekit.components import component_spec, example_inputs, export_module, run_torch

    target = get_target("tflite")
    profile = shipped_profile("android-tflite").with_precision(precision)
    job = ComponentJob(pipe, name, None, name, batch, precision, calibration)
    entry = target.write(job, tmp_path, profile)
    inputs = example_inputs(pipe, name, batch=batch, seed=5)
    expected = run_torch(export_module(pipe, name), component_spec(pipe, name), inputs)
    checks = target.check(tmp_path, entry, inputs, expected, profile)
    return entry, checks[0]


def test_float32_text_encoder_has_no_flex_ops_and_matches(pipe, tmp_path):
    entry, check = _write_and_check(pipe, tmp_path, "fp32")
    assert entry["flex_ops"] == [] and "FULLY_CONNECTED" in entry["ops"]
    assert entry["inputs"] == [{"name": "input_ids", "dtype": "int32", "shape": [1, 77]}]
    assert entry["outputs"][0]["name"] == "last_hidden_state" and entry["layout"] == "NCHW"
    assert check["runtime"].startswith("ai_edge_litert") and check["rel_err"] < 1e-4


def test_float16_and_int8(pipe, tmp_path):
    from edgekit.components import example_inputs

    f32, _ = _write_and_check(pipe, tmp_path / "f32", "fp32")
    f16, check16 = _write_and_check(pipe, tmp_path / "f16", "fp16")
    assert "DEQUANTIZE" in f16["ops"] and 1e-6 < check16["rel_err"] < 2e-2
    assert (tmp_path / "f16" / f16["file"]).stat().st_size < 0.6 * (tmp_path / "f32" / f32["file"]).stat().st_size
    # the profile keeps the text encoder's activations float in INT8 bundles: int8 weights only
    rows = example_inputs(pipe, "text_encoder", batch=16, seed=7)
    te8, check_te8 = _write_and_check(pipe, tmp_path / "te8", "int8", calibration=rows)
    assert "dynamic range" in te8["recipe"] and te8["outputs"][0]["dtype"] == "float32"
    assert 1e-4 < check_te8["rel_err"] < 0.1
    assert (tmp_path / "te8" / te8["file"]).stat().st_size < 0.6 * (tmp_path / "f32" / f32["file"]).stat().st_size


def test_full_integer_int8_vae_decoder(pipe, tmp_path):
    import dataclasses

    from edgekit.components import example_inputs
    from edgekit.profiles import LiteRTInt8Recipe

    rows = example_inputs(pipe, "vae_decoder", batch=16, seed=7)
    # the shipped recipe: int8 conv/FC ops inside, float at the graph's edges and in GroupNorm statistics
    entry, check = _write_and_check(pipe, tmp_path / "recipe", "int8", calibration=rows, name="vae_decoder")
    assert entry["representative_batches"] == 16 and entry["flex_ops"] == []
    assert "CONV_2D" in entry["recipe"] and entry["ops"].get("QUANTIZE") and entry["ops"].get("DEQUANTIZE")
    assert entry["inputs"][0]["dtype"] == "float32" and "io_quantization" not in entry
    assert entry["tensor_name_bytes_saved"] > 0
    assert 1e-3 < check["rel_err"] < 0.2  # really int8 activations, still the same function
    # every op int8 (the recipe before issue 15): int8 inputs and outputs with (scale, zero point)
    target = get_target("tflite")
    base = shipped_profile("android-tflite").with_precision("int8")
    profile = dataclasses.replace(base, int8_recipe=LiteRTInt8Recipe())
    every = target.write(ComponentJob(pipe, "vae_decoder", None, "all", 1, "int8", rows), tmp_path / "all", profile)
    assert every["inputs"][0]["dtype"] == "int8" and every["outputs"][0]["dtype"] == "int8"
    assert set(every["io_quantization"]) == {"latent_sample", "sample"}


def test_forbidden_ops_rule_reads_the_flatbuffer(pipe, tmp_path):
    from edgekit.profiles import OpRules
    from edgekit.targets.tflite import tflite_ops

    entry, _ = _write_and_check(pipe, tmp_path, "fp32")
    ops = tflite_ops(tmp_path / entry["file"])
    assert sum(ops.values()) > 10 and ops == entry["ops"]
    assert OpRules(("FULLY*",)).violations(ops) == ["FULLY_CONNECTED"]


@pytest.mark.slow
def test_tflite_bundle_with_unet_loads_in_stock_litert(sd15_reduced, tmp_path, run_cli):
    out = tmp_path / "tflite"
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "tflite", "--out", out)
    assert code == 0, err
    m = read_manifest(out)
    unet = m["components"]["unet"]["widths"]["1.00"]
    assert unet["flex_ops"] == [] and unet["converter"].startswith("litert-torch")
    assert [t["shape"] for t in unet["inputs"]] == [[2, 4, 8, 8], [2], [2, 77, 64]]
    assert m["verification"]["unet"]["widths"]["1.00"]["checks"][0]["rel_err"] < 1e-4
    code, out_json, err = run_cli("verify", out, "--json")
    assert code == 0, err
    assert [c["component"] for c in json.loads(out_json)["checks"]] == ["text_encoder", "unet@1.00", "vae_decoder"]


@pytest.mark.slow
def test_tflite_int8_bundle_from_calibration_shards(sd15_reduced, sd15_calib, tmp_path, run_cli):
    out = tmp_path / "int8"
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "tflite", "--precision", "int8",
                           "--calib", sd15_calib, "--out", out)
    assert code == 0, err
    m = read_manifest(out)
    unet = m["components"]["unet"]["widths"]["1.00"]
    assert unet["precision"] == "int8" and unet["flex_ops"] == []
    # the shipped recipe: int8 conv/FC ops inside, float at the graph's edges (no io quantization)
    assert "CONV_2D" in unet["recipe"] and unet["ops"].get("QUANTIZE") and unet["ops"].get("DEQUANTIZE")
    assert unet["inputs"][0]["dtype"] == "float32" and "io_quantization" not in unet
    assert "dynamic range" in m["components"]["text_encoder"]["recipe"]
    assert m["verification"]["unet"]["widths"]["1.00"]["inputs_from"] == "calibration rows"
    assert run_cli("verify", out)[0] == 0
