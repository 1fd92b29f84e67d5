"""`edgekit package`: the chain end to end on small settings, resuming, per-target failure, bad input."""
import filecmp
import json
import shutil
from pathlib import Path

import pytest

from helpers import FAST


def test_the_report_holds_the_config_the_run_repeats_from(run_cli, packaged, default_model, tmp_path):
    from edgekit.package import PRUNE_RECIPE, PackageConfig

    asked = PackageConfig.from_yaml(packaged.parent / "fast.yaml")
    recorded = json.loads((packaged / "report.json").read_text())["config"]
    assert PackageConfig.from_dict(recorded) == asked and recorded == asked.to_dict()
    assert recorded["slim"]["train_steps"] == 7 and recorded["slim"]["importance"] == "taylor"
    assert all("seed" not in recorded[k] for k in ("slim", "quantize")) and recorded["seed"] == 0  # one run-wide seed
    assert recorded["prune"] is None and PackageConfig(prune=0.3).prune.recover_lr == PRUNE_RECIPE["recover_lr"]
    # the recorded config, given back as --config, is the same run: every stage is reused (in a copy)
    (tmp_path / "again.yaml").write_text(json.dumps(recorded))
    shutil.copytree(packaged, tmp_path / "copy")
    code, out, err = run_cli("package", "--model", default_model, "--config", tmp_path / "again.yaml",
                             "--out", tmp_path / "copy", "--json")
    assert code == 0, err
    assert not any(r["ran"] for r in _summary(out)["stages"])


def _summary(stdout: str) -> dict:
    return json.loads(stdout)


