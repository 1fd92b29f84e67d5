"""edgekit quantize: three methods on the embedded model, fed by a real calibration capture; the quantized
directory loads as a pipeline whose components run INT8; bad input fails in one line with nothing written."""
import json
import shutil

import numpy as np
import pytest

from edgekit.errors import CalibrationError, InputError, MissingBackendError
from edgekit.quantize import (QUANTIZERS, QuantizeOptions, Quantizer, get_quantizer, methods, parse_components,
                              quantize_model, split_rows)
from edgekit.quantize.ort_static import node_module_path
from edgekit.quantize.sensitivity import select_float_units, unit_of

@pytest.fixture(scope="session")
def calib_dir(default_pipe, default_model, tmp_path_factory):
    """A small real capture: 3 prompts x 4 steps with guidance (30 UNet calls kept)."""
    from edgekit.calibration import CalibrationConfig, capture

    out = tmp_path_factory.mktemp("qcalib") / "calib"
    out.mkdir()
    config = CalibrationConfig(prompts=("a handwritten digit three", "a handwritten digit seven", "handwritten 0"),
                               steps=4, guidance_scale=4.0, seed=3,
                               max_rows={"text_encoder": 8, "unet": 32, "vae_decoder": 4}, batch_size=3)
    capture(default_pipe, config, out, default_model)
    return out


_BUILT = {}


def _quantized(method, components, default_model, calib_dir, root, **options):
    key = (method, components)
    if key not in _BUILT:
        out = root / f"q-{method}-{'-'.join(components)}"
        manifest = quantize_model(default_model, calib_dir, method, out, components=components,
                                  options=QuantizeOptions(sensitivity_rows=2, **options))
        _BUILT[key] = (out, manifest)
    return _BUILT[key]


@pytest.fixture(scope="session")
def qroot(tmp_path_factory):
    return tmp_path_factory.mktemp("quantized")


@pytest.fixture(scope="session")
def ort_static(default_model, calib_dir, qroot):
    return _quantized("ort-static", ("unet", "text_encoder", "vae_decoder"), default_model, calib_dir, qroot,
                      float_budget=0.05)


@pytest.fixture(scope="session")
def fx_quant(default_model, calib_dir, qroot):
    return _quantized("fx", ("unet", "text_encoder"), default_model, calib_dir, qroot)


@pytest.fixture(scope="session")
def nncf_text(default_model, calib_dir, qroot):
    return _quantized("nncf", ("text_encoder",), default_model, calib_dir, qroot)


def _heldout(default_pipe, calib_dir, default_model, component, manifest):
    """The held-out rows the manifest's error was measured on, and the FP32 torch outputs on them."""
    from edgekit.calibration import CalibrationSet
    from edgekit.components import component_spec, export_module, inputs_from_calibration, run_torch

    rows = CalibrationSet.open(calib_dir, default_model).load(component)
    n = len(next(iter(rows.values())))
    opts = manifest["options"]
    _, held = split_rows(n, opts["holdout"], opts["seed"])
    spec = component_spec(default_pipe, component)
    inputs = inputs_from_calibration(spec, rows, held)
    return inputs, run_torch(export_module(default_pipe, component), spec, inputs)


# ---------------------------------------------------------------- registry, options, pure helpers

def test_registry_names_and_errors():
    assert methods() == ["fx", "nncf", "ort-static"]
    assert get_quantizer("ort-static").artifact_kind == "onnx"
    assert get_quantizer("fx").artifact_kind == "torch-fx"
    with pytest.raises(InputError, match="did you mean 'nncf'"):
        get_quantizer("ncff")

    class Again(Quantizer):
        name = "nncf"

    with pytest.raises(ValueError, match="registered twice"):
        QUANTIZERS.add("nncf", Again)
    assert get_quantizer("nncf").name == "nncf" and type(get_quantizer("nncf")) is not Again

    class Missing(Quantizer):
        name = "needs-missing-lib"
        backend_module = "edgekit_no_such_library"
        pip_package = "edgekit-no-such-library"

    with pytest.raises(MissingBackendError, match="pip install edgekit-no-such-library"):
        Missing().check_backend()


