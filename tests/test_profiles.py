"""Target profiles: the shipped YAML files load, round-trip, and bad YAML is refused in one line."""
from pathlib import Path

import pytest

from edgekit.errors import InputError
from edgekit.profiles import OpRules, TargetProfile, Tolerances, profiles_dir, shipped_profile

SHIPPED = ("web-ort", "android-tflite", "ios-coreml")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load_and_round_trip(name):
    profile = shipped_profile(name)
    assert profile.name == name
    assert profile.precision in profile.precisions
    assert TargetProfile.from_dict(profile.to_dict()) == profile


def test_every_yaml_in_targets_is_a_valid_profile_of_a_registered_target():
    from edgekit.targets import get_target

    files = sorted(profiles_dir().glob("*.yaml"))
    assert {f.stem for f in files} >= set(SHIPPED)
    for f in files:
        profile = TargetProfile.from_yaml(f)
        get_target(profile.target).check_profile(profile)


def test_nested_configs_round_trip():
    assert Tolerances.from_dict(Tolerances(fp16=0.5).to_dict()) == Tolerances(fp16=0.5)
    assert OpRules.from_dict({"forbidden": ["Flex*"]}).violations(["FlexErf", "ADD", "CONV_2D"]) == ["FlexErf"]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


BASE = "name: x\ntarget: ort-web\nprecisions: [fp32, fp16]\n"


@pytest.mark.parametrize("extra, message", [
    ("precison: fp16\n", "did you mean 'precision'"),
    ("opset: seventeen\n", "opset: expected a whole number"),
    ("fixed_shapes: 1\n", "fixed_shapes: expected true or false"),
    ("steps: 4\n", "steps: expected a list"),
    ("tolerance:\n  fp61: 0.1\n", "did you mean 'fp16'"),
    ("guidance_batching: batch3\n", "did you mean 'batch2'"),
    ("precision: int8\n", "not among precisions"),
    ("ops: [Flex]\n", "ops: expected a mapping"),
    ("int8_recipe:\n  int8_ops: [CONV2D]\n", "int8_recipe.int8_ops entry 'CONV2D'.*did you mean 'CONV_2D'"),
    ("int8_recipe:\n  sensitive_budget: 1.5\n", "int8_recipe.sensitive_budget 1.5"),
    ("int8_recipe:\n  sensitive_as: int4\n", "int8_recipe.sensitive_as 'int4'"),
    ("int8_recipe:\n  float_units: [conv_in]\n  int16_units: [conv_in]\n", "both in float_units and int16_units"),
    ("coreml:\n  palette_bits: [2, 5]\n", "coreml.palette_bits entry 5: coremltools palettizes to 1, 2, 3, 4, 6, 8"),
    ("coreml:\n  mixed_target_bits: 1.5\n", "coreml.mixed_target_bits 1.5: expected an average between"),
    ("fused_attention: [unets]\n", "fused_attention entry 'unets'.*did you mean 'unet'"),
])
def test_bad_profiles_name_the_key(tmp_path, extra, message):
    with pytest.raises(InputError, match=message) as info:
        TargetProfile.from_yaml(_write(tmp_path, BASE + extra))
    assert str(tmp_path / "p.yaml") in str(info.value) and "\n" not in str(info.value)


def test_missing_and_unparsable_profiles(tmp_path):
    with pytest.raises(InputError, match="missing key"):
        TargetProfile.from_yaml(_write(tmp_path, "target: ort-web\n"))
    with pytest.raises(InputError, match="not valid YAML"):
        TargetProfile.from_yaml(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(InputError, match="no such file"):
        TargetProfile.from_yaml(tmp_path / "absent.yaml")


def test_precision_override_must_be_offered():
    profile = shipped_profile("web-ort")
    assert profile.with_precision("fp16").precision == "fp16"
    with pytest.raises(InputError, match="precision w8"):
        profile.with_precision("w8")


def test_target_specific_profile_rules():
    from edgekit.targets import get_target

    tflite = shipped_profile("android-tflite")
    with pytest.raises(InputError, match="converter 'tflite-magic'"):
        get_target("tflite").check_profile(TargetProfile.from_dict({**tflite.to_dict(), "converter": "tflite-magic"}))
    coreml = shipped_profile("ios-coreml")
    with pytest.raises(InputError, match="minimum_deployment_target"):
        get_target("coreml").check_profile(TargetProfile.from_dict({**coreml.to_dict(),
                                                                    "minimum_deployment_target": "iOS9"}))
    with pytest.raises(InputError, match="offers precisions"):
        get_target("ort-web").check_profile(TargetProfile.from_dict({**shipped_profile("web-ort").to_dict(),
                                                                     "precisions": ["fp32", "palettize6"]}))


def test_mixed_precision_names_its_average():
    profile = shipped_profile("ios-coreml")
    mixed = profile.with_precision("mixed:4.5")
    assert mixed.precision == "mixed" and mixed.coreml.mixed_target_bits == 4.5
    assert TargetProfile.from_dict(mixed.to_dict()) == mixed
    assert profile.with_precision("mixed").coreml.mixed_target_bits == profile.coreml.mixed_target_bits
    assert mixed.tolerance.for_precision("mixed") == profile.tolerance.mixed
    for bad, message in (("mixed:1.5", "below|between the smallest"), ("mixed:9", "between the smallest"),
                         ("mixed:four", "expected mixed:BITS"), ("w8:4", "only mixed takes a value")):
        with pytest.raises(InputError, match=message):
            profile.with_precision(bad)


def test_shipped_recipes_are_data_in_the_profiles():
    tflite = shipped_profile("android-tflite").int8_recipe
    assert set(tflite.int8_ops) == {"CONV_2D", "FULLY_CONNECTED"} and tflite.compact_names
    coreml = shipped_profile("ios-coreml")
    assert {"w8a8", "mixed"} <= set(coreml.precisions)
    assert "A17 Pro" in coreml.coreml.w8a8_devices and coreml.coreml.w8a8_deployment_target == "iOS17"
