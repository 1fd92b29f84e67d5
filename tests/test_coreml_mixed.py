"""Core ML mixed-bit palettization: the package check catches look-up tables other than the plan's, and the
shipped profile's mixed recipe is the measured one (benchmarks/results/coreml_recipes.md)."""
import pytest

from edgekit.errors import InputError
from edgekit.profiles import shipped_profile


def _two_linears(tmp_path, group_size):
    import coremltools as ct
    import torch
    from torch import nn

    from edgekit.targets.coreml_recipes import MixedPlan, apply_mixed

    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 128), nn.Linear(128, 96)).eval()
    x = torch.randn(1, 64)
    model = ct.convert(torch.jit.trace(module, x), inputs=[ct.TensorType(name="x", shape=x.shape)],
                       convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18, skip_model_load=True)
    plan = MixedPlan(bits={"0": 4, "1": 6}, average_bits=4.8, target_bits=5.0, group_size=group_size)
    compressed, constants = apply_mixed(model, module, plan, min_weights=2048)
    path = tmp_path / f"g{group_size}.mlpackage"
    compressed.save(str(path))
    return path, plan, constants


def test_mixed_check_counts_the_look_up_tables_per_layer(tmp_path):
    from edgekit.targets.coreml import mixed_bits_problems
    from edgekit.targets.coreml_recipes import palette_facts_in

    path, plan, constants = _two_linears(tmp_path, 16)
    facts = palette_facts_in(path)
    # 128 and 96 output channels: 8 and 6 tables of 16 channels each
    assert {p: facts[f"{c}_palettized"] for p, c in constants.items()} == {"0": (4, 8, 128), "1": (6, 6, 96)}
    assert mixed_bits_problems(path, plan.to_dict(), constants) == []
    claimed = {**plan.to_dict(), "group_size": 32}  # 4 and 3 tables claimed, 8 and 6 written
    problems = mixed_bits_problems(path, claimed, constants)
    assert problems == ["2 layers have other look-up tables than the plan's (first: 0: 8 tables for 128 output "
                        "channels, plan one per 32)"]
    one_table, _, one_constants = _two_linears(tmp_path, 0)  # one table per weight written, 16 channels claimed
    assert "2 layers have other look-up tables" in mixed_bits_problems(one_table, plan.to_dict(), one_constants)[0]


def test_shipped_mixed_recipe_is_the_measured_one():
    """--precision mixed (and coreml=mixed in a package) takes the profile's recipe: 4.25 average bits of 4/6/8,
    one look-up table per 16 output channels."""
    profile = shipped_profile("ios-coreml")
    for precision in ("mixed", "mixed:4.25"):
        cfg = profile.with_precision(precision).coreml
        assert (cfg.mixed_target_bits, tuple(cfg.palette_bits), cfg.palette_group_size) == (4.25, (4, 6, 8), 16)
    with pytest.raises(InputError, match="between the smallest"):
        profile.with_precision("mixed:3")
