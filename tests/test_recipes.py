"""INT8 recipes as artifacts (edgekit.targets.recipes): planned apart per width as JSON that records what it was
planned from, applied by the export as it is (never planned again), refused when stale or malformed, carried by
the bundle, and the manifest naming each graph's INT8 route."""
import dataclasses
import json

import pytest

from edgekit.errors import InputError
from edgekit.profiles import shipped_profile
from edgekit.targets import get_target
from edgekit.targets.base import ExportRequest
from edgekit.targets.recipes import RECIPE_FORMAT, read_recipe, write_recipe


def _request(model, calib, out, budget=0.0, **kw):
    profile = shipped_profile("android-tflite").with_precision("int8")
    if budget:
        profile = dataclasses.replace(profile, int8_recipe=dataclasses.replace(profile.int8_recipe,
                                                                               sensitive_budget=budget))
    return ExportRequest(model_dir=model, out=out, target="tflite", profile=profile, widths=(1.0,),
                         calib_dir=calib, **kw)


@pytest.fixture(scope="module")
def planned(sd15_reduced, sd15_calib, tmp_path_factory):
    """The tflite INT8 recipe of width 1.0 with a sensitivity budget (the UNet's units ranked on the rows)."""
    recipe = get_target("tflite").plan_recipe(_request(sd15_reduced, sd15_calib, None, budget=0.02), 1.0)
    path = write_recipe(tmp_path_factory.mktemp("recipe") / "w1.00.json", recipe)
    return path, recipe


def test_recipe_records_its_inputs_and_the_unet_plan(planned, sd15_reduced):
    from edgekit.fsutil import sha256_tree

    path, recipe = planned
    assert json.loads(path.read_text()) == recipe  # JSON as it is
    assert recipe["format"] == RECIPE_FORMAT and recipe["width"] == "1.00" and recipe["target"] == "tflite"
    inputs = recipe["inputs"]
    assert inputs["model_sha256"] == sha256_tree(sd15_reduced) and inputs["shared"] is True
    assert inputs["calibration"]["rows"] and inputs["profile"]["int8_recipe"]["sensitive_budget"] == 0.02
    # the UNet alone holds named units; the text encoder (dynamic range) and VAE take no plan
    assert list(recipe["components"]) == ["unet"]
    plan = recipe["components"]["unet"]
    assert plan["ranking"] and plan["float_units"]  # ranked on the rows, the budget spent on units left float
    assert set(plan["float_units"]) <= {r["unit"] for r in plan["ranking"]}


def test_stale_recipe_is_refused_naming_the_field_before_anything_is_written(planned, sd15_reduced, sd15_calib,
                                                                              tmp_path):
    from edgekit.targets.base import export_bundle

    path, _ = planned
    out = tmp_path / "bundle"
    request = _request(sd15_reduced, sd15_calib, out, budget=0.05, recipes=((1.0, path),))
    with pytest.raises(InputError, match=r"recipe: .*stale: planned for profile\.int8_recipe") as err:
        export_bundle(request)
    assert "\n" not in str(err.value) and not out.exists()