def test_package_writes_a_verified_measured_bundle_and_report(packaged):
    from edgekit.bundle import read_manifest
    from edgekit.runtime.verify import verify

    summary = json.loads((packaged / "package.json").read_text())
    assert [r["stage"] for r in summary["stages"]] == ["calib-w1.00", "quant-w1.00", "quality-w1.00",
                                                        "export-ort-web", "bench-ort-web", "bundle-ort-web"]
    assert all(r["ran"] for r in summary["stages"]) and not summary["failures"]
    # calibration ran the asked 3 steps per image (the model's default is 20): 4 images x 3 steps x 2 CFG rows
    meta = json.loads((packaged / "stages/calib-w1.00/meta.json").read_text())
    assert meta["config"]["steps"] == 3 and meta["components"]["unet"]["rows"] == 4 * 3 * 2
    manifest = read_manifest(packaged / "ort-web")
    assert manifest["precision"] == "int8"
    # the shipped INT8 UNet is the quantize stage's graph (with the profile's fused attention), checked against
    # torch like any export; the text encoder (not in fused_attention) is that graph byte for byte
    import onnx

    from edgekit.targets.ort_attention import fuse_attention

    stage_unet = onnx.load(str(packaged / "stages/quant-w1.00/quantized/unet/model.onnx"))
    assert fuse_attention(stage_unet) == manifest["components"]["unet"]["widths"]["1.00"]["attention"]["nodes"] > 0
    assert (packaged / "ort-web/unet/w1.00/model.onnx").read_bytes() == stage_unet.SerializeToString()
    assert filecmp.cmp(packaged / "ort-web/text_encoder/model.onnx",
                       packaged / "stages/quant-w1.00/quantized/text_encoder/model.onnx", shallow=False)
    assert verify(packaged / "ort-web")["files"] == len(manifest["files"])
    [row] = manifest["table"]
    assert (row["width"], row["steps"]) == (1.0, 4) and row["latency_ms"] > 0
    # the digits model reports reference fidelity (what the policy ranks by) and its declared extras beside it
    q = row["quality"]
    assert (q["evaluator"], q["metric"], q["n"]) == ("reference-fidelity", "psnr_db", 4)
    assert q["reference"] == "float torch, width 1.00, 20 steps" and q["ci95"][0] <= q["value"] <= q["ci95"][1]
    assert row["ssim"]["n"] == 4 and row["latency_rounds"] == 1
    assert 0.0 <= row["prompt_accuracy"] <= 1.0 and len(row["prompt_accuracy_ci95"]) == 2
    assert row["frechet_distance"] > 0 and len(row["frechet_distance_ci95"]) == 2
    assert manifest["policy"], "the bench stage writes the policy parameters the device reads"

    report = (packaged / "report.md").read_text()
    for text in ("## Bundles", "ort-web", "Policy's top choice", "plots/quality_vs_latency.png",
                 "plots/bundle_sizes.png"):
        assert text in report
    for plot in summary["report"]["plots"]:
        data = (packaged / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    for text in ("PSNR vs reference", "reference-fidelity", "prompt accuracy [95%]", "Fréchet distance [95%]",
                 "digits evaluator"):
        assert text in report
    numbers = json.loads((packaged / "report.json").read_text())
    full = numbers["float_quality"]["1.00"]
    assert full["quality"]["value"] == 100.0 and full["n_images"] == 4 and "prompt_accuracy" in full
    assert numbers["bundles"]["ort-web"]["bench"]["rows"][0]["latency_ms"] == row["latency_ms"]


def test_rerun_reuses_every_stage_and_a_changed_setting_reruns_only_its_readers(run_cli, package_copy,
                                                                               default_model):
    from edgekit.fsutil import sha256_tree

    before = sha256_tree(package_copy / "ort-web")
    args = ["package", "--model", default_model, "--targets", "ort-web", *FAST, "--out", package_copy, "--json"]
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert not any(r["ran"] for r in _summary(out)["stages"])
    assert sha256_tree(package_copy / "ort-web") == before

    changed = [a if a != "1" or args[i - 1] != "--repeats" else "2" for i, a in enumerate(args)]
    code, out, err = run_cli(*changed)
    assert code == 0, err
    assert [r["stage"] for r in _summary(out)["stages"] if r["ran"]] == ["bench-ort-web", "bundle-ort-web"]


def test_a_failing_target_is_reported_and_the_others_complete(run_cli, packaged, default_model, tmp_path,
                                                            monkeypatch):
    from edgekit.runtime.verify import verify
    from edgekit.targets import get_target

    out = tmp_path / "moved"
    shutil.copytree(packaged, out)  # a moved package output still resumes

    def broken(self, job, stage, profile):
        raise RuntimeError("converter crashed on purpose")

    monkeypatch.setattr(type(get_target("tflite")), "write", broken)
    code, stdout, err = run_cli("package", "--model", default_model, "--targets", "tflite,ort-web", *FAST,
                                "--out", out)
    assert code == 1
    assert "tflite" in err and "converter crashed on purpose" in err
    assert "FAILED at export-tflite" in stdout
    assert not (out / "tflite").exists()
    verify(out / "ort-web")
    summary = json.loads((out / "package.json").read_text())
    assert summary["failures"]["tflite"]["stage"] == "export-tflite"
    ran = {r["stage"]: r.get("failed", False) for r in summary["stages"] if r["ran"]}
    assert ran.pop("export-tflite") is True
    # the shared stages and the ort-web export are reused; tflite's own recipe stage ran before its export failed
    assert set(ran) <= {"bench-ort-web", "bundle-ort-web", "recipe-tflite-w1.00"}, ran
    assert "converter crashed on purpose" in (out / "report.md").read_text()


def test_package_slims_a_model_that_is_not_slimmable(run_cli, digits_arch_model, tmp_path):
    from edgekit.bundle import read_manifest
    from edgekit.structure import Structure

    out = tmp_path / "slimmed"
    policy = json.loads((Path(__file__).parent.parent / "edgekit" / "policy_default.json").read_text())
    (tmp_path / "policy.json").write_text(json.dumps({**policy, "min_quality": None}))  # random weights: no floor
    code, stdout, err = run_cli("package", "--model", digits_arch_model, "--targets", "ort-web", "--widths", "0.5,1.0",
                                "--policy", tmp_path / "policy.json",
                                "--slim-steps", "2", "--precision", "ort-web=fp32", "--steps", "3",
                                "--samples-per-digit", "1", "--repeats", "1", "--calib-samples", "4", "--out", out,
                                "--json")
    assert code == 0, err
    summary = _summary(stdout)
    stages = [r["stage"] for r in summary["stages"]]
    # the slim training reads the run's own calibration of its source (--calib-samples), not a capture of its own
    # an fp32 bundle reads no calibration and no quantize-stage graphs: neither stage runs for its widths
    assert stages == ["calib-source", "slim", "quality-w1.00", "quality-w0.50", "export-ort-web", "bench-ort-web",
                      "bundle-ort-web"]
    recorded = {name: json.loads((out / "stages" / f"{name}.json").read_text()) for name in ("calib-source", "slim")}
    assert recorded["slim"]["result"]["training"]["rows"] == recorded["calib-source"]["result"]["rows"]["unet"]
    assert recorded["slim"]["memory"]["peak_rss_bytes"] > 0  # a resumed run can still say what the stage took
    assert Structure.load(out / "stages" / "slim").widths == (0.5, 1.0)
    manifest = read_manifest(out / "ort-web")
    assert manifest["widths"] == [1.0, 0.5]
    assert sorted((r["width"], r["steps"]) for r in manifest["table"]) == [(0.5, 3), (1.0, 3)]


@pytest.mark.parametrize("flags, message", [
    (["--prune", "1.5"], "--prune 1.5"),
    (["--targets", "ort-web,nokia"], "nokia"),
    (["--quant", "bogus"], "--quant bogus"),
    (["--precision", "ort-web=w8"], "w8"),
    (["--precision", "coreml=w8", "--targets", "ort-web"], "--precision coreml"),
    (["--widths", "0.05,1.0"], "0.05"),
    (["--widths", "1.5"], "--widths 1.5"),
    (["--steps", "4,1000"], "--steps 1000"),  # the default DPM-Solver scheduler's latents turn to NaN at 1000
])
def test_bad_input_is_one_clear_error_and_writes_nothing(run_cli, default_model, tmp_path, flags, message):
    out = tmp_path / "out"
    code, stdout, err = run_cli("package", "--model", default_model, *flags, "--out", out)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_an_existing_directory_that_is_not_a_package_needs_force(run_cli, default_model, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = run_cli("package", "--model", default_model, "--out", out)
    assert code == 2 and "already exists" in err
    assert (out / "notes.txt").read_text() == "keep me"


def test_prune_of_a_slimmable_model_is_refused(run_cli, tmp_path):
    from edgekit.zoo.tiny_digits import SLIM_DIR

    code, _, err = run_cli("package", "--model", SLIM_DIR, "--prune", "0.25", "--out", tmp_path / "out")
    assert code == 2 and "already slimmable" in err


@pytest.mark.slow
def test_main_job_on_the_embedded_default(run_cli, tmp_path):
    """The README's main job: every target, widths 0.5 / 0.75 / 1.0, default settings."""
    from edgekit.bundle import read_manifest

    out = tmp_path / "bundles"
    code, stdout, err = run_cli("package", "--out", out, "--json")
    assert code == 0, err
    summary = _summary(stdout)
    assert summary["widths"] == [1.0, 0.75, 0.5] and not summary["failures"]
    for target in ("ort-web", "tflite", "coreml"):
        manifest = read_manifest(out / target)
        assert manifest["widths"] == [1.0, 0.75, 0.5]
        if target != "coreml":  # Core ML predicts on Apple devices only; its table is imported from one
            assert len(manifest["table"]) == 12 and manifest["policy"]
    quality = json.loads((out / "package.json").read_text())["float_quality"]
    # Float prompt accuracy per width on the package's 20 images (seed 0, one seed per image) against what the
    # slimmable model measured on 400 other images (seeds 10000..10399, 20 steps, guidance 2.0; Wilson 95%):
    # width 1 0.968 [0.945, 0.981], 0.75 0.975 [0.955, 0.986], 0.5 0.955 [0.930, 0.971] (chance: 0.1). The two
    # intervals must overlap: a width needs 17-18 of 20 right; a graph at 0.55 (11 of 20: [0.34, 0.74]) fails.
    measured = {"1.00": (0.945, 0.981), "0.75": (0.955, 0.986), "0.50": (0.930, 0.971)}
    for key, (measured_lo, measured_hi) in measured.items():
        lo, hi = quality[key]["prompt_accuracy_ci95"]
        assert quality[key]["n_images"] == 20 and lo <= measured_hi and hi >= measured_lo, (key, quality[key])
    # fidelity: width 1 is the reference itself; the narrower widths differ from it, yet stay close
    assert quality["1.00"]["quality"]["value"] == 100.0
    assert 20.0 < quality["0.50"]["quality"]["ci95"][0] and quality["0.75"]["quality"]["ci95"][1] < 100.0
    assert (out / "report.md").is_file() and len(list((out / "plots").glob("*.png"))) == 2


def test_config_round_trip_and_unknown_keys():
    from edgekit.errors import InputError
    from edgekit.package import PackageConfig

    config = PackageConfig(targets=("ort-web", "coreml"), widths=(0.5, 1.0), prune=0.25, precisions=(("coreml", "fp16"),),
                           steps=(4, 8))
    data = json.loads(json.dumps(config.to_dict()))
    assert PackageConfig.from_dict(data) == config and config.precision("coreml") == "fp16"
    with pytest.raises(InputError, match="did you mean 'widths'"):
        PackageConfig.from_dict({"widthz": [0.5]})


def test_package_of_a_model_that_is_not_the_digits_model_reports_fidelity_only(run_cli, sd15_reduced, tmp_path):
    """Reduced SD-1.5 architecture (random weights): the report's quality columns are reference fidelity only,
    calibration used the general prompt set, and the manifest carries a table the policy reads."""
    from edgekit.bundle import read_manifest
    from edgekit.calibration import GENERAL_PROMPTS_FILE
    from edgekit.policy import DeviceState, Policy

    model = tmp_path / "sd15_4steps"  # the same architecture and weights sampled at 4 default steps: a quick reference
    shutil.copytree(sd15_reduced, model)
    (model / "edgekit_defaults.json").write_text(json.dumps({"num_inference_steps": 4}))
    out = tmp_path / "sd15"
    code, stdout, err = run_cli("package", "--model", model, "--targets", "ort-web", "--widths", "1.0",
                                "--steps", "4", "--samples", "3", "--repeats", "1", "--calib-samples", "2",
                                "--out", out, "--json")
    assert code == 0, err
    report = (out / "report.md").read_text()
    assert "PSNR vs reference" in report and "SSIM" in report and "reference-fidelity" in report
    for digit_word in ("prompt accuracy", "fréchet", "digit"):
        assert digit_word not in report.lower(), digit_word
    numbers = json.loads((out / "report.json").read_text())
    assert [e["name"] for e in numbers["float_quality"]["1.00"]["evaluators"]] == ["reference-fidelity"]
    calib_meta = json.loads((out / "stages" / "calib-w1.00" / "meta.json").read_text())
    assert calib_meta["prompts_file"]["path"] == str(GENERAL_PROMPTS_FILE)
    manifest = read_manifest(out / "ort-web")
    [row] = manifest["table"]
    assert row["quality"]["evaluator"] == "reference-fidelity" and row["quality"]["n"] == 3
    assert row["quality"]["reference"] == "float torch, width 1.00, 4 steps"
    assert row["quality"]["value"] < 100.0, "the INT8 bundle is not the float reference"
    assert not {"prompt_accuracy", "frechet_distance", "prompt_accuracy_ci95", "frechet_distance_ci95"} & set(row)
    decision = Policy.from_manifest(manifest).decide(
        0.0, DeviceState(battery_level=1.0, charging=True, low_power=False, thermal="nominal"))
    assert (decision.width, decision.steps) == (1.0, 4)


@pytest.mark.parametrize("targets, expected", [
    (("ort-web",), ["calib", "quant", "quality", "export", "bench", "bundle"]),
    # LiteRT plans its INT8 recipe from the calibration; nothing reads the quantize stage's graphs
    (("tflite",), ["calib", "quality", "recipe", "export", "bench", "bundle"]),
])
def test_a_stage_runs_only_when_a_requested_target_consumes_its_output(default_model, tmp_path, targets, expected):
    from edgekit.package import PackageConfig, needed, plan
    from edgekit.package.steps import Run

    config = PackageConfig(targets=targets, widths=(1.0,))
    p = plan(default_model, config, tmp_path / "out")
    run = Run(plan=p, config=config, stages=None, progress=None, model=p.model, model_key="")
    assert [spec.name for spec, _ in needed(run)] == expected
    assert not (tmp_path / "out").exists(), "planning writes nothing"