def test_options_are_strict_and_round_trip():
    opts = QuantizeOptions(calibrate_method="entropy", activations="int16", exclude=("conv_in",), float_budget=0.1)
    assert QuantizeOptions.from_dict(opts.to_dict()) == opts
    with pytest.raises(InputError, match="did you mean 'float_budget'"):
        QuantizeOptions.from_dict({"float_budgte": 0.1})
    with pytest.raises(InputError, match="calibrate_method mse"):
        QuantizeOptions(calibrate_method="mse")
    with pytest.raises(InputError, match="activations int4"):
        QuantizeOptions(activations="int4")
    with pytest.raises(InputError, match="float_budget 1.5"):
        QuantizeOptions(float_budget=1.5)
    assert parse_components("unet, vae_decoder") == ("unet", "vae_decoder")
    with pytest.raises(InputError, match="did you mean 'vae_decoder'"):
        parse_components("unet,vae")


def test_units_and_budget_selection():
    assert unit_of("down_blocks.0.resnets.1.conv1") == "down_blocks.0.resnets.1"
    assert unit_of("mid_block.attentions.0.transformer_blocks.0.attn1.to_q") == "mid_block.attentions.0"
    assert unit_of("encoder.layers.3.mlp.fc1") == "encoder.layers.3"
    assert unit_of("conv_in") == "conv_in"
    assert unit_of("time_embedding.linear_1") == "time_embedding.linear_1"
    ranking = [{"unit": "a", "rel_err": 0.3, "weights": 50}, {"unit": "b", "rel_err": 0.2, "weights": 5},
               {"unit": "c", "rel_err": 0.1, "weights": 45}]
    assert select_float_units(ranking, 0.0) == []
    assert select_float_units(ranking, 0.1) == ["b"]  # "a" is worst but does not fit 10 of 100 weights
    assert select_float_units(ranking, 0.6) == ["a", "b"]
    assert select_float_units(ranking, 0.6, already=["a"]) == ["b"]


def test_onnx_scope_names_map_to_module_paths():
    assert node_module_path("/unet/down_blocks.0/resnets.0/conv1/Conv") == "down_blocks.0.resnets.0.conv1"
    assert node_module_path("/unet/conv_in/Conv") == "conv_in"
    assert node_module_path("Constant_12") is None


def test_split_rows_is_disjoint_and_seeded():
    cal, held = split_rows(24, 0.25, 0)
    assert len(held) == 6 and len(cal) == 18 and not set(cal) & set(held)
    assert (split_rows(24, 0.25, 0)[1] == held).all()
    with pytest.raises(CalibrationError, match="at least 2"):
        split_rows(1, 0.25, 0)


# ---------------------------------------------------------------- ort-static

def test_ort_static_directory_and_manifest(ort_static, default_model, calib_dir):
    import onnx
    from onnx import numpy_helper

    from edgekit.fsutil import sha256_file
    from edgekit.pipeline import check_model_dir

    out, manifest = ort_static
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["stage"] == "quantize" and on_disk["method"] == "ort-static"
    assert on_disk["calibration"]["meta_sha256"] == sha256_file(calib_dir / "meta.json")
    assert on_disk["options"]["calibrate_method"] == "minmax"
    check_model_dir(out)  # the float copy keeps the directory a loadable diffusers pipeline
    unet = on_disk["components"]["unet"]
    rows = json.loads((calib_dir / "meta.json").read_text())["components"]["unet"]["rows"]
    assert unet["calibration_rows"] + unet["heldout_rows"] == rows and unet["heldout_rows"] >= rows // 5
    assert 0 < unet["heldout_rel_err"] < 0.2
    ranking = unet["sensitivity"]
    assert [r["rel_err"] for r in ranking] == sorted((r["rel_err"] for r in ranking), reverse=True)
    assert {"conv_in", "conv_out"} <= {r["unit"] for r in ranking}
    kept = unet["float_units"]["kept_by_budget"]
    assert kept and sum(r["weights"] for r in ranking if r["unit"] in kept) <= 0.05 * sum(r["weights"] for r in ranking)
    model = onnx.load(str(out / unet["files"][0]))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    int8 = sum(a.nbytes for a in init.values() if a.dtype == np.int8)
    assert int8 > 0.7 * unet["fp32_weight_bytes"] / 4
    # A layer kept in float keeps float32 weights feeding its Conv/MatMul directly.
    # Layers of the units kept in float feed their Conv/MatMul float32 weights directly (no DequantizeLinear).
    float_weight_ops = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                        and any(i in init and init[i].dtype == np.float32 and init[i].ndim >= 2 for i in n.input)]
    # (a few kept linears lose their own node to onnxsim's folding, so at most one op per kept layer)
    assert 0 < len(float_weight_ops) <= sum(r["layers"] for r in ranking if r["unit"] in kept)
    assert unet["report"]["names_compacted_bytes"] > 0
    for name in ("text_encoder", "vae_decoder"):
        assert on_disk["components"][name]["heldout_rel_err"] < 0.2


