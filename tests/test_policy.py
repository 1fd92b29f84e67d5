"""edgekit.policy against the shared twin vectors, its config round trip, and its bad-input errors."""
import json
import math
from pathlib import Path

import pytest

from edgekit.errors import InputError
from edgekit.policy import Policy, choose, fallback_decision, load_trace, read_desktop_state, simulate
from edgekit.policy_inputs import DeviceState, PolicyConfig, latency_ratio, parse_table, rescale_table

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "edgekit" / "twin_vectors" / "policy.json").read_text())
TABLE = VECTORS["tables"]["separated"]


def _policy(overrides=None, table=None, ratio=1.0):
    return Policy(PolicyConfig.from_dict({**VECTORS["policy"], **(overrides or {})}), table or TABLE, ratio)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"][:40])
def test_shared_vectors(case):
    rows = parse_table(VECTORS["tables"][case["table"]])
    ratio = 1.0
    if "rescale" in case:
        ratio = latency_ratio(case["rescale"]["runs"], rows)
        assert math.isclose(ratio, case["rescale"]["ratio"], rel_tol=1e-12)
    policy = _policy(case["policy_overrides"], rows, ratio)
    for sample in case["samples"]:
        if "latency_ratio" in sample:
            policy = policy.rescaled(sample["latency_ratio"])
        d = policy.decide_or_fallback(sample["t"], sample["state"])
        e = sample["expect"]
        assert (d.steps, d.width, d.reason, d.over_budget) == (e["steps"], e["width"], e["reason"], e["over_budget"]), \
            f"t={sample['t']}: {d}"
        assert math.isclose(d.budget_ms, e["budget_ms"], rel_tol=1e-6, abs_tol=1e-9)
        assert math.isclose(d.latency_ms, e["latency_ms"], rel_tol=1e-6)


@pytest.mark.parametrize("case", VECTORS["latency_ratios"], ids=lambda c: c["name"][:40])
def test_latency_ratio_vectors(case):
    assert math.isclose(latency_ratio(case["runs"], parse_table(VECTORS["tables"][case["table"]])), case["ratio"],
                        rel_tol=1e-12)


@pytest.mark.parametrize("bad", VECTORS["bad_rescales"], ids=lambda b: b["name"])
def test_bad_rescales_name_the_problem(bad):
    rows = parse_table(VECTORS["tables"][bad["table"]])
    with pytest.raises(InputError, match=bad["error_contains"]):
        latency_ratio(bad["runs"], rows) if "runs" in bad else rescale_table(rows, bad["ratio"])


def _brute_force_choice(rows, budget):
    """The rule written out the slow way: every fitting row r is a candidate unless it is significantly
    worse than some fitting row of the highest value."""
    fitting = [r for r in rows if r.latency_ms <= budget]
    if not fitting:
        return None
    top = max(r.quality for r in fitting)
    best = min((r for r in fitting if r.quality == top), key=lambda r: (r.latency_ms, -r.width, r.steps))
    ok = [r for r in fitting if r.quality >= best.quality
          or (best.quality - r.quality) ** 2 <= best.half_interval ** 2 + r.half_interval ** 2]
    return sorted(ok, key=lambda r: (r.latency_ms, -r.quality, -r.width, r.steps))[0]


def test_choice_matches_the_rule_on_random_tables():
    import random

    rng = random.Random(11)
    for _ in range(300):
        rows = []
        for w in (1.0, 0.75, 0.5):
            for s in (4, 8, 20):
                v = rng.uniform(20, 30)
                half = rng.choice([0.05, 0.5, 2.0])
                rows.append({"width": w, "steps": s, "latency_ms": round(rng.uniform(10, 100), 1),
                             "quality": {"value": v, "ci95": [v - half, v + half]}})
        table = parse_table(rows)
        for budget in (5.0, 30.0, 60.0, 200.0):
            assert choose(table, budget) == _brute_force_choice(table, budget)


def test_old_rows_and_old_policy_keys_say_to_rerun_bench():
    old = [{"width": 1.0, "steps": 8, "latency_ms": 12.0, "prompt_accuracy": 0.95, "device": "x"}]
    with pytest.raises(InputError, match=r"table\[0\]: a row of the old format .*edgekit bench"):
        parse_table(old)
    with pytest.raises(InputError, match="min_prompt_accuracy: replaced by 'min_quality'.*edgekit bench"):
        PolicyConfig.from_dict({**VECTORS["policy"], "min_prompt_accuracy": 0.5})


def test_rows_keep_their_measured_extras():
    row = {**TABLE[0], "ssim": {"value": 0.91, "ci95": [0.9, 0.92], "n": 20}, "prompt_accuracy": 0.95,
           "latency_spread_ms": [390.0, 410.0]}
    [parsed] = parse_table([row])
    assert parsed.measured["ssim"]["value"] == 0.91 and parsed.metric == "psnr_db"
    assert parsed.quality == 30.0 and parsed.quality_ci95 == (29.7, 30.3)


