"""`edgekit bench`: the measured table lands in the manifest (checksums still verify), the policy reads it,
rows from a phone can replace it, and bad input leaves the bundle untouched. Also the bundle sampler
against the diffusers pipeline at equal starting noise."""
import json

import numpy as np
import pytest

from policy_bundles import BENCH_SAMPLES, BENCH_STEPS, benched, exported, made_up_row


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, default_model):
    return benched(tmp_path_factory, default_model)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, default_model):
    return exported(tmp_path_factory, default_model)


def test_bench_writes_measured_rows_and_verify_still_passes(bundle, run_cli):
    manifest = json.loads((bundle / "manifest.json").read_text())
    rows = manifest["table"]
    assert sorted((r["width"], r["steps"]) for r in rows) == [(1.0, int(s)) for s in BENCH_STEPS.split(",")]
    for r in rows:  # the row format of notes/schema.md
        assert r["latency_ms"] > 0 and r["latency_rounds"] == 1
        assert r["latency_spread_ms"][0] <= r["latency_ms"] <= r["latency_spread_ms"][1]
        q = r["quality"]
        assert (q["evaluator"], q["metric"], q["n"]) == ("reference-fidelity", "psnr_db", BENCH_SAMPLES)
        assert q["ci95"][0] <= q["value"] <= q["ci95"][1] and 0 < q["value"] <= 100.0
        assert r["ssim"]["n"] == BENCH_SAMPLES and r["ssim"]["ci95"][0] <= r["ssim"]["value"] <= r["ssim"]["ci95"][1]
        assert 0 <= r["prompt_accuracy"] <= 1  # the digits model keeps its extras beside fidelity
        assert "onnxruntime" in r["runtime"] and r["device"]
    assert manifest["policy"]["format"] == "edgekit-policy/2" and manifest["policy"]["min_quality"] is None
    code, out, err = run_cli("verify", bundle, "--files-only")
    assert code == 0, err
    from edgekit.policy import DeviceState, Policy

    policy = Policy.from_manifest(manifest)
    cool = policy.decide(0, DeviceState(1.0, True, False, "nominal"))
    assert (cool.width, cool.steps) in {(r["width"], r["steps"]) for r in rows}
    # the rule on the measured rows: 20 steps only when its fidelity beats 4 steps beyond both intervals
    by_steps = {r["steps"]: r["quality"] for r in rows}
    half = {s: (q["ci95"][1] - q["ci95"][0]) / 2 for s, q in by_steps.items()}
    separated = by_steps[20]["value"] - by_steps[4]["value"] > (half[20] ** 2 + half[4] ** 2) ** 0.5
    assert cool.steps == (20 if separated else 4), (by_steps, cool)


def test_simulate_on_a_benched_bundle(bundle, run_cli, tmp_path):
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps([{"t": t, "battery_level": 0.9, "charging": False, "low_power": False, "thermal": th}
                                 for t, th in [(0, "nominal"), (5, "critical"), (10, "critical")]]))
    code, out, err = run_cli("policy", "simulate", "--bundle", bundle, "--trace", trace, "--json")
    assert code == 0, err
    decisions = json.loads(out)["decisions"]
    assert decisions[1]["latency_ms"] <= decisions[0]["latency_ms"]
    assert decisions[1]["steps"] == 4  # the cheapest row once critical: 20 steps cannot fit 15% of its own time


def test_bench_refuses_bad_input_and_leaves_the_bundle_alone(plain, run_cli, tmp_path):
    before = (plain / "manifest.json").read_bytes()
    code, _, err = run_cli("bench", plain, "--steps", "5")
    assert code == 2 and "no schedule for 5 steps" in err
    code, _, err = run_cli("bench", plain, "--widths", "0.5")
    assert code == 2 and "no UNet at width 0.50" in err
    code, _, err = run_cli("bench", plain, "--steps", "four")
    assert code == 2 and "--steps" in err
    phone = tmp_path / "phone.json"
    phone.write_text(json.dumps([made_up_row(0.5, 4, 90.0, 20.0, 0.5, "Pixel 8 (test data)")]))
    code, _, err = run_cli("bench", plain, "--import-table", phone)
    assert code == 2 and "width 0.5, which the bundle lacks" in err
    phone.write_text(json.dumps([{k: v for k, v in made_up_row(1.0, 4, 90.0, 20.0, 0.5).items() if k != "device"}]))
    code, _, err = run_cli("bench", plain, "--import-table", phone)
    assert code == 2 and "'device'" in err
    phone.write_text(json.dumps([{"width": 1.0, "steps": 4, "latency_ms": 90, "prompt_accuracy": 0.9, "device": "x"}]))
    code, _, err = run_cli("bench", plain, "--import-table", phone)
    assert code == 2 and "old format" in err and "edgekit bench" in err
    bad_policy = tmp_path / "policy.json"
    bad_policy.write_text(json.dumps({"thermal_budget": {"nominal": 1.0}}))
    code, _, err = run_cli("bench", plain, "--import-table", phone, "--policy", bad_policy)
    assert code == 2
    code, _, err = run_cli("bench", tmp_path / "missing")
    assert code == 2 and "no such directory" in err
    assert (plain / "manifest.json").read_bytes() == before


