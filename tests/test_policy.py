"""edgekit.policy against the shared twin vectors, its config round trip, and its bad-input errors."""
import json
import math
from pathlib import Path

import pytest

from edgekit.errors import InputError
from edgekit.policy import (DeviceState, Policy, PolicyConfig, fallback_decision, load_trace, parse_table,
                            read_desktop_state, simulate)

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "edgekit" / "twin_vectors" / "policy.json").read_text())


def _policy(overrides=None, table=None):
    return Policy(PolicyConfig.from_dict({**VECTORS["policy"], **(overrides or {})}), table or VECTORS["table"])


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"][:40])
def test_shared_vectors(case):
    policy = _policy(case["policy_overrides"])
    for sample in case["samples"]:
        d = policy.decide_or_fallback(sample["t"], sample["state"])
        e = sample["expect"]
        assert (d.steps, d.width, d.reason, d.over_budget) == (e["steps"], e["width"], e["reason"], e["over_budget"]), \
            f"t={sample['t']}: {d}"
        assert math.isclose(d.budget_ms, e["budget_ms"], rel_tol=1e-6, abs_tol=1e-9)


def test_vectors_cover_every_reason():
    reasons = {s["expect"]["reason"] for c in VECTORS["cases"] for s in c["samples"]}
    assert reasons == {"initial", "hold", "dwell", "step_down", "step_up", "fallback"}


@pytest.mark.parametrize("bad", VECTORS["bad_policies"], ids=lambda b: b["name"])
def test_bad_policies_name_the_problem(bad):
    with pytest.raises(InputError, match=bad["error_contains"]):
        PolicyConfig.from_dict(bad["policy"])


@pytest.mark.parametrize("bad", VECTORS["bad_states"], ids=lambda b: b["name"])
def test_bad_states_name_the_problem(bad):
    with pytest.raises(InputError, match=bad["error_contains"]):
        DeviceState.from_dict(bad["state"])


@pytest.mark.parametrize("bad", VECTORS["bad_tables"], ids=lambda b: b["name"])
def test_bad_tables_name_the_problem(bad):
    with pytest.raises(InputError, match=bad["error_contains"]):
        parse_table(bad["table"])


def test_misspelt_key_suggests_the_right_one():
    with pytest.raises(InputError, match="did you mean 'dwell_s'"):
        PolicyConfig.from_dict({**VECTORS["policy"], "dwel_s": 1})


def test_config_round_trip_and_default():
    config = PolicyConfig.from_dict(VECTORS["policy"])
    assert PolicyConfig.from_dict(config.to_dict()) == config
    default = PolicyConfig.default()
    assert PolicyConfig.from_dict(default.to_dict()) == default
    assert default.thermal_budget["critical"] < default.thermal_budget["nominal"]


def test_never_picks_a_row_outside_the_table_under_random_states():
    import random

    rng = random.Random(3)
    policy = _policy({"dwell_s": 2.0})
    rows = {(r["width"], r["steps"]) for r in VECTORS["table"]}
    for i in range(500):
        state = DeviceState(rng.random(), rng.random() < 0.3, rng.random() < 0.2,
                            rng.choice(["nominal", "fair", "serious", "critical"]),
                            rng.choice([None, rng.random() * 1.5]))
        d = policy.decide(i * 0.5, state)
        assert (d.width, d.steps) in rows
        # the row fits the budget unless none does, in which case it is the cheapest
        assert d.latency_ms <= d.budget_ms or d.latency_ms == min(r["latency_ms"] for r in VECTORS["table"])


def _manifest(**extra):
    base = {"widths": ["1.00", "0.50"], "sampling": {"schedules": {"4": {}, "8": {}, "20": {}}},
            "table": VECTORS["table"], "policy": VECTORS["policy"]}
    base.update(extra)
    return base


def test_from_manifest_refuses_missing_parts_and_rows_the_bundle_lacks():
    assert Policy.from_manifest(_manifest()).decide(0, DeviceState(1.0, True, False, "nominal")).steps == 20
    with pytest.raises(InputError, match="no 'policy'"):
        Policy.from_manifest(_manifest(policy={}))
    with pytest.raises(InputError, match="no measured 'table'"):
        Policy.from_manifest(_manifest(table=[]))
    with pytest.raises(InputError, match="width 1.0, which the bundle lacks"):
        Policy.from_manifest(_manifest(widths=["0.50"]))
    with pytest.raises(InputError, match="20 steps, which the bundle has no schedule for"):
        Policy.from_manifest(_manifest(sampling={"schedules": {"4": {}, "8": {}}}))


def test_time_must_not_go_backwards():
    policy = _policy()
    policy.decide(5, DeviceState(1.0, True, False, "nominal"))
    with pytest.raises(InputError, match="time order"):
        policy.decide(4, DeviceState(1.0, True, False, "nominal"))


def test_trace_loading_errors(tmp_path):
    good = tmp_path / "trace.json"
    good.write_text(json.dumps([{"t": 0, "battery_level": 1, "charging": True, "low_power": False,
                                 "thermal": "fair"}]))
    assert [d.steps for d in simulate(_policy(), load_trace(good))] == [8]
    for content, needle in [("{}", "non-empty JSON list"), ("not json", "not JSON"), ("[1]", "sample 0"),
                            ('[{"t": 0, "battery_level": 2, "charging": true, "low_power": false, "thermal": "fair"}]',
                             "battery_level"),
                            ('[{"t": 0, "battery_level": 1, "charging": true, "low_power": false, "thermal": "warm"}]',
                             "unknown thermal state 'warm'"),
                            ('[{"t": 1, "battery_level": 1, "charging": true, "low_power": false, "thermal": "fair"},'
                             '{"t": 0, "battery_level": 1, "charging": true, "low_power": false, "thermal": "fair"}]',
                             "time order")]:
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(InputError, match=needle):
            load_trace(bad)
    with pytest.raises(InputError, match="no such file"):
        load_trace(tmp_path / "missing.json")


def test_desktop_reader_gives_a_valid_state():
    state = read_desktop_state()
    assert DeviceState.from_dict(state.to_dict()) == state


@pytest.mark.parametrize("bad", VECTORS["bad_manifests"], ids=lambda b: b["name"])
def test_bad_manifests_error_in_the_library_and_fall_back_on_a_device(bad):
    with pytest.raises(InputError, match=bad["error_contains"]):
        Policy.from_manifest(bad["manifest"])
    d = fallback_decision(bad["manifest"], "test")
    assert (d.steps, d.width, d.reason) == (bad["fallback"]["steps"], bad["fallback"]["width"], "fallback")
