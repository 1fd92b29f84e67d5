"""INT8 of an LCM-style UNet (time_cond_proj_dim, guided through its timestep_cond input): calibration
captures the guidance embedding, every quantize method feeds it, the ort-web INT8 bundle takes and
verifies it, and `edgekit package` ships it with a table the policy reads. Reduced SD-1.5 architecture,
random weights, few rows and steps."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import FAMILIES, build_family

GUIDANCE, DIM = FAMILIES["lcm"][4], FAMILIES["lcm"][2]["time_cond_proj_dim"]
STEPS, SAMPLES = 2, 3


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """torch's two-thread pool stalls when the cores are shared with other work: one reduced UNet forward
    measured 4.2 s on two threads vs 0.04 s on one (the sensitivity ranking runs ~50 of them)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lcm_model(sd15_reduced, tmp_path_factory) -> Path:
    return build_family(sd15_reduced, tmp_path_factory.mktemp("lcm") / "pipeline", "lcm")


@pytest.fixture(scope="module")
def lcm_calib(lcm_model, tmp_path_factory) -> Path:
    from edgekit.cli import main

    out = tmp_path_factory.mktemp("lcm_calib") / "calib"
    assert main(["calibrate", "--model", str(lcm_model), "--steps", str(STEPS), "--samples", str(SAMPLES),
                 "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def lcm_quantized(lcm_model, lcm_calib, tmp_path_factory) -> Path:
    """The UNet quantized by ort-static (the other components are quantized by the exporter)."""
    from edgekit.quantize import QuantizeOptions, quantize_model

    out = tmp_path_factory.mktemp("lcm_quant") / "q"
    quantize_model(lcm_model, lcm_calib, "ort-static", out, components=("unet",), options=QuantizeOptions())
    return out


def test_calibration_captures_the_guidance_embedding(lcm_calib):
    from edgekit.calibration import CalibrationSet
    from edgekit.schedule import guidance_embedding

    calib = CalibrationSet.open(lcm_calib)
    assert calib.meta["components"]["unet"]["inputs"]["timestep_cond"] == {"shape": [DIM], "dtype": "float32"}
    rows = calib.load("unet")
    assert len(rows["timestep_cond"]) == SAMPLES * STEPS  # one row per UNet call and sample: no CFG batch
    assert not rows["is_uncond"].any()
    expected = np.repeat(guidance_embedding(GUIDANCE, DIM)[None], len(rows["timestep_cond"]), axis=0)
    np.testing.assert_allclose(rows["timestep_cond"], expected, atol=1e-6)


def test_rows_without_the_guidance_embedding_are_refused(lcm_model, lcm_calib, tmp_path, run_cli):
    """Rows from a calibration that did not capture timestep_cond: one line, exit 2, before any quantize or
    export work."""
    old = tmp_path / "calib"
    shutil.copytree(lcm_calib, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["components"]["unet"]["inputs"]["timestep_cond"]
    (old / "meta.json").write_text(json.dumps(meta))
    for argv in (["quantize", "--model", lcm_model, "--calib", old, "--method", "ort-static", "--out", tmp_path / "q"],
                 ["export", "--model", lcm_model, "--target", "ort-web", "--precision", "int8", "--calib", old,
                  "--out", tmp_path / "b"]):
        code, _, err = run_cli(*argv)
        line = err.strip().splitlines()[-1]
        assert code == 2, err
        assert "no timestep_cond" in line and f"time_cond_proj_dim {DIM}" in line and str(old) in line, line
        assert not (tmp_path / "q").exists() and not (tmp_path / "b").exists()


def test_ort_static_int8_bundle_takes_and_verifies_the_guidance_embedding(lcm_model, lcm_calib, lcm_quantized,
                                                                          tmp_path):
    from edgekit.bundle import read_manifest
    from edgekit.runtime.verify import verify
    from edgekit.fsutil import sha256_file
    from edgekit.loader import open_model
    from edgekit.pipeline import generate
    from edgekit.profiles import shipped_profile
    from edgekit.runtime.sampler import BundleSampler
    from edgekit.targets.base import ExportRequest, export_bundle

    q = json.loads((lcm_quantized / "manifest.json").read_text())["components"]["unet"]
    print(f"LCM UNet ort-static INT8: held-out rel-err {q['heldout_rel_err']:.4f} over {q['heldout_rows']} rows")
    assert 1e-3 < q["heldout_rel_err"] < 0.3, q["heldout_rel_err"]  # really INT8, and still the same model
    assert "time_embedding.cond_proj" in {u["unit"] for u in q["sensitivity"]}  # the embedding's layer is reached

    # the quantize stage's own INT8 UNet runs in the pipeline, fed the embedding diffusers computes
    image = generate(open_model(lcm_quantized), ["a photo of a cat"], [0], 1, GUIDANCE)
    assert np.isfinite(image).all()

    out = tmp_path / "bundle"
    manifest = export_bundle(ExportRequest(model_dir=lcm_model, out=out, target="ort-web",
                                           profile=shipped_profile("web-ort").with_precision("int8"), calib_dir=lcm_calib, steps=(STEPS,),
                                           quantized_dirs=((1.0, lcm_quantized),)))
    unet = manifest["components"]["unet"]["widths"]["1.00"]
    assert unet["precision"] == "int8" and unet["quantization"]["from"] == "quantize stage"
    assert unet["quantization"]["sha256"] == sha256_file(lcm_quantized / "quantized" / "unet" / "model.onnx")
    assert {"name": "timestep_cond", "dtype": "float32", "shape": ["batch", DIM]} in unet["inputs"]
    record = manifest["verification"]["unet"]["widths"]["1.00"]
    assert record["inputs_from"] == "calibration rows" and "timestep_cond" in record["data"]["inputs"]
    errors = {c["runtime"]: c["rel_err"] for c in record["checks"] if "rel_err" in c}
    print("LCM UNet INT8 bundle vs torch fp32:", errors)
    assert errors and all(1e-3 < e <= record["tolerance"] for e in errors.values())
    assert manifest["sampling"]["guidance_embedding"]["dim"] == DIM
    rechecked = verify(out)["checks"]  # the stored embedding rows replayed as a device would
    assert {c["component"] for c in rechecked if "rel_err" in c} >= {"unet@1.00"}
    images, _ = BundleSampler(out).generate(["a photo of a cat"], [0], STEPS, 1.0)
    assert images.shape[0] == 1 and np.isfinite(images).all()
    assert read_manifest(out)["precision"] == "int8"


def test_export_int8_from_calibration_rows(lcm_model, lcm_calib, tmp_path, run_cli):
    """`edgekit export --precision int8 --calib`: the exporter quantizes every graph itself, the UNet's with
    the captured guidance embeddings."""
    from edgekit.bundle import read_manifest

    out = tmp_path / "bundle"
    code, _, err = run_cli("export", "--model", lcm_model, "--target", "ort-web", "--precision", "int8", "--calib",
                           lcm_calib, "--steps", str(STEPS), "--out", out)
    assert code == 0, err
    manifest = read_manifest(out)
    unet = manifest["components"]["unet"]["widths"]["1.00"]
    # every captured row, split as the quantize stage splits them (calibrated on / held out to measure)
    assert unet["quantization"]["calibration_rows"] + unet["quantization"]["heldout_rows"] == SAMPLES * STEPS
    assert "timestep_cond" in [t["name"] for t in unet["inputs"]]
    record = manifest["verification"]["unet"]["widths"]["1.00"]
    errors = [c["rel_err"] for c in record["checks"] if "rel_err" in c]
    assert errors and all(1e-3 < e <= record["tolerance"] for e in errors), errors


@pytest.mark.parametrize("method", ["fx", "nncf"])
def test_other_methods_feed_the_guidance_embedding(lcm_model, lcm_calib, tmp_path, method):
    from edgekit.loader import open_model
    from edgekit.pipeline import generate
    from edgekit.quantize import get_quantizer, quantize_model

    if method == "nncf":
        pytest.importorskip("nncf")
    get_quantizer(method).check_backend()
    manifest = quantize_model(lcm_model, lcm_calib, method, tmp_path / "q", components=("unet",))
    err = manifest["components"]["unet"]["heldout_rel_err"]
    print(f"LCM UNet {method} INT8: held-out rel-err {err:.4f}")
    assert 1e-3 < err < 0.3, err
    image = generate(open_model(tmp_path / "q"), ["a photo of a cat"], [0], 1, GUIDANCE)
    assert np.isfinite(image).all()


def test_package_ships_an_int8_lcm_bundle_with_a_table_the_policy_reads(lcm_model, tmp_path, run_cli):
    from edgekit.bundle import read_manifest
    from edgekit.policy import DeviceState, Policy

    out = tmp_path / "pkg"
    code, _, err = run_cli("package", "--model", lcm_model, "--targets", "ort-web", "--widths", "1.0",
                           "--steps", str(STEPS), "--samples", "2", "--repeats", "1", "--calib-samples", "2",
                           "--out", out, "--json")
    assert code == 0, err
    manifest = read_manifest(out / "ort-web")
    unet = manifest["components"]["unet"]["widths"]["1.00"]
    assert unet["precision"] == "int8" and unet["quantization"]["from"] == "quantize stage"
    assert manifest["sampling"]["guidance_mode"] == "embedding"
    [row] = manifest["table"]
    assert (row["width"], row["steps"]) == (1.0, STEPS) and row["latency_ms"] > 0
    assert row["quality"]["evaluator"] == "reference-fidelity" and row["quality"]["value"] < 100.0
    decision = Policy.from_manifest(manifest).decide(
        0.0, DeviceState(battery_level=1.0, charging=True, low_power=False, thermal="nominal"))
    assert (decision.width, decision.steps) == (1.0, STEPS)