def test_ort_static_pipeline_generates_through_onnxruntime(ort_static, default_pipe, default_model, calib_dir):
    from edgekit.loader import open_model
    from edgekit.pipeline import generate
    from edgekit.quality import relative_error
    from edgekit.components.text_encoder import TextEncoderStandIn
    from edgekit.components.unet import UNetStandIn
    from edgekit.components.vae_decoder import VaeWithDecoderStandIn

    out, manifest = ort_static
    pipe = open_model(out)
    assert isinstance(pipe.unet, UNetStandIn) and isinstance(pipe.text_encoder, TextEncoderStandIn)
    assert isinstance(pipe.vae, VaeWithDecoderStandIn)
    inputs, reference = _heldout(default_pipe, calib_dir, default_model, "unet", manifest)
    import torch

    with torch.no_grad():
        again = pipe.unet(torch.from_numpy(inputs["sample"]), torch.from_numpy(inputs["timestep"]),
                          torch.from_numpy(inputs["encoder_hidden_states"]), return_dict=False)[0].numpy()
    assert relative_error(again, reference) == pytest.approx(manifest["components"]["unet"]["heldout_rel_err"],
                                                              rel=1e-4)
    images = generate(pipe, ["a handwritten digit four"] * 2, [5, 6], 4, 4.0)
    float_images = generate(default_pipe, ["a handwritten digit four"] * 2, [5, 6], 4, 4.0)
    assert images.shape == float_images.shape
    diff = float(np.abs(images - float_images).mean())
    assert 0 < diff < 0.1


# ---------------------------------------------------------------- fx

def test_fx_reloads_to_the_same_int8_model(fx_quant, default_pipe, default_model, calib_dir):
    import torch

    from edgekit.components import component_spec, export_module, run_torch
    from edgekit.loader import open_model
    from edgekit.quality import relative_error

    out, manifest = fx_quant
    unet_info = manifest["components"]["unet"]
    assert unet_info["kind"] == "torch-fx" and unet_info["report"]["quantized_layers"] > 20
    assert unet_info["bytes_ratio_vs_fp32"] < 0.3
    pipe = open_model(out)
    kinds = {type(m).__module__ for m in pipe.unet.modules()}
    assert any(k.startswith("torch.ao.nn.quantized") for k in kinds) or any(
        "quantized" in str(n.target) for m in pipe.unet.modules() if isinstance(m, torch.fx.GraphModule)
        for n in m.graph.nodes)
    inputs, reference = _heldout(default_pipe, calib_dir, default_model, "unet", manifest)
    again = run_torch(export_module(pipe, "unet"), component_spec(pipe, "unet"), inputs)
    assert relative_error(again, reference) == pytest.approx(unet_info["heldout_rel_err"], rel=1e-4)
    assert 0 < unet_info["heldout_rel_err"] < 0.2


# ---------------------------------------------------------------- nncf

