"""`edgekit policy simulate` on a hand-made manifest whose table rows are test data (device "test-data")."""
import json
from pathlib import Path

import pytest

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "edgekit" / "twin_vectors" / "policy.json").read_text())


def _sample(t, thermal="nominal", level=0.9, charging=False, low_power=False):
    return {"t": t, "battery_level": level, "charging": charging, "low_power": low_power, "thermal": thermal}


@pytest.fixture
def bundle(tmp_path):
    d = tmp_path / "bundle"
    d.mkdir()
    manifest = {"target": "test-fixture", "widths": ["1.00", "0.50"],
                "sampling": {"schedules": {"4": {}, "8": {}, "20": {}}},
                "table": VECTORS["tables"]["separated"], "policy": {**VECTORS["policy"], "dwell_s": 4.0}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def _trace(tmp_path, samples, name="trace.json"):
    p = tmp_path / name
    p.write_text(json.dumps(samples))
    return p


def test_thermal_ramp_json_and_plot(run_cli, bundle, tmp_path):
    trace = _trace(tmp_path, [_sample(0), _sample(1, "fair"), _sample(2, "serious"), _sample(3, "critical"),
                              _sample(4), _sample(6), _sample(8), _sample(9, level=0.1, charging=True)])
    plot = tmp_path / "out" / "decisions.png"
    code, out, err = run_cli("policy", "simulate", "--bundle", bundle, "--trace", trace, "--json", "--plot", plot)
    assert code == 0, err
    decisions = json.loads(out)["decisions"]
    assert [(d["steps"], d["width"]) for d in decisions] == [(20, 1.0), (8, 1.0), (8, 0.5), (4, 0.5), (4, 0.5),
                                                            (4, 0.5), (20, 1.0), (20, 1.0)]
    assert [d["reason"] for d in decisions] == ["initial", "step_down", "step_down", "step_down", "dwell", "dwell",
                                                "step_up", "hold"]
    assert [d["latency_ms"] for d in decisions][:4] == [400.0, 170.0, 100.0, 55.0]
    assert [d["quality"] for d in decisions][:4] == [30.0, 28.0, 24.0, 20.0]
    assert decisions[0]["quality_ci95"] == [29.7, 30.3]
    assert json.loads(out)["quality"] == {"metric": "psnr_db", "evaluator": "test-data", "n": 20}
    assert all({"t", "steps", "width", "latency_ms", "reason", "quality"} <= set(d) for d in decisions)
    from PIL import Image

    with Image.open(plot) as img:
        assert img.format == "PNG" and img.size == (900, 420)
        # the critical band (red background) is drawn
        assert (245, 190, 190) in {c for _, c in img.getcolors(1 << 16)}
    code, out, err = run_cli("policy", "simulate", "--bundle", bundle / "manifest.json", "--trace", trace)
    assert code == 0 and "step_down" in out and "critical" in out
    assert "quality: psnr_db (test-data)" in out and "30.00 ± 0.30" in out and "20.00 ± 0.50" in out


def test_a_manifest_with_old_rows_says_to_rerun_bench(run_cli, bundle, tmp_path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["table"] = [{"width": 1.0, "steps": 20, "latency_ms": 400.0, "prompt_accuracy": 1.0, "device": "x"}]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = run_cli("policy", "simulate", "--bundle", bundle, "--trace", _trace(tmp_path, [_sample(0)]))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "table[0]: a row of the old format" in err and "edgekit bench" in err


@pytest.mark.parametrize("content,needle", [
    ({"t": 0}, "non-empty JSON list"),
    ([_sample(0, "hot")], "unknown thermal state 'hot'"),
    ([_sample(0, level=1.2)], "battery_level"),
    ([{"battery_level": 0.5}], "'t'"),
])
def test_bad_traces_exit_2_with_one_line(run_cli, bundle, tmp_path, content, needle):
    trace = _trace(tmp_path, content)
    code, out, err = run_cli("policy", "simulate", "--bundle", bundle, "--trace", trace)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1 and out == ""


@pytest.mark.parametrize("drop,needle", [("table", "no measured 'table'"), ("policy", "no 'policy'")])
def test_manifest_without_table_or_policy_exits_2(run_cli, bundle, tmp_path, drop, needle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest[drop] = [] if drop == "table" else {}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    before = (bundle / "manifest.json").read_bytes()
    code, out, err = run_cli("policy", "simulate", "--bundle", bundle, "--trace", _trace(tmp_path, [_sample(0)]))
    assert code == 2 and needle in err
    assert (bundle / "manifest.json").read_bytes() == before


def test_bad_paths_exit_2(run_cli, bundle, tmp_path):
    trace = _trace(tmp_path, [_sample(0)])
    code, _, err = run_cli("policy", "simulate", "--bundle", tmp_path / "nope", "--trace", trace)
    assert code == 2 and "no manifest.json" in err
    code, _, err = run_cli("policy", "simulate", "--bundle", bundle, "--trace", trace, "--plot", bundle / "p.png")
    assert code == 2 and "inside the input" in err and not (bundle / "p.png").exists()
    existing = tmp_path / "p.png"
    existing.write_bytes(b"keep")
    code, _, err = run_cli("policy", "simulate", "--bundle", bundle, "--trace", trace, "--plot", existing)
    assert code == 2 and "--force" in err and existing.read_bytes() == b"keep"
    code, _, err = run_cli("policy", "simulate", "--bundle", bundle, "--trace", trace, "--plot", existing, "--force")
    assert code == 0 and existing.read_bytes()[:4] == b"\x89PNG"
