"""INT8 that keeps its quality: the LiteRT per-unit recipe, Core ML W8A8 and mixed-bit palettization, the
per-target precision table, and the recipe's bad input (one line naming the field, exit 2, nothing written).

Default tests convert the reduced SD-1.5 text encoder or nothing; UNet conversions are slow tests."""
from collections import Counter

import numpy as np
import pytest

from edgekit.errors import InputError
from edgekit.profiles import shipped_profile
from edgekit.targets import get_target
from edgekit.targets.base import ComponentJob


@pytest.fixture(scope="module")
def pipe(sd15_reduced):
    from edgekit.loader import open_model

    return open_model(sd15_reduced)


def _rows(pipe, name, n=8):
    from edgekit.components import example_inputs

    return example_inputs(pipe, name, batch=n, seed=3)


# ---------------------------------------------------------------- mixed-bit plan and LUTs

def test_kmeans_lut_has_two_to_the_bits_entries_and_error_falls_with_bits():
    from edgekit.targets.coreml_recipes import kmeans_lut

    w = np.random.default_rng(0).standard_normal(5000).astype(np.float16)
    errors = []
    for bits in (2, 4, 6, 8):
        lut, index = kmeans_lut(w, bits)
        assert lut.shape == (1 << bits,) and lut.dtype == np.float16 and index.max() < (1 << bits)
        errors.append(float(np.abs(lut[index].astype(np.float32) - w.astype(np.float32)).mean()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < errors[0] / 20


def test_mixed_plan_reaches_the_average_and_keeps_bits_where_psnr_drops():
    from edgekit.targets.coreml_recipes import plan_mixed

    # layer "fragile" loses 30 dB at 2 bits, "sturdy" loses almost nothing at any width
    sensitivity = {"fragile": {2: 10.0, 4: 25.0, 6: 40.0, 8: 60.0},
                   "sturdy": {2: 55.0, 4: 59.0, 6: 60.0, 8: 60.0}}
    sizes = {"fragile": 1000, "sturdy": 1000}
    plan = plan_mixed(sensitivity, sizes, (2, 4, 6, 8), 4.0)
    assert plan.average_bits <= 4.0
    assert plan.bits["fragile"] > plan.bits["sturdy"]
    with pytest.raises(InputError, match="below the smallest palette bit width 2"):
        plan_mixed(sensitivity, sizes, (2, 4, 6, 8), 1.5)


# ---------------------------------------------------------------- Core ML W8A8 and mixed (text encoder)

def _coreml(pipe, tmp_path, precision, name="text_encoder", batch=1):
    profile = shipped_profile("ios-coreml").with_precision(precision)
    job = ComponentJob(pipe, name, None, name, batch, profile.precision, _rows(pipe, name))
    return get_target("coreml").write(job, tmp_path, profile), profile


def test_coreml_w8a8_quantizes_conv_linear_inputs_for_the_a17_class(pipe, tmp_path):
    from edgekit.components import example_inputs

    entry, profile = _coreml(pipe, tmp_path, "w8a8")
    assert entry["ops"].get("quantize", 0) > 0 and entry["ops"].get("dequantize", 0) > 0
    assert entry["ops"].get("constexpr_affine_dequantize", 0) > 0  # int8 weights as well
    assert entry["minimum_deployment_target"] == "iOS17" and entry["int8_compute_on"] == profile.coreml.w8a8_devices
    # every linear op of the text encoder got its input range from the torch layer it was converted from
    assert entry["activation_quantized_ops"] == entry["ops"]["linear"]
    checks = get_target("coreml").check(tmp_path, entry, example_inputs(pipe, "text_encoder", batch=1, seed=2),
                                        np.zeros((1, 77, 64), np.float32), profile)
    assert checks[0]["passed"] and ("skipped" in checks[1]) == (checks[1]["runtime"] == "Core ML")


def test_coreml_mixed_bits_in_the_package_match_the_plan(pipe, tmp_path):
    from edgekit.targets.coreml_recipes import palette_bits_in

    entry, profile = _coreml(pipe, tmp_path, "mixed:5")
    plan = entry["palette_plan"]
    assert plan["target_bits"] == 5.0 and plan["average_bits"] <= 5.0
    assert len(set(plan["bits"].values())) >= 2  # really mixed, not one width everywhere
    written = palette_bits_in(tmp_path / entry["file"])
    assert Counter(written.values()) == Counter(plan["bits"].values())
    # the bits follow from the measured per-layer PSNR the manifest records
    from edgekit.components import export_module
    from edgekit.targets.coreml_recipes import palettizable, plan_mixed

    sizes = {p: m.weight.numel() for p, m in palettizable(export_module(pipe, "text_encoder"), 2048).items()}
    measured = {p: {int(b): v for b, v in d.items()} for p, d in entry["layer_psnr_db"].items()}
    assert plan_mixed(measured, sizes, profile.coreml.palette_bits, 5.0).bits == plan["bits"]


def _shared_zero_bias_model():
    """A bias-free linear next to a batch norm of the same width: the converter gives the linear a zero bias,
    and constant deduplication makes it the batch norm's (zero) running mean, one constant read by both ops."""
    import torch
    from torch import nn

    class SharedZero(nn.Module):
        def __init__(self, c=128):
            super().__init__()
            self.norm = nn.BatchNorm2d(c)  # fresh: running mean zeros
            self.proj = nn.Linear(c, c, bias=False)
            self.out = nn.Linear(c, c)

        def forward(self, x):
            return self.out(self.proj(self.norm(x).flatten(2).transpose(1, 2)))

    torch.manual_seed(0)
    return SharedZero().eval(), torch.randn(1, 128, 4, 4)


def _convert(module, x, target):
    import coremltools as ct
    import torch

    traced = torch.jit.trace(module, x)
    return ct.convert(traced, inputs=[ct.TensorType(name="x", shape=x.shape)], convert_to="mlprogram",
                      minimum_deployment_target=getattr(ct.target, target), skip_model_load=True)


@pytest.mark.parametrize("target,group_size,tables", [("iOS16", 0, 1), ("iOS18", 16, 8)])
def test_mixed_palettization_exports_when_a_bias_constant_is_shared(tmp_path, target, group_size, tables):
    from coremltools.optimize import coreml as cto

    from edgekit.targets.coreml import mixed_bits_problems
    from edgekit.targets.coreml_recipes import MixedPlan, apply_mixed, op_layers, palettes_in

    module, x = _shared_zero_bias_model()
    model = _convert(module, x, target)
    ops = {op.op_type: op for op in model._mil_program.functions["main"].operations if op.op_type != "const"}
    proj = next(op for op in model._mil_program.functions["main"].operations
                if op.op_type == "linear" and op_layers(model._mil_program, module).get(op.name) == "proj")
    # the cause, as coremltools has it: one constant is the linear's bias and the batch norm's mean, and a
    # config on the linear op conflicts with the batch norm's (none)
    assert proj.inputs["bias"].op is ops["batch_norm"].inputs["mean"].op
    by_op = cto.OptimizationConfig(op_name_configs={proj.name: cto.OpPalettizerConfig(nbits=4, mode="kmeans")})
    with pytest.raises(ValueError, match="compression config conflict"):
        cto.palettize_weights(model, by_op)
    plan = MixedPlan(bits={"proj": 4, "out": 8}, average_bits=6.0, target_bits=6.0, group_size=group_size)
    compressed, constants = apply_mixed(model, module, plan, min_weights=2048)
    path = tmp_path / "m.mlpackage"
    compressed.save(str(path))
    written = palettes_in(path)
    assert {p: written[f"{c}_palettized"] for p, c in constants.items()} == {"proj": (4, tables), "out": (8, tables)}
    assert mixed_bits_problems(path, plan.to_dict(), constants) == []
    wrong = {**plan.to_dict(), "bits": {"proj": 8, "out": 8}}
    assert "1 layers differ from the plan's bit widths (first: proj: 4 bits, plan 8)" in \
        mixed_bits_problems(path, wrong, constants)[0]


def test_grouped_palettes_follow_coremltools_channel_groups():
    import torch

    from edgekit.targets.coreml_recipes import palette_groups, palettized

    assert palette_groups(128, 16) == 8 and palette_groups(96, 16) == 6
    assert palette_groups(24, 16) == 1 and palette_groups(128, 0) == 1 and palette_groups(16, 16) == 1
    torch.manual_seed(0)
    w = torch.randn(64, 32) * torch.logspace(-2, 0, 64)[:, None]  # rows of very different scales
    one, grouped = palettized(w, 2), palettized(w, 2, group_size=8)
    assert len(torch.unique(one)) <= 4 and all(len(torch.unique(grouped[i:i + 8])) <= 4 for i in range(0, 64, 8))
    # the small rows get a table of their own instead of the large rows' values
    assert (grouped[:8] - w[:8]).abs().mean() < (one[:8] - w[:8]).abs().mean() / 4


def test_mixed_plans_only_layers_the_component_runs(pipe):
    """The VAE decoder's export module holds the encoder too; its graph has no op for the encoder's weights, so a
    plan naming them could not be exported."""
    from edgekit.components import component_spec, export_module
    from edgekit.targets.coreml_recipes import palettizable

    module = export_module(pipe, "vae_decoder")
    every = palettizable(module, 0)
    ran = palettizable(module, 0, component_spec(pipe, "vae_decoder"), _rows(pipe, "vae_decoder", 2))
    assert any(p.startswith("encoder.") for p in every)
    assert ran and not any(p.startswith("encoder.") for p in ran) and set(ran) < set(every)


@pytest.mark.slow
def test_digits_mixed_bundle_packages_carry_the_planned_bits_per_layer(default_model, tmp_path):
    """The digits model's mixed bundle (its full-width UNet hit the shared-constant conflict): every package's
    palettized weights are the plan's layers at the plan's bit widths."""
    import dataclasses
    import json

    from edgekit.cli import main
    from edgekit.targets.base import ExportRequest, export_bundle
    from edgekit.targets.coreml_recipes import palettes_in

    calib = tmp_path / "calib"
    assert main(["calibrate", "--model", str(default_model), "--samples", "4", "--steps", "2", "--out", str(calib)]) == 0
    profile = shipped_profile("ios-coreml").with_precision("mixed:5")
    out = tmp_path / "bundle"
    export_bundle(ExportRequest(model_dir=default_model, out=out, target="coreml",
                                profile=dataclasses.replace(profile, precision="mixed"), widths=(1.0,),
                                calib_dir=calib, steps=(4,)))
    comps = json.loads((out / "manifest.json").read_text())["components"]
    entries = [comps["text_encoder"], comps["vae_decoder"], *comps["unet"]["widths"].values()]
    for entry in entries:
        plan, constants = entry["palette_plan"], entry["palette_weights"]
        written = palettes_in(out / entry["file"])
        assert {p: written[f"{constants[p]}_palettized"][0] for p in plan["bits"]} == plan["bits"]
        assert len(written) == len(plan["bits"])
    unet = entries[-1]["palette_plan"]
    assert unet["average_bits"] <= 5.0 and len(set(unet["bits"].values())) >= 2


# ---------------------------------------------------------------- precision table

def test_precision_table_reports_worst_rows_with_intervals():
    from edgekit.targets.precision import precision_lines, precision_rows

    def row(w, s, acc, psnr, ms):
        return {"width": w, "steps": s, "latency_ms": ms, "prompt_accuracy": acc, "prompt_accuracy_ci95": [acc - .1, 1.0],
                "quality": {"value": psnr, "ci95": [psnr - 1, psnr + 1], "n": 50}}

    summary = {"bundles": {
        "tflite": {"precision": "int8", "bytes": 9 * 2**20,
                   "components": [{"max_rel_err": 0.02, "runtimes": ["litert"]}, {"max_rel_err": 0.05, "runtimes": ["litert"]}],
                   "bench": {"rows": [row(1.0, 4, 1.0, 25.0, 10.0), row(0.5, 20, 0.96, 21.0, 30.0)]}},
        "coreml": {"precision": "mixed", "bytes": 5 * 2**20, "components": [{"max_rel_err": None, "runtimes": ["x"]}],
                   "bench": {"skipped": "Core ML runs only on Apple devices: measured there"}}}}
    rows = {r["target"]: r for r in precision_rows(summary)}
    assert rows["tflite"]["max_rel_err"] == 0.05 and rows["tflite"]["latency_ms_range"] == [10.0, 30.0]
    assert rows["tflite"]["worst_accuracy"]["value"] == 0.96 and rows["tflite"]["worst_psnr"]["width"] == 0.5
    assert "worst_accuracy" not in rows["coreml"]
    text = "\n".join(precision_lines(summary))
    assert "| tflite | int8 | 9.00 | 5.00e-02 | 0.960 [0.860, 1.000] (n 50, w0.5/20)" in text
    assert "| coreml | mixed | 5.00 | structure only |" in text


# ---------------------------------------------------------------- bad input through the CLI

def test_bad_coreml_average_is_one_line_exit_2_nothing_written(sd15_reduced, tmp_path, run_cli):
    out = tmp_path / "b"
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "coreml", "--precision", "mixed:1.5",
                           "--out", out)
    assert code == 2 and not out.exists()
    assert "1.5" in err and "smallest" in err and len(err.strip().splitlines()) == 1


def test_bad_palette_bits_in_a_profile_exit_2(sd15_reduced, tmp_path, run_cli):
    text = (shipped_profile("ios-coreml").to_dict())
    text["coreml"]["palette_bits"] = [2, 5]
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(text))
    out = tmp_path / "b"
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "coreml", "--profile", path, "--out", out)
    assert code == 2 and not out.exists()
    assert "coreml.palette_bits entry 5" in err and len(err.strip().splitlines()) == 1