def test_min_quality_that_no_row_reaches_names_the_best():
    with pytest.raises(InputError, match=r"min_quality 40.0: no table row reaches it \(best 30 psnr_db"):
        _policy({"min_quality": 40.0})


def test_vectors_cover_every_reason_and_table():
    reasons = {s["expect"]["reason"] for c in VECTORS["cases"] for s in c["samples"]}
    assert reasons == {"initial", "hold", "dwell", "step_down", "step_up", "fallback"}
    assert {c["table"] for c in VECTORS["cases"]} == set(VECTORS["tables"])


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
    rows = {(r["width"], r["steps"]) for r in TABLE}
    for i in range(500):
        state = DeviceState(rng.random(), rng.random() < 0.3, rng.random() < 0.2,
                            rng.choice(["nominal", "fair", "serious", "critical"]),
                            rng.choice([None, rng.random() * 1.5]))
        d = policy.decide(i * 0.5, state)
        assert (d.width, d.steps) in rows
        # the row fits the budget unless none does, in which case it is the cheapest
        assert d.latency_ms <= d.budget_ms or d.latency_ms == min(r["latency_ms"] for r in TABLE)


def _manifest(**extra):
    base = {"widths": ["1.00", "0.50"], "sampling": {"schedules": {"4": {}, "8": {}, "20": {}}},
            "table": TABLE, "policy": VECTORS["policy"]}
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


JS_REPLAY = """
import { readFileSync } from "node:fs";
import { Policy, parsePolicy, parseTable } from "%s";
const cases = JSON.parse(readFileSync(0, "utf8"));
const out = cases.map((c) => {
  let policy = new Policy(parsePolicy(c.policy), parseTable(c.table), c.ratio);
  return c.samples.map((s) => {
    if (s.latency_ratio) policy = policy.rescaled(s.latency_ratio);
    const d = policy.decideOrFallback(s.t, s.state, () => {});
    return [d.steps, d.width, d.reason, d.overBudget, d.budgetMs, d.latencyMs];
  });
});
console.log(JSON.stringify(out));
"""


def test_js_twin_decides_like_python_on_random_tables_and_traces():
    """Beyond the hand-written vectors: random tables (overlapping and separate intervals, non-monotone
    latencies), random states and mid-run rescales give the same decisions in Python and in policy.js."""
    import random
    import shutil
    import subprocess

    assert shutil.which("node"), "node is needed for the JS twin (scripts/setup.sh)"
    rng = random.Random(5)
    cases, expected = [], []
    for _ in range(120):
        rows = []
        for w in (1.0, 0.5):
            for s in (4, 8, 20):
                v, half = round(rng.uniform(20, 30), 2), rng.choice([0.05, 0.4, 1.5])
                rows.append({"width": w, "steps": s, "latency_ms": round(rng.uniform(5, 100), 1),
                             "quality": {"value": v, "ci95": [round(v - half, 3), round(v + half, 3)]}})
        policy = {**VECTORS["policy"], "dwell_s": rng.choice([0.0, 2.0, 5.0]),
                  "reference_latency_ms": rng.choice([None, 60.0]), "min_quality": rng.choice([None, 22.0])}
        if policy["min_quality"] and not any(r["quality"]["value"] >= 22.0 for r in rows):
            policy["min_quality"] = None
        samples, t = [], 0.0
        for _ in range(25):
            t += rng.choice([0.5, 1.0, 3.0])
            state = {"battery_level": round(rng.random(), 2), "charging": rng.random() < 0.3,
                     "low_power": rng.random() < 0.2, "thermal": rng.choice(["nominal", "fair", "serious", "critical"])}
            sample = {"t": t, "state": state}
            if rng.random() < 0.1:
                sample["latency_ratio"] = round(rng.uniform(0.5, 3.0), 3)
            samples.append(sample)
        ratio = round(rng.uniform(0.5, 3.0), 3)
        cases.append({"policy": policy, "table": rows, "ratio": ratio, "samples": samples})
        p = Policy(PolicyConfig.from_dict(policy), rows, ratio)
        got = []
        for s in samples:
            if "latency_ratio" in s:
                p = p.rescaled(s["latency_ratio"])
            d = p.decide_or_fallback(s["t"], s["state"])
            got.append([d.steps, d.width, d.reason, d.over_budget, d.budget_ms, d.latency_ms])
        expected.append(got)
    policy_js = Path(__file__).resolve().parent.parent / "edgekit" / "targets" / "web" / "policy.js"
    proc = subprocess.run(["node", "--input-type=module", "-e", JS_REPLAY % policy_js.as_posix()],
                          input=json.dumps(cases), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    js = json.loads(proc.stdout)
    reasons = set()
    for case, py_case, js_case in zip(cases, expected, js):
        for k, (a, b) in enumerate(zip(py_case, js_case)):
            same = a[:4] == b[:4] and math.isclose(a[4], b[4], rel_tol=1e-12) and math.isclose(a[5], b[5], rel_tol=1e-12)
            assert same, (k, a, b, case["table"])
            reasons.add(a[2])
    assert reasons >= {"initial", "hold", "dwell", "step_down", "step_up"}