def test_a_phone_table_replaces_the_host_rows(bundle, run_cli, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    phone = tmp_path / "phone.json"
    rows = [made_up_row(1.0, 4, 310.0, 24.0, 0.5, "Pixel 8, LiteRT GPU (test data)"),
            made_up_row(1.0, 20, 1450.0, 30.0, 0.5, "Pixel 8, LiteRT GPU (test data)")]
    phone.write_text(json.dumps(rows))
    code, out, err = run_cli("bench", copy, "--import-table", phone, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["dropped_rows"] == 2 and [r["device"] for r in result["table"]] == [rows[0]["device"]] * 2
    assert run_cli("verify", copy, "--files-only")[0] == 0
    from edgekit.policy import DeviceState, Policy

    policy = Policy.from_manifest(json.loads((copy / "manifest.json").read_text()))
    assert policy.decide(0, DeviceState(1.0, True, False, "nominal")).steps == 20  # 30 +- 0.5 dB beats 24 +- 0.5


def test_bundle_sampler_matches_the_diffusers_pipeline(plain, default_pipe):
    import torch

    from edgekit.runtime.sampler import BundleSampler

    from edgekit.noise import initial_latents

    sampler = BundleSampler(plain)
    x0 = initial_latents([3], sampler.latent_shape)  # the noise the sampler draws for seed 3
    sigma = default_pipe.scheduler.init_noise_sigma
    ref = default_pipe(["a handwritten digit three"], num_inference_steps=8, guidance_scale=4.0,
                       latents=torch.from_numpy(x0 * sigma), output_type="np").images
    ours, timing = sampler.generate(["a handwritten digit three"], [3], 8, 1.0, guidance=4.0)
    assert ours.shape == ref.shape and timing.unet_calls == len(sampler.table(8)["timesteps"])
    assert np.abs(ours - ref).max() < 1e-3


def test_policy_generate_follows_the_state(bundle, run_cli, tmp_path):
    hot = tmp_path / "hot.json"
    hot.write_text(json.dumps({"battery_level": 0.05, "charging": False, "low_power": True, "thermal": "critical"}))
    out = tmp_path / "hot.png"
    code, stdout, err = run_cli("policy", "generate", "--bundle", bundle, "--prompt", "a handwritten digit two",
                                "--state", hot, "--out", out, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["decision"]["steps"] == 4 and result["state_from"] == str(hot)
    from PIL import Image

    with Image.open(out) as img:
        manifest = json.loads((bundle / "manifest.json").read_text())
        assert img.size == (manifest["geometry"]["image_size"],) * 2
    # this computer's own state through psutil gives some row of the table
    code, stdout, err = run_cli("policy", "generate", "--bundle", bundle, "--prompt", "a handwritten digit two",
                                "--out", tmp_path / "here.png", "--json")
    assert code == 0 and json.loads(stdout)["state_from"] == "psutil"
    hot.write_text(json.dumps({"battery_level": 3, "charging": False, "low_power": True, "thermal": "critical"}))
    code, _, err = run_cli("policy", "generate", "--bundle", bundle, "--prompt", "x", "--state", hot,
                           "--out", tmp_path / "bad.png")
    assert code == 2 and "battery_level" in err and not (tmp_path / "bad.png").exists()


def test_bench_keeps_its_measured_rows_beside_the_bundle_and_one_step_merges_them(plain, run_cli, default_model,
                                                                                   tmp_path):
    """--table-out: the measured rows as bench's own file (never inside the bundle); the merge into the manifest is
    the step --import-table runs on that file, giving the same table in another copy of the bundle."""
    import shutil

    first, second = tmp_path / "first", tmp_path / "second"
    shutil.copytree(plain, first)
    shutil.copytree(plain, second)
    before = (first / "manifest.json").read_bytes()
    code, _, err = run_cli("bench", first, "--steps", "4", "--repeats", "1", "--table-out", first / "bench.json")
    assert code == 2 and "--table-out" in err and "inside the bundle" in err
    assert (first / "manifest.json").read_bytes() == before and not (first / "bench.json").exists()

    measured = tmp_path / "first.bench.json"
    code, out, err = run_cli("bench", first, "--steps", "4", "--repeats", "1", "--samples", "4", "--reference-model",
                             default_model, "--table-out", measured, "--json")
    assert code == 0, err
    saved = json.loads(measured.read_text())
    assert saved["format"] == "edgekit-measured-table/1" and saved["rows"] == json.loads(out)["rows"]
    table = json.loads((first / "manifest.json").read_text())["table"]
    assert [(r["width"], r["steps"]) for r in table] == [(1.0, 4)] and table == saved["rows"]

    code, out, err = run_cli("bench", second, "--import-table", measured, "--json")
    assert code == 0, err
    assert json.loads((second / "manifest.json").read_text())["table"] == table
    assert run_cli("verify", second, "--files-only")[0] == 0