def _check_nncf(out, info):
    import onnx

    assert info["kind"] == "onnx" and info["report"]["quantize_linear_nodes"] > 5
    ops = {n.op_type for n in onnx.load(str(out / info["files"][0])).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert 0 < info["heldout_rel_err"] < 0.2


def test_nncf_text_encoder_is_a_transformer_qdq_model(nncf_text):
    out, manifest = nncf_text
    info = manifest["components"]["text_encoder"]
    _check_nncf(out, info)
    assert info["report"]["model_type"] == "transformer"


@pytest.mark.slow
def test_nncf_unet(default_model, calib_dir, qroot):
    out, manifest = _quantized("nncf", ("unet",), default_model, calib_dir, qroot)
    info = manifest["components"]["unet"]
    _check_nncf(out, info)
    assert info["bytes_ratio_vs_fp32"] < 0.35


# ---------------------------------------------------------------- CLI and eval end to end

def test_cli_quantize_and_eval_through_int8(run_cli, default_model, calib_dir, tmp_path):
    out = tmp_path / "q"
    code, stdout, err = run_cli("quantize", "--method", "ort-static", "--calib", calib_dir, "--components", "unet",
                                "--exclude", "conv_out", "--float-budget", "0", "--calibrate-method", "percentile",
                                "--out", out, "--json")
    assert code == 0, err
    payload = json.loads(stdout)  # nothing but the JSON object on stdout (the calibrators' prints go to stderr)
    assert payload["components"]["unet"]["float_units"] == ["conv_out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["activations"] == "uint8" and manifest["options"]["calibrate_method"] == "percentile"
    code, stdout, err = run_cli("eval", "--model", out, "--samples-per-digit", "1", "--steps", "4", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["n_images"] == 10 and 0.0 <= report["prompt_accuracy"] <= 1.0
    code, _, err = run_cli("eval", "--model", out, "--width", "0.5", "--samples-per-digit", "1")
    assert code == 2 and "quantized at width 1.0" in err


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing written

def _nothing_written(tmp_path, out):
    return not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["missing", "empty", "unknown-method", "unknown-component", "bad-option"])
def test_bad_input_is_one_line_exit_2(case, run_cli, calib_dir, tmp_path):
    out = tmp_path / "q"
    calib = {"missing": tmp_path / "nope", "empty": tmp_path / "empty"}.get(case, calib_dir)
    (tmp_path / "empty").mkdir()
    args = {"unknown-method": ["--method", "awq"], "unknown-component": ["--method", "fx", "--components", "unet,vea"],
            "bad-option": ["--method", "ort-static", "--calibrate-method", "mse"]}.get(case, ["--method", "fx"])
    code, stdout, err = run_cli("quantize", *args, "--calib", calib, "--out", out)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "error" in err
    expected = {"missing": "no such directory", "empty": "meta.json missing", "unknown-method": "unknown quantize method",
                "unknown-component": "unknown component 'vea'", "bad-option": "--calibrate-method"}[case]
    assert expected in err
    assert _nothing_written(tmp_path, out)


def test_calibration_of_another_model_or_other_shapes(run_cli, calib_dir, sd15_reduced, tmp_path):
    out = tmp_path / "q"
    code, _, err = run_cli("quantize", "--model", sd15_reduced, "--method", "ort-static", "--calib", calib_dir,
                           "--out", out)
    assert code == 2 and "another model" in err and _nothing_written(tmp_path, out)
    bent = tmp_path / "calib"
    shutil.copytree(calib_dir, bent)
    meta = json.loads((bent / "meta.json").read_text())
    meta["components"]["unet"]["inputs"]["sample"]["shape"] = [4, 16, 16]
    (bent / "meta.json").write_text(json.dumps(meta))
    code, _, err = run_cli("quantize", "--method", "ort-static", "--calib", bent, "--components", "unet", "--out", out)
    assert code == 2 and "sample of shape [4, 16, 16]" in err and _nothing_written(tmp_path, out)


def test_missing_backend_names_the_package(run_cli, calib_dir, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a))
    out = tmp_path / "q"
    code, _, err = run_cli("quantize", "--method", "nncf", "--calib", calib_dir, "--out", out)
    assert code == 2 and "pip install nncf" in err and _nothing_written(tmp_path, out)
