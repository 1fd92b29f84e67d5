"""The paired INT8-vs-fp16 comparison behind the Android default (benchmarks/int8_recipes.py): its intervals for a
difference of paired proportions and the decision rule."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_recipes.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("int8_recipes_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tango_interval_matches_the_published_example(bench):
    # Fagerland, Lydersen & Laake (2014), airway hyper-responsiveness before/after transplant: 21 pairs, discordant
    # 1 (yes/no) and 7 (no/yes); Tango's asymptotic score interval -0.517 to -0.026.
    lo, hi = bench.tango_paired_ci95(1, 7, 21)
    assert lo == pytest.approx(-0.517, abs=6e-4) and hi == pytest.approx(-0.026, abs=6e-4)
    # no discordant pair: an interval around zero that still has width (n pairs cannot prove equality)
    lo, hi = bench.tango_paired_ci95(0, 0, 300)
    assert lo == pytest.approx(-hi) and 0.005 < hi < 0.02


@pytest.mark.parametrize("probs", [(0.90, 0.01, 0.03, 0.06), (0.93, 0.015, 0.02, 0.035)])
def test_paired_intervals_cover_the_true_difference_about_95_percent(bench, probs):
    """Cells: both right, only INT8 right, only fp16 right, both wrong; 400 simulated studies of 300 pairs."""
    rng = np.random.default_rng(7)
    true = probs[1] - probs[2]
    hits = {"tango": 0, "newcombe": 0}
    for _ in range(400):
        c = rng.multinomial(300, probs)
        lo, hi = bench.tango_paired_ci95(int(c[1]), int(c[2]), 300)
        hits["tango"] += lo <= true <= hi
        lo, hi = bench.newcombe_paired_ci95(*(int(x) for x in c))
        hits["newcombe"] += lo <= true <= hi
    for name, k in hits.items():
        assert 0.91 <= k / 400 <= 0.995, (name, k)


def test_paired_row_counts_the_pairs_and_compares_images(bench):
    labels = np.arange(40) % 10
    fp16 = labels.copy()
    fp16[:2] = (fp16[:2] + 1) % 10  # fp16 wrong on 0, 1
    int8 = labels.copy()
    int8[1:5] = (int8[1:5] + 1) % 10  # INT8 wrong on 1..4 (image 1 wrong in both, with the same digit)
    rng = np.random.default_rng(0)
    ref = rng.random((40, 8, 8, 3)).astype(np.float32)
    img_fp16 = np.clip(ref + 0.01 * rng.standard_normal(ref.shape), 0, 1)
    img_int8 = np.clip(img_fp16 + 0.05 * rng.standard_normal(ref.shape), 0, 1)
    row = bench.paired_row(labels, int8, fp16, img_int8, img_fp16, ref)
    assert row["pairs"] == {"both": 35, "only_int8": 1, "only_fp16": 3, "neither": 1}
    assert row["accuracy_diff"] == pytest.approx(-2 / 40) and row["agreement"] == pytest.approx(36 / 40)
    lo, hi = row["accuracy_diff_tango_ci95"]
    assert lo < -2 / 40 < hi and not row["non_inferior"]
    assert row["psnr_vs_fp16_db"]["value"] < 30 and row["psnr_vs_float_diff_db"]["ci95"][1] < 0


def _data(lower_ends, int8_bytes=54, widths=("1.00", "0.75", "0.50")):
    rows = [{"variant": "int8-recipe", "width": "1.00", "steps": 4 * (i + 1), "accuracy_diff": lo + 0.02,
             "accuracy_diff_ci95": [lo + 0.001, lo + 0.04], "accuracy_diff_tango_ci95": [lo, lo + 0.04],
             "non_inferior": lo > -0.03} for i, lo in enumerate(lower_ends)]
    return {"bundles": [{"variant": "fp16", "bundle_bytes": 100, "widths": ["1.00", "0.75", "0.50"]},
                        {"variant": "int8-recipe", "bundle_bytes": int8_bytes, "widths": list(widths)}],
            "paired": rows}


def test_decision_needs_every_row_every_width_and_the_bytes(bench):
    assert bench.decide(_data([-0.01, -0.025, -0.02]))["int8-recipe"]["holds"]
    one_row_short = bench.decide(_data([-0.01, -0.031, -0.02]))["int8-recipe"]
    assert not one_row_short["holds"] and one_row_short["rows_non_inferior"] == 2
    assert one_row_short["worst_row"]["lower_end"] == pytest.approx(-0.031)
    assert not bench.decide(_data([-0.01], int8_bytes=61))["int8-recipe"]["holds"]  # 0.61x fp16
    assert not bench.decide(_data([-0.01], widths=("0.50",)))["int8-recipe"]["holds"]


# ---------------------------------------------------------------- per-width recipe (profile data)

def test_per_width_recipe_round_trips_and_overrides_one_width():
    from edgekit.profiles import LiteRTInt8Recipe

    data = {"int8_ops": ["CONV_2D", "FULLY_CONNECTED"], "float_units": ["conv_out"],
            "widths": [{"width": 0.5, "sensitive_budget": 0.15, "float_units": ["conv_in"]}]}
    recipe = LiteRTInt8Recipe.from_dict(data, "int8_recipe")
    assert LiteRTInt8Recipe.from_dict(recipe.to_dict(), "int8_recipe") == recipe
    assert recipe.for_width(0.5) == (0.15, ("conv_out", "conv_in"), ())
    assert recipe.for_width(1.0) == (0.0, ("conv_out",), ()) and recipe.for_width(None) == (0.0, ("conv_out",), ())


@pytest.mark.parametrize("widths, words", [
    ([{"width": 0.5}, {"width": 0.5}], "a width is listed twice"),
    ([{"width": 1.5}], "expected a width in (0, 1]"),
    ([{"width": 0.5, "sensitive_budget": 1.0}], "expected a fraction in [0, 1)"),
    ([{"widht": 0.5}], "did you mean 'width'"),
])
def test_bad_per_width_recipe_is_one_clear_error(widths, words):
    from edgekit.errors import InputError
    from edgekit.profiles import LiteRTInt8Recipe

    with pytest.raises(InputError) as info:
        LiteRTInt8Recipe.from_dict({"widths": widths}, "android-tflite.yaml: int8_recipe")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_profile_int8_tolerance_refuses_the_every_op_graph_and_passes_the_recipe():
    """The measured UNet rel-errs vs torch (benchmarks/results/int8_recipes.json): the every-op graph (53-57% digit
    accuracy) must fail the shipped profile's int8 tolerance, the shipped recipe's widths must pass it."""
    import json

    from edgekit.profiles import shipped_profile

    tolerance = shipped_profile("android-tflite").tolerance.int8
    data = json.loads((BENCH.parent / "results" / "int8_recipes.json").read_text())
    errs = {b["variant"]: [u["rel_err_vs_torch"] for u in b["unet"].values()] for b in data["bundles"]}
    accuracy = {r["variant"]: r["accuracy_int8"] for r in data["paired"]}
    assert accuracy["int8-all-ops"] < 0.6 and min(errs["int8-all-ops"]) > tolerance
    assert max(errs["int8-recipe"]) < tolerance


def test_plan_applies_only_the_jobs_width_entry(sd15_reduced):
    from edgekit.errors import InputError
    from edgekit.loader import open_model
    from edgekit.profiles import LiteRTInt8Recipe
    from edgekit.targets.base import ComponentJob
    from edgekit.targets.tflite import plan_int8_recipe
    from edgekit.width import Width

    pipe = open_model(sd15_reduced)
    recipe = LiteRTInt8Recipe.from_dict({"int8_ops": ["CONV_2D"], "float_units": ["conv_out"],
                                         "widths": [{"width": 1.0, "float_units": ["conv_in"]},
                                                    {"width": 0.5, "int16_units": ["down_blocks.0.resnets.0"]}]})
    for width in (1.0, Width.parse(1.0)):
        plan = plan_int8_recipe(ComponentJob(pipe, "unet", width, "unet", 2, "int8"), recipe, "profile 'p'")
        assert plan["float_units"] == ["conv_out", "conv_in"] and plan["int16_units"] == [] and plan["width"] == 1.0
    bad = LiteRTInt8Recipe.from_dict({"widths": [{"width": 1.0, "float_units": ["down_blocks.9.resnets.0"]}]})
    with pytest.raises(InputError, match="int8_recipe.float_units names 'down_blocks.9.resnets.0'"):
        plan_int8_recipe(ComponentJob(pipe, "unet", 1.0, "unet", 2, "int8"), bad, "profile 'p'")
