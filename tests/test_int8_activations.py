"""A width's INT8 activations in the tflite recipe (int8_recipe.widths entry ``activations``): int8 or int16 ranges
calibrated ahead, or dynamic range (int8 ranges taken from each call's values). The profile field, the plan, and
what the written UNet holds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "int8_recipes.json"


def test_width_activations_round_trip_and_default_to_int8():
    from edgekit.profiles import LiteRTInt8Recipe

    recipe = LiteRTInt8Recipe.from_dict({"int8_ops": ["CONV_2D"], "widths": [{"width": 0.5, "activations": "dynamic"},
                                                                            {"width": 0.75, "activations": "int16"}]})
    assert LiteRTInt8Recipe.from_dict(recipe.to_dict(), "int8_recipe") == recipe
    assert [recipe.activations_for(w) for w in (0.5, 0.75, 1.0, None)] == ["dynamic", "int16", "int8", "int8"]


@pytest.mark.parametrize("data, words", [
    ({"widths": [{"width": 0.5, "activations": "int4"}]}, "int8_recipe.widths entry 0.5: activations 'int4'"),
])
def test_bad_width_activations_is_one_clear_error(data, words):
    from edgekit.errors import InputError
    from edgekit.profiles import LiteRTInt8Recipe

    with pytest.raises(InputError) as info:
        LiteRTInt8Recipe.from_dict(data, "android-tflite.yaml: int8_recipe")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_shipped_recipe_is_the_one_measured():
    """The profile's per-width activations are the ones the paired measurement's int8-recipe bundle was written with."""
    from edgekit.profiles import shipped_profile

    recipe = shipped_profile("android-tflite").int8_recipe
    data = json.loads(RESULTS.read_text())
    bundle = next(b for b in data["bundles"] if b["variant"] == "int8-recipe")
    for width, unet in bundle["unet"].items():
        assert unet["int8_recipe"]["activations"] == recipe.activations_for(float(width)), width
        assert unet["int8_recipe"]["int8_ops"] == list(recipe.int8_ops)


def test_recipe_int16_units_stay_in_the_plan_at_a_dynamic_width(sd15_reduced):
    from edgekit.loader import open_model
    from edgekit.profiles import LiteRTInt8Recipe
    from edgekit.targets.base import ComponentJob
    from edgekit.targets.tflite import plan_int8_recipe

    recipe = LiteRTInt8Recipe.from_dict({"int8_ops": ["CONV_2D"], "int16_units": ["down_blocks.0.resnets.0"],
                                         "widths": [{"width": 1.0, "activations": "dynamic"}]})
    plan = plan_int8_recipe(ComponentJob(open_model(sd15_reduced), "unet", 1.0, "unet", 2, "int8"), recipe, "p")
    assert plan["activations"] == "dynamic" and plan["int16_units"] == ["down_blocks.0.resnets.0"]


@pytest.mark.slow
@pytest.mark.parametrize("activations, int16_unit", [("dynamic", None), ("int16", None),
                                                     ("dynamic", "down_blocks.0.resnets.0")])
def test_unet_written_with_the_widths_activations(sd15_reduced, tmp_path, activations, int16_unit):
    import dataclasses

    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfu

    from edgekit.components import component_spec, example_inputs, export_module, run_torch
    from edgekit.loader import open_model
    from edgekit.profiles import LiteRTWidthRecipe, shipped_profile
    from edgekit.targets import get_target
    from edgekit.targets.base import ComponentJob

    pipe = open_model(sd15_reduced)
    base = shipped_profile("android-tflite").with_precision("int8")
    profile = dataclasses.replace(base, int8_recipe=dataclasses.replace(
        base.int8_recipe, compact_names=False, int16_units=(int16_unit,) if int16_unit else (),
        widths=(LiteRTWidthRecipe(width=1.0, activations=activations),)))
    rows = example_inputs(pipe, "unet", batch=8, seed=3)
    target = get_target("tflite")
    entry = target.write(ComponentJob(pipe, "unet", 1.0, "unet", 2, "int8", rows), tmp_path, profile)
    assert entry["int8_recipe"]["activations"] == activations
    model = tfu.read_model(str(tmp_path / entry["file"]))
    graph = model.subgraphs[0]
    conv = [op for op in graph.operators
            if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.CONV_2D]
    assert conv
    weights = {graph.tensors[op.inputs[1]].type for op in conv}
    outputs = {graph.tensors[op.outputs[0]].type for op in conv}
    assert weights == {schema.TensorType.INT8}
    if int16_unit:  # a dynamic width whose int16 unit is calibrated: int16 there, float out of the other convs
        assert "dynamic-range int8 (int16 units calibrated)" in entry["recipe"] and entry["representative_batches"] == 4
        assert "int16" in entry["int8_recipe"]["unit_dtypes"][int16_unit]
        assert outputs == {schema.TensorType.FLOAT32, schema.TensorType.INT16}
    elif activations == "dynamic":  # float in and out of every conv, no calibration rows used
        assert "dynamic range" in entry["recipe"] and "representative_batches" not in entry
        assert outputs == {schema.TensorType.FLOAT32}
    else:
        assert "int16 activations" in entry["recipe"] and entry["representative_batches"] == 4
        assert outputs == {schema.TensorType.INT16}
    inputs = example_inputs(pipe, "unet", batch=2, seed=5)
    expected = run_torch(export_module(pipe, "unet"), component_spec(pipe, "unet"), inputs)
    check = target.check(tmp_path, entry, inputs, expected, profile)[0]
    assert 1e-5 < check["rel_err"] < profile.tolerance.int8 and np.isfinite(check["rel_err"])