def test_bad_palette_group_size_in_a_profile_exit_2(sd15_reduced, tmp_path, run_cli):
    import yaml

    data = shipped_profile("ios-coreml").to_dict()
    data["coreml"]["palette_group_size"] = -4
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "b"
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "coreml", "--profile", path, "--out", out)
    assert code == 2 and not out.exists()
    assert "coreml.palette_group_size -4" in err and len(err.strip().splitlines()) == 1


def test_recipe_naming_a_unit_the_unet_lacks_exit_2_nothing_written(sd15_reduced, sd15_calib, tmp_path, run_cli):
    import yaml

    data = shipped_profile("android-tflite").to_dict()
    data["int8_recipe"]["float_units"] = ["down_blocks.7.resnets.0"]
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "b"
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "tflite", "--precision", "int8",
                           "--calib", sd15_calib, "--profile", path, "--out", out)
    assert code == 2 and not out.exists()
    assert "int8_recipe.float_units names 'down_blocks.7.resnets.0'" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- LiteRT recipe on a UNet (slow)

@pytest.mark.slow
def test_litert_recipe_leaves_the_named_units_float(pipe, tmp_path):
    import dataclasses

    from edgekit.components import component_spec, example_inputs, export_module, run_torch
    from edgekit.targets.tflite import litert_scope

    unet_units = ["conv_in", "down_blocks.0.resnets.0"]
    base = shipped_profile("android-tflite").with_precision("int8")
    profile = dataclasses.replace(base, int8_recipe=dataclasses.replace(
        base.int8_recipe, float_units=(unet_units[0],), int16_units=(unet_units[1],)))
    assert litert_scope(pipe.unet, "down_blocks.0.resnets.0").endswith("ResnetBlock2D_0")
    job = ComponentJob(pipe, "unet", 1.0, "unet", 2, "int8", _rows(pipe, "unet", 8))
    target = get_target("tflite")
    entry = target.write(job, tmp_path, profile)
    dtypes = entry["int8_recipe"]["unit_dtypes"]
    assert set(dtypes["conv_in"]) == {"float32"}  # left float
    assert "int16" in dtypes["down_blocks.0.resnets.0"]  # int16 activations
    assert entry["tensor_name_bytes_saved"] > 0 and entry["ops"].get("CONV_2D")
    inputs = example_inputs(pipe, "unet", batch=2, seed=5)
    expected = run_torch(export_module(pipe, "unet"), component_spec(pipe, "unet"), inputs)
    check = target.check(tmp_path, entry, inputs, expected, profile)[0]
    assert check["rel_err"] < profile.tolerance.int8
