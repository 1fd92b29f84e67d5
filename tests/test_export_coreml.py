"""The coreml target: mlprogram packages for iOS 16+ with fixed shapes, fp16 compute, int8 linear
weights (w8) or 6-bit palettized weights, checked structurally on Linux (inputs, outputs, shapes, op
types, how weights are stored); on macOS the same check also predicts and compares with torch."""
import platform

import pytest

from edgekit.bundle import read_manifest
from edgekit.profiles import shipped_profile
from edgekit.targets import get_target
from edgekit.targets.base import ComponentJob


@pytest.fixture(scope="module")
def pipe(sd15_reduced):
    from edgekit.loader import open_model

    return open_model(sd15_reduced)


def _write(pipe, tmp_path, precision, name="text_encoder"):
    from edgekit.components import component_spec, example_inputs, export_module, run_torch

    target = get_target("coreml")
    profile = shipped_profile("ios-coreml").with_precision(precision)
    entry = target.write(ComponentJob(pipe, name, None, name, 1, precision), tmp_path, profile)
    inputs = example_inputs(pipe, name, batch=1, seed=2)
    expected = run_torch(export_module(pipe, name), component_spec(pipe, name), inputs)
    return entry, target.check(tmp_path, entry, inputs, expected, profile)


@pytest.mark.parametrize("precision, marker", [("fp16", None), ("w8", "constexpr_affine_dequantize"),
                                               ("palettize6", "constexpr_lut_to_dense")])
def test_text_encoder_package_structure(pipe, tmp_path, precision, marker):
    entry, checks = _write(pipe, tmp_path, precision)
    assert (tmp_path / entry["file"] / "Manifest.json").is_file()
    assert entry["inputs"] == [{"name": "input_ids", "dtype": "int32", "shape": [1, 77]}]
    assert entry["outputs"] == [{"name": "last_hidden_state", "dtype": "float32", "shape": [1, 77, 64]}]
    assert entry["const_dtypes"].get("float16", 0) > 0
    if marker:
        assert entry["ops"].get(marker, 0) > 0
    assert checks[0]["passed"]
    if platform.system() == "Darwin":
        assert checks[1]["rel_err"] < shipped_profile("ios-coreml").tolerance.for_precision(precision)
    else:
        assert "macOS" in checks[1]["skipped"]


def test_structure_check_catches_a_false_claim(pipe, tmp_path):
    from edgekit.runtime.runners import inspect_mlpackage
    from edgekit.targets.coreml import structure_problems

    entry, _ = _write(pipe, tmp_path, "fp16")
    info = inspect_mlpackage(tmp_path / entry["file"])
    assert structure_problems(info, entry) == []
    assert "no constexpr_lut_to_dense" in structure_problems(info, {**entry, "precision": "palettize6"})[0]
    wrong = {**entry, "inputs": [{"name": "input_ids", "dtype": "int32", "shape": [2, 77]}]}
    assert "[2, 77]" in structure_problems(info, wrong)[0]


@pytest.mark.slow
def test_coreml_bundle_with_unet(sd15_reduced, tmp_path, run_cli):
    out = tmp_path / "coreml"
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "coreml", "--precision", "palettize6",
                           "--out", out)
    assert code == 0, err
    m = read_manifest(out)
    unet = m["components"]["unet"]["widths"]["1.00"]
    assert unet["minimum_deployment_target"] == "iOS16" and unet["ops"]["constexpr_lut_to_dense"] > 0
    assert [t["shape"] for t in unet["inputs"]] == [[2, 4, 8, 8], [2], [2, 77, 64]]
    assert run_cli("verify", out)[0] == 0