def test_missing_malformed_and_misplaced_recipes_are_one_line_errors(planned, sd15_reduced, sd15_calib, tmp_path):
    from edgekit.targets.base import export_bundle

    with pytest.raises(InputError, match="no such recipe file"):
        read_recipe(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(InputError, match="not an edgekit INT8 recipe"):
        read_recipe(bad)
    bad.write_text("{not json")
    with pytest.raises(InputError, match="recipe"):
        read_recipe(bad)
    path, recipe = planned
    other = write_recipe(tmp_path / "w0.50.json", {**recipe, "width": "0.50"})
    request = _request(sd15_reduced, sd15_calib, tmp_path / "out", budget=0.02, recipes=((0.5, other),))
    with pytest.raises(InputError, match="no recipe for width 1.00"):
        export_bundle(request)
    # a target at a precision that applies no recipe refuses one, and planning one
    onnx = ExportRequest(model_dir=sd15_reduced, out=tmp_path / "o", target="ort-web",
                         profile=shipped_profile("web-ort"), recipes=((1.0, path),))
    with pytest.raises(InputError, match="applies no INT8 recipe"):
        export_bundle(onnx)
    with pytest.raises(InputError, match="takes an INT8 recipe at int8, not fp32"):
        get_target("tflite").plan_recipe(ExportRequest(model_dir=sd15_reduced, out=None, target="tflite",
                                                       profile=shipped_profile("android-tflite")), 1.0)


def test_cli_export_refuses_a_bad_recipe_exit_2_nothing_written(sd15_reduced, sd15_calib, tmp_path, run_cli):
    bad = tmp_path / "recipe.json"
    bad.write_text("[]")
    out = tmp_path / "out"
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "tflite", "--precision", "int8",
                           "--calib", sd15_calib, "--recipe", bad, "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "recipe" in err and not out.exists()


@pytest.mark.slow
def test_export_applies_a_given_recipe_without_planning_and_the_bundle_carries_it(planned, sd15_reduced, sd15_calib,
                                                                                   tmp_path, monkeypatch):
    from edgekit.bundle import read_manifest
    from edgekit.targets import tflite
    from edgekit.targets.base import export_bundle

    path, recipe = planned
    own = export_bundle(_request(sd15_reduced, sd15_calib, tmp_path / "own", budget=0.02))

    def no_planning(*_a, **_k):
        raise AssertionError("the export planned a recipe it was given")

    monkeypatch.setattr(tflite, "plan_int8_recipe", no_planning)
    given = export_bundle(_request(sd15_reduced, sd15_calib, tmp_path / "given", budget=0.02,
                                   recipes=((1.0, path),)))
    for manifest, folder in ((own, tmp_path / "own"), (given, tmp_path / "given")):
        unet = manifest["components"]["unet"]["widths"]["1.00"]
        assert unet["int8_route"] == "recipe recipes/w1.00.json"
        assert manifest["components"]["text_encoder"]["int8_route"].startswith("tflite converter: dynamic range")
        assert json.loads((folder / "recipes" / "w1.00.json").read_text())["components"] == recipe["components"]
        assert {k: v for k, v in unet["int8_recipe"].items() if k != "unit_dtypes"} == recipe["components"]["unet"]
        read_manifest(folder)  # the recipe file is listed like every bundle file
    # the same plan gives the same graph, byte for byte
    for name in ("unet/w1.00/model.tflite", "text_encoder/model.tflite", "vae_decoder/model.tflite"):
        assert (tmp_path / "own" / name).read_bytes() == (tmp_path / "given" / name).read_bytes(), name


def test_coreml_recipe_plans_each_calibrated_graph_and_write_applies_it_without_measuring(sd15_reduced, sd15_calib,
                                                                                          tmp_path, monkeypatch):
    from edgekit.components import example_inputs
    from edgekit.loader import open_model
    from edgekit.quantize import sensitivity
    from edgekit.targets.base import ComponentJob

    profile = shipped_profile("ios-coreml").with_precision("w8a8")
    coreml = get_target("coreml")
    request = ExportRequest(model_dir=sd15_reduced, out=None, target="coreml", profile=profile, widths=(1.0,),
                            calib_dir=sd15_calib)
    recipe = coreml.plan_recipe(request, 1.0)
    # every calibrated graph: the widest width's recipe also holds the components exported once
    assert sorted(recipe["components"]) == ["text_encoder", "unet", "vae_decoder"] and recipe["inputs"]["shared"]
    assert recipe["inputs"]["profile"]["coreml"] == profile.coreml.to_dict()
    ranges = recipe["components"]["text_encoder"]["activation_ranges"]
    assert ranges and all(lo <= hi for lo, hi in ranges.values())

    def no_measuring(*_a, **_k):
        raise AssertionError("the export measured ranges its recipe holds")

    monkeypatch.setattr(sensitivity, "input_ranges", no_measuring)
    pipe = open_model(sd15_reduced)
    rows = example_inputs(pipe, "text_encoder", batch=4, seed=3)
    job = ComponentJob(pipe, "text_encoder", None, "te", 1, "w8a8", rows, recipe=recipe["components"]["text_encoder"])
    entry = coreml.write(job, tmp_path, profile)
    assert entry["ops"].get("quantize", 0) > 0 and entry["activation_quantized_ops"] == entry["ops"]["linear"]
    assert coreml.int8_route(job, profile) == "recipe"  # an export adds the bundle file it came from
