"""The browser demo end to end in real headless Debian Chromium (driven by playwright-core from npm, no
browser download): `edgekit serve` on 127.0.0.1, generate from a prompt with onnxruntime-web, check the
image is the asked digit with the classifier, check that forcing "critical" thermal lowers the cost, and
check the tab's own latency rescale: the runs it timed, the ratio it shows, the latencies the policy reads."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cli_checks import served
from policy_bundles import exported, made_up_row

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("web_demo_e2e.mjs")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, default_model):
    """The exported bundle with a table of TEST DATA (more steps = better beyond the intervals, and slower):
    this test must not depend on what the host bench measures or on how fast the shared machine happens to
    be (the rescale is checked against the page's own timings). `edgekit bench` itself is tested elsewhere."""
    from edgekit.cli import main

    src = exported(tmp_path_factory, default_model)
    out = tmp_path_factory.mktemp("web_demo") / "bundle"
    shutil.copytree(src, out)
    rows = [made_up_row(1.0, 4, 100.0, 24.0, 0.5), made_up_row(1.0, 20, 500.0, 30.0, 0.5)]
    table = out.parent / "table.json"
    table.write_text(json.dumps(rows))
    assert main(["bench", str(out), "--import-table", str(table)]) == 0
    return out


@pytest.fixture
def server(bundle):
    with served(bundle) as url:
        yield url


def _chromium_ready():
    missing = [p for p in ("/usr/bin/chromium", str(REPO / "node_modules" / "playwright-core")) if not Path(p).exists()]
    assert not missing, f"missing {missing}: run scripts/setup.sh (apt chromium, npm ci)"


def test_browser_generates_the_asked_digit_and_critical_thermal_lowers_cost(server, tmp_path):
    _chromium_ready()
    proc = subprocess.run(["node", str(DRIVER), server, str(tmp_path / "profile"), "a handwritten digit seven", "0"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after, forced = result["before"], result["after"], result["forced"]
    assert before["status"] == "done" and after["status"] == "done", (before["error"], after["error"])
    # the page showed per-step progress for every UNet call of the chosen schedule
    used = before["used"]
    assert before["progress"] == [f"{k}/{used['steps']}" for k in range(1, used["steps"] + 1)]
    assert before["steps"][-1] == f"step {used['steps']} / {used['steps']}"  # what the page showed at the end
    assert f"{used['steps']} steps" in before["shown"]
    # forcing critical: fewer steps or a narrower UNet, chosen at once (step down) and predicted cheaper
    assert (after["used"]["steps"], after["used"]["width"]) != (used["steps"], used["width"])
    assert after["used"]["steps"] < used["steps"] or after["used"]["width"] < used["width"]
    rescaled = {(r["width"], r["steps"]): r["latencyMs"] for r in before["latency"]["rows"]}
    assert forced["decision"]["reason"] == "step_down"
    assert forced["decision"]["latencyMs"] < rescaled[(used["width"], used["steps"])]
    _check_latency_rescale(result)
    from edgekit.quality.digit_classifier import DigitScorer

    scorer = DigitScorer.load()
    images = [np.asarray(r["image"]["rgb"], dtype=np.float32).reshape(r["image"]["size"], r["image"]["size"], 3)
              for r in (before, after)]
    predicted = scorer.predict(np.stack(images))
    assert predicted[0] == 7, f"the browser's image at {used['steps']} steps was classified as {predicted[0]}"
    assert not [m for m in result["console"] if m.startswith(("error", "pageerror"))], result["console"]
    # the same page asked for WebGPU in a browser with no adapter: said once, every component on wasm, no blank page
    no_adapter = result["noAdapter"]
    assert no_adapter["adapter"] is None and set(no_adapter["providers"].values()) == {"wasm"}, no_adapter
    assert no_adapter["notes"] == ["?ep=webgpu: this browser offers no WebGPU adapter; every component runs on wasm"]
    assert no_adapter["text"].startswith("execution providers: text_encoder wasm, vae_decoder wasm, unet/")


def _check_latency_rescale(result):
    """The page timed its first runs, showed measured / table latency (median over runs), and the policy
    reads every table latency times that ratio."""
    import re

    initial = result["initial"]
    table = {(r["width"], r["steps"]): r["latencyMs"] for r in initial["tableRows"]}
    assert table == {(1.0, 4): 100.0, (1.0, 20): 500.0}
    assert "not measured in this tab yet" in initial["text"] and initial["ratio"] == 1 and initial["runs"] == []
    assert {(r["width"], r["steps"]): r["latencyMs"] for r in initial["rows"]} == table
    ratios = []
    for n, run in enumerate((result["before"], result["after"]), start=1):
        lat = run["latency"]
        assert len(lat["runs"]) == n
        timed = lat["runs"][-1]
        assert (timed["width"], timed["steps"]) == (run["decision"]["width"], run["decision"]["steps"])
        assert timed["measured_ms"] == pytest.approx(run["timing"]["total_ms"], rel=1e-12)
        ratios.append(timed["measured_ms"] / table[(timed["width"], timed["steps"])])
        expected = float(np.median(ratios))
        assert lat["ratio"] == pytest.approx(expected, rel=1e-9)
        shown = re.fullmatch(r"measured (\d+\.\d\d) of the table's latency \((\d+) runs?\); .*", lat["text"])
        assert shown and float(shown[1]) == pytest.approx(expected, abs=0.006) and int(shown[2]) == n, lat["text"]
        for r in lat["rows"]:
            assert r["latencyMs"] == pytest.approx(table[(r["width"], r["steps"])] * expected, rel=1e-9)


def test_serve_refuses_bad_bundles(run_cli, tmp_path, bundle):
    code, _, err = run_cli("serve", tmp_path / "missing")
    assert code == 2 and "no such directory" in err
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["target"] = "tflite"
    from edgekit.bundle import integrity

    manifest["integrity"] = integrity(manifest)  # a consistent manifest of another target, not an edited one
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli("serve", copy)
    assert code == 2 and "needs an ort-web bundle" in err
    code, _, err = run_cli("serve", bundle, "--port", "70000")
    assert code == 2 and "--port" in err
