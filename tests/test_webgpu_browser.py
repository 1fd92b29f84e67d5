"""The ort-web INT8 bundle on WebGPU in real headless Debian Chromium (SwiftShader adapter, playwright-core):

- the export's browser check (profile verify_in_browser) records, per component, rel-err on wasm and on WebGPU,
  and every WebGPU form passes; `edgekit verify --browser` passes it again;
- a bundle whose WebGPU graphs are the plain QDQ ones (wrong on WebGPU, onnxruntime #32730) is refused by
  `verify --browser` where the manifest says WebGPU passed, and marked failed by the export's check, after which
  the page runs every component on wasm even when asked for `?ep=webgpu`, and says so;
- the demo page draws the same image on WebGPU as on wasm from the same seed at widths 1 and 0.5 (within the
  pixel tolerance the manifest records; a screenshot of each WebGPU canvas is kept);
- `?ep=` with an unknown value: a message, and the verified choice.
SwiftShader is slow (a 4-step image takes 15-60 s here), so every image is 2 steps."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cli_checks import served

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).with_name("web_webgpu_e2e.mjs")
STEPS = 2
ARTIFACTS = Path(os.environ.get("EDGEKIT_TEST_ARTIFACTS", REPO / "out" / "test-artifacts"))


def _cli(*argv):
    from edgekit.cli import main

    assert main([str(a) for a in argv]) == 0, argv


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from edgekit.runtime.browser import browser_missing
    from edgekit.zoo.tiny_digits import SLIM_DIR

    assert browser_missing() is None, browser_missing()
    root = tmp_path_factory.mktemp("webgpu_browser")
    _cli("calibrate", "--model", SLIM_DIR, "--samples", 2, "--steps", 2, "--out", root / "calib")
    profile = root / "profile.yaml"
    text = (REPO / "targets" / "web-ort.yaml").read_text()
    assert "verify_in_browser: false" in text and "verify_in_node: true" in text
    profile.write_text(text.replace("verify_in_browser: false", "verify_in_browser: true")
                       .replace("verify_in_node: true", "verify_in_node: false"))  # the browser's wasm replaces Node's
    out = root / "int8"
    _cli("export", "--model", SLIM_DIR, "--target", "ort-web", "--precision", "int8", "--calib", root / "calib",
         "--widths", "0.5,1.0", "--steps", f"{STEPS},4", "--profile", profile, "--out", out)
    return out


def _records(manifest):
    v = manifest["verification"]
    out = {"text_encoder": v["text_encoder"], "vae_decoder": v["vae_decoder"]}
    out.update({f"unet@{w}": r for w, r in v["unet"]["widths"].items()})
    return out


def test_export_records_every_component_right_on_both_providers(bundle, run_cli):
    manifest = json.loads((bundle / "manifest.json").read_text())
    records = _records(manifest)
    assert len(records) == 4
    for label, record in records.items():
        wasm, gpu = record["providers"]["wasm"], record["providers"]["webgpu"]
        assert wasm["passed"] and gpu["passed"], (label, record["providers"])
        assert gpu["file"].endswith("model.webgpu.onnx") and wasm["file"].endswith("/model.onnx")
        assert gpu["rel_err"] <= record["tolerance"] and gpu["adapter"]
        # the WebGPU form is as close to torch as the INT8 graph is on wasm (the broken form was 1.2-2.1)
        assert gpu["rel_err"] < 2 * wasm["rel_err"] + 1e-3, (label, gpu["rel_err"], wasm["rel_err"])
    code, out, err = run_cli("verify", bundle, "--browser")
    assert code == 0, err
    assert out.count("(ok, tolerance") == 8 and "every component passed on every execution provider" in out, out


def _tampered(bundle: Path, dest: Path) -> Path:
    """The bundle with each WebGPU form replaced by the plain QDQ graph (what the page ran before the rewrite)
    and a fresh file list, its manifest still recording the old (passing) WebGPU checks."""
    from edgekit.bundle import MANIFEST, write_manifest

    shutil.copytree(bundle, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    for gpu in dest.rglob("model.webgpu.onnx"):
        shutil.copyfile(gpu.with_name("model.onnx"), gpu)
    (dest / MANIFEST).unlink()
    manifest["files"] = {}
    write_manifest(dest, manifest)
    return dest


@pytest.fixture(scope="module")
def broken(bundle, tmp_path_factory):
    return _tampered(bundle, tmp_path_factory.mktemp("webgpu_broken") / "bundle")


def test_wrong_webgpu_graph_is_refused_then_marked(broken, run_cli, tmp_path):
    from edgekit.bundle import MANIFEST, read_manifest, write_manifest
    from edgekit.targets.ort_web import record_browser_checks

    code, out, err = run_cli("verify", broken, "--browser")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "webgpu" in err and "the manifest records that it passed" in err and "rel-err" in err, err
    # what the export's check does with the same graphs: every WebGPU form marked failed, wasm still passing
    manifest = record_browser_checks(broken, read_manifest(broken))
    for label, record in _records(manifest).items():
        assert record["providers"]["wasm"]["passed"] is True, label
        assert record["providers"]["webgpu"]["passed"] is False and record["providers"]["webgpu"]["rel_err"] > 0.5, label
    (broken / MANIFEST).unlink()
    write_manifest(broken, {**manifest, "files": {}})


def _drive(url, tmp_path, widths, *queries):
    shots = ARTIFACTS / "webgpu_e2e"
    shots.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["node", str(DRIVER), url, str(tmp_path / "profile"), str(shots), "a handwritten digit seven",
                           "0", str(STEPS), widths, *queries], capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), shots


def test_page_draws_the_same_image_on_webgpu_as_on_wasm(bundle, tmp_path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    with served(bundle) as url:
        result, shots = _drive(url, tmp_path, "1.00,0.50", "ep=metal")
    runs = {(r["ep"], r["width"]): r for r in result["runs"]}
    for width in ("1.00", "0.50"):
        wasm, gpu = runs[("wasm", width)], runs[("webgpu", width)]
        for run in (wasm, gpu):
            assert run["status"] == "done", run["error"]
            assert run["decision"]["steps"] == STEPS and f"{run['decision']['width']:.2f}" == width
        assert set(wasm["drawnOn"].values()) == {"wasm"} and set(gpu["drawnOn"].values()) == {"webgpu"}, gpu["notes"]
        assert "on webgpu" in gpu["shown"] and gpu["latency"]["ep"] == "webgpu" and wasm["latency"]["ep"] == "wasm"
        # the tab checked every component on its own adapter before using it (or took the cached answer)
        assert gpu["selfCheck"] and all(c["passed"] for c in gpu["selfCheck"].values())
        a = np.round(np.asarray(wasm["image"]["rgb"]) * 255)
        b = np.round(np.asarray(gpu["image"]["rgb"]) * 255)
        recorded = manifest["components"]["unet"]["widths"][width]["providers"]["webgpu"]["image_vs_own_graph"]
        assert recorded["steps"] == STEPS
        diff = float(np.abs(a - b).max())
        print(f"width {width}: WebGPU vs wasm max pixel difference {diff:.0f}/255, mean {np.abs(a - b).mean():.2f}; "
              f"INT8 vs its WebGPU form in onnxruntime CPU: {recorded['max_diff_255']:.0f}/255 (seeds {recorded['seeds']})")
        assert diff <= recorded["page_tolerance_255"], (width, diff, recorded)
        assert (shots / f"webgpu_w{width}.png").stat().st_size > 100
    (asked,) = result["queries"]
    assert asked["status"] == "ready" and asked["askedEp"] == "auto"
    assert asked["notes"][0].startswith("?ep=metal: unknown execution provider (expected wasm or webgpu)"), asked["notes"]
    assert set(asked["providers"].values()) == {"webgpu"}  # the verified choice
    assert "?ep=metal: unknown execution provider" in asked["text"]
    assert not [m for m in result["console"] if m.startswith(("error", "pageerror"))], result["console"]


def test_page_keeps_failed_components_on_wasm_when_asked_for_webgpu(broken, tmp_path):
    from edgekit.bundle import MANIFEST, read_manifest, write_manifest
    from edgekit.targets.ort_web import record_browser_checks

    manifest = read_manifest(broken)
    if manifest["verification"]["text_encoder"]["providers"]["webgpu"]["passed"]:  # run alone: mark it first
        manifest = record_browser_checks(broken, manifest)
        (broken / MANIFEST).unlink()
        write_manifest(broken, {**manifest, "files": {}})
    with served(broken) as url:
        result, _ = _drive(url, tmp_path, "", "ep=webgpu", "")
    forced, auto = result["queries"]
    for answer in (forced, auto):
        assert answer["status"] == "ready" and set(answer["providers"].values()) == {"wasm"}, answer
    # the components the page loaded (text encoder, VAE, the UNet of the policy's width): each said, none on WebGPU
    failed = sorted(n.split(":")[0] for n in forced["notes"] if "failed its WebGPU check at export" in n)
    assert failed == sorted(forced["providers"]) and len(failed) == 3, forced["notes"]
    assert not auto["notes"] or all("failed" not in n for n in auto["notes"])  # auto keeps wasm silently: nothing asked
    assert "runs on wasm" in forced["text"]
