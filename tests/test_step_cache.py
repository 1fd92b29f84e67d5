"""Step caching (edgekit.step_cache, DeepCache): the shallow UNet fed the feature of the same step is the full
UNet; interval 1 is the plain loop; a cached loop runs the plan and differs from the plain one; bad intervals and
UNets with nowhere to cache are refused naming the parameter."""
import numpy as np
import pytest
import torch

SLIM = "edgekit/zoo/tiny_digits/slim"


@pytest.fixture(scope="module")
def pipe():
    from edgekit.pipeline import load_pipeline

    return load_pipeline(SLIM)


def _inputs(unet, seed=0, batch=2):
    gen = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    return (torch.randn(batch, unet.config.in_channels, size, size, generator=gen), torch.tensor([900.0, 20.0])[:batch],
            torch.randn(batch, 16, unet.config.cross_attention_dim, generator=gen))


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_shallow_fed_the_same_steps_feature_is_the_full_unet(width):
    from edgekit.pipeline import load_pipeline
    from edgekit.step_cache import ShallowUNet, UNetWithFeature, feature_channels

    unet = load_pipeline(SLIM, width=width).unet.eval()
    x, t, ctx = _inputs(unet)
    with torch.no_grad():
        plain = unet(x, t, ctx, return_dict=False)[0]
        out, feature = UNetWithFeature(unet)(x, t, ctx)
        shallow = ShallowUNet(unet)(x, t, ctx, feature)
        other_feature = UNetWithFeature(unet)(*_inputs(unet, seed=5))[1]
        stale = ShallowUNet(unet)(x, t, ctx, other_feature)
    assert feature.shape[1] == feature_channels(unet) and feature.shape[2:] == x.shape[2:]
    assert torch.equal(out, plain)
    assert torch.allclose(shallow, plain, rtol=1e-5, atol=1e-5), float((shallow - plain).abs().max())
    # the feature matters: another step's feature gives another output
    assert float((stale - plain).abs().max()) > 1e-3


def test_shallow_branch_on_sd15_architecture(sd15_reduced):
    """SD-1.5's block layout (cross-attention in the first level, downsampler there) at reduced width."""
    from edgekit.pipeline import load_pipeline
    from edgekit.step_cache import ShallowUNet, UNetWithFeature

    unet = load_pipeline(sd15_reduced).unet.eval()
    gen = torch.Generator().manual_seed(0)
    s = unet.config.sample_size
    x = torch.randn(1, unet.config.in_channels, s, s, generator=gen)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=gen)
    t = torch.tensor([500.0])
    with torch.no_grad():
        plain = unet(x, t, ctx, return_dict=False)[0]
        _, feature = UNetWithFeature(unet)(x, t, ctx)
        shallow = ShallowUNet(unet)(x, t, ctx, feature)
    assert torch.allclose(shallow, plain, rtol=1e-4, atol=1e-5), float((shallow - plain).abs().max())


def test_plan():
    from edgekit.step_cache import cache_plan, parse_intervals

    assert cache_plan(1, 4) == ["full"] * 4
    assert cache_plan(2, 5) == ["full", "shallow", "full", "shallow", "full"]
    assert cache_plan(3, 8) == ["full", "shallow", "shallow"] * 2 + ["full", "shallow"]
    assert cache_plan(8, 8) == ["full"] + ["shallow"] * 7
    assert parse_intervals("3,2") == (1, 2, 3)


@pytest.mark.parametrize("bad", ["0", "-1", "1.5", "x", "", "2,,3"])
def test_bad_intervals_name_the_parameter(bad):
    from edgekit.errors import InputError
    from edgekit.step_cache import parse_intervals

    with pytest.raises(InputError) as info:
        parse_intervals(bad)
    assert str(info.value).startswith("cache")


def test_interval_past_the_step_count_is_refused():
    from edgekit.errors import InputError
    from edgekit.step_cache import cache_plan

    with pytest.raises(InputError, match=r"^cache 9: is larger than the step count 8"):
        cache_plan(9, 8)


def test_unet_with_one_up_block_is_refused():
    from diffusers import UNet2DConditionModel

    from edgekit.errors import InputError
    from edgekit.step_cache import UNetWithFeature

    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32,),
                                down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",),
                                layers_per_block=1, cross_attention_dim=32, norm_num_groups=8)
    with pytest.raises(InputError, match=r"^cache: the UNet has 1 up block\(s\)"):
        UNetWithFeature(unet)


def test_cached_loop_runs_the_plan_and_interval_1_is_the_plain_loop(pipe):
    from edgekit.pipeline import generate
    from edgekit.step_cache import caching_unet, generate_cached

    prompts, seeds = ["a handwritten digit three", "a handwritten digit seven"], [11, 12]
    plain = generate(pipe, prompts, seeds, 4, 4.0)
    assert np.array_equal(generate_cached(pipe, prompts, seeds, 4, 4.0, 1), plain)
    with caching_unet(pipe, 2, 4) as stand_in:
        cached = generate(pipe, prompts, seeds, 4, 4.0)
        assert stand_in.ran == ["full", "shallow", "full", "shallow"]
    assert pipe.unet is stand_in.inner  # put back
    diff = np.abs(cached - plain)
    assert 0 < diff.mean() < 0.1, diff.mean()  # an approximation of the same image, not another image


# ---------------------------------------------------------------------------------------------- the bundle
@pytest.fixture(scope="module")
def cached_bundle(tmp_path_factory):
    """The digits model (slim) exported for ort-web at widths 1 and 0.5 offering cache intervals 1, 2, 3."""
    from edgekit.cli import main

    out = tmp_path_factory.mktemp("step_cache") / "bundle"
    assert main(["export", "--model", SLIM, "--target", "ort-web", "--widths", "1.0,0.5", "--steps", "4,8",
                 "--cache", "2,3", "--out", str(out)]) == 0
    return out


def test_export_offers_the_plans_and_verifies_both_graphs(cached_bundle):
    from edgekit.bundle import read_manifest

    m = read_manifest(cached_bundle)
    section = m["sampling"]["step_cache"]
    assert section["intervals"] == [1, 2, 3]
    assert section["plans"]["2"]["4"] == ["full", "shallow", "full", "shallow"]
    assert section["plans"]["3"]["8"] == ["full", "shallow", "shallow"] * 2 + ["full", "shallow"]
    assert section["full_output"]["noise_channels"] == 4
    for name in ("unet", "unet_full", "unet_shallow"):
        assert set(m["components"][name]["widths"]) == {"1.00", "0.50"}
        for width, record in m["verification"][name]["widths"].items():
            ran = [c for c in record["checks"] if "rel_err" in c]
            assert ran and all(c["rel_err"] <= record["tolerance"] for c in ran), (name, width, record["checks"])
    shallow = m["components"]["unet_shallow"]["widths"]["1.00"]
    assert [t["name"] for t in shallow["inputs"]] == ["sample", "timestep", "encoder_hidden_states", "cached_feature"]
    # the shallow graph is the small one: the deep levels are not in it
    assert shallow["bytes"] < 0.5 * m["components"]["unet_full"]["widths"]["1.00"]["bytes"]


@pytest.mark.parametrize("guidance", [None, 1.0])
def test_bundle_loop_reproduces_the_torch_cached_loop(cached_bundle, pipe, guidance):
    """Guidance > 1 (the manifest's, CFG pairs) and <= 1 (one pass): the ORT loop following the manifest's plan
    gives the torch cached loop's image from the same noise; interval 1 is the plain bundle loop."""
    from edgekit.runtime.sampler import BundleSampler
    from edgekit.step_cache import generate_cached

    sampler = BundleSampler(cached_bundle, threads=1)
    prompts, seeds = ["a handwritten digit two", "a handwritten digit eight"], [3001, 3002]
    scale = sampler.guidance(guidance)[0]
    cached, _ = sampler.generate(prompts, seeds, 8, 1.0, guidance=guidance, cache=2)
    reference = generate_cached(pipe, prompts, seeds, 8, scale, 2)
    assert float(np.abs(cached - reference).max()) < 1e-4
    plain, timing = sampler.generate(prompts, seeds, 8, 1.0, guidance=guidance, cache=1)
    assert float(np.abs(plain - generate_cached(pipe, prompts, seeds, 8, scale, 1)).max()) < 1e-4
    assert float(np.abs(cached - plain).mean()) > 1e-3  # the shallow steps did run


def test_pndm_model_plans_one_role_per_unet_call_and_the_bundle_loop_runs_them(sd15_reduced, tmp_path):
    """SD-1.5's PNDMScheduler (skip_prk_steps) calls the UNet steps + 1 times: the manifest's plans hold one role
    per call of each schedule table, the torch reference runs the same roles (no wrap-around), and the bundle loop
    following the plan draws the torch cached loop's image."""
    import copy

    from edgekit.bundle import check_manifest, read_manifest
    from edgekit.cli import main
    from edgekit.errors import InputError
    from edgekit.pipeline import generate, load_pipeline
    from edgekit.runtime.sampler import BundleSampler
    from edgekit.step_cache import caching_unet, generate_cached

    out = tmp_path / "bundle"
    assert main(["export", "--model", str(sd15_reduced), "--target", "ort-web", "--steps", "3", "--cache", "1,2",
                 "--out", str(out)]) == 0
    m = read_manifest(out)
    schedules, plans = m["sampling"]["schedules"], m["sampling"]["step_cache"]["plans"]
    assert {s: len(t["timesteps"]) for s, t in schedules.items()} == {"3": 4}
    assert plans == {"2": {"3": ["full", "shallow", "full", "shallow"]}}
    bad = copy.deepcopy(m)
    bad["sampling"]["step_cache"]["plans"]["2"]["3"] = ["full", "shallow", "full"]  # one role per step: too short
    with pytest.raises(InputError, match=r"plans\.2\.3 should list 4 roles .*3-step schedule table"):
        check_manifest(bad, "manifest.json")

    pipe = load_pipeline(sd15_reduced)
    prompts, seeds = ["a red square"], [4100]
    sampler = BundleSampler(out, threads=1)
    scale = sampler.guidance()[0]
    cached, timing = sampler.generate(prompts, seeds, 3, 1.0, cache=2)
    with caching_unet(pipe, 2, 3) as stand_in:
        reference = generate(pipe, prompts, seeds, 3, scale)
        assert stand_in.ran == plans["2"]["3"]  # 4 calls for 3 steps, the last one shallow (no wrap-around)
    assert timing.unet_calls == 4
    assert float(np.abs(cached - reference).max()) < 1e-4
    assert np.array_equal(generate_cached(pipe, prompts, seeds, 3, scale, 2), reference)
    plain, _ = sampler.generate(prompts, seeds, 3, 1.0, cache=1)
    assert float(np.abs(cached - plain).mean()) > 1e-4  # the shallow calls did run


def test_generate_cli_follows_the_plan_and_refuses_bad_intervals(cached_bundle, tmp_path, capsys):
    from cli_checks import one_line

    from edgekit.cli import main

    out = tmp_path / "a.png"
    assert main(["generate", "--bundle", str(cached_bundle), "--steps", "8", "--cache", "3", "--prompt",
                 "a handwritten digit one", "--out", str(out), "--json"]) == 0
    assert out.is_file()
    capsys.readouterr()
    for cache, steps, needle in [("0", "8", "--cache 0: expected a whole number"),
                                 ("5", "8", "--cache 5: the bundle"),
                                 ("x", "8", "--cache x:")]:
        bad = tmp_path / f"bad{cache}.png"
        assert main(["generate", "--bundle", str(cached_bundle), "--steps", steps, "--cache", cache, "--prompt", "x",
                     "--out", str(bad)]) == 2
        one_line(capsys.readouterr().err, needle)
        assert not bad.exists()


@pytest.mark.parametrize("cache, needle", [("0", "--cache 0: expected a whole number"),
                                           ("9", "--cache 9: is larger than every offered step count (4, 8)"),
                                           ("2,-1", "--cache")])
def test_export_refuses_bad_intervals_before_writing(tmp_path, capsys, cache, needle):
    from cli_checks import one_line

    from edgekit.cli import main

    out = tmp_path / "b"
    assert main(["export", "--model", SLIM, "--target", "ort-web", "--steps", "4,8", "--cache", cache,
                 "--out", str(out)]) == 2
    one_line(capsys.readouterr().err, needle)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_export_refuses_a_unet_with_nowhere_to_cache(tmp_path, capsys, copy_of):
    import json

    from cli_checks import one_line
    from diffusers import UNet2DConditionModel

    from edgekit.cli import main

    model = copy_of(__import__("pathlib").Path("edgekit/zoo/tiny_digits/pipeline"), "model")
    cfg = json.loads((model / "unet" / "config.json").read_text())
    unet = UNet2DConditionModel(sample_size=cfg["sample_size"], in_channels=cfg["in_channels"],
                                out_channels=cfg["out_channels"], block_out_channels=(32,),
                                down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
                                layers_per_block=1, cross_attention_dim=cfg["cross_attention_dim"], norm_num_groups=8,
                                attention_head_dim=8)
    unet.save_pretrained(model / "unet")
    out = tmp_path / "b"
    assert main(["export", "--model", str(model), "--target", "ort-web", "--steps", "4", "--cache", "2",
                 "--out", str(out)]) == 2
    one_line(capsys.readouterr().err, "--cache: the UNet has 1 up block(s)")
    assert not out.exists()


def test_manifest_whose_plan_names_a_missing_graph_is_refused(cached_bundle, tmp_path):
    import copy

    from edgekit.bundle import check_manifest, read_manifest
    from edgekit.errors import InputError

    m = read_manifest(cached_bundle)
    bad = copy.deepcopy(m)
    bad["sampling"]["step_cache"]["graphs"]["shallow"] = "unet_tiny"
    with pytest.raises(InputError, match=r"sampling\.step_cache\.graphs\.shallow names component 'unet_tiny'"):
        check_manifest(bad, "manifest.json")
    bad = copy.deepcopy(m)
    del bad["components"]["unet_full"]
    with pytest.raises(InputError, match=r"graphs\.full names component 'unet_full', which the bundle lacks"):
        check_manifest(bad, "manifest.json")
    bad = copy.deepcopy(m)
    bad["sampling"]["step_cache"]["plans"]["2"]["4"] = ["shallow", "full", "shallow", "full"]
    with pytest.raises(InputError, match=r"plans\.2\.4 should list 4 roles"):
        check_manifest(bad, "manifest.json")
    bad = copy.deepcopy(m)
    bad["sampling"]["step_cache"]["plans"]["2"]["6"] = ["full"] * 6
    with pytest.raises(InputError, match=r"no schedule for 6 steps"):
        check_manifest(bad, "manifest.json")


# ---------------------------------------------------------------------------------------------- the policy
POLICY_VECTORS = __import__("pathlib").Path(__file__).resolve().parent.parent / "edgekit" / "twin_vectors"


def _cache_vectors():
    import json

    return (json.loads((POLICY_VECTORS / "policy_cache.json").read_text()),
            json.loads((POLICY_VECTORS / "policy.json").read_text())["policy"])


def test_policy_picks_cached_rows_from_the_shared_vectors():
    """The shared cache vectors (edgekit/twin_vectors/policy_cache.json, which the Kotlin twin runs too): on a
    thermal ramp the policy picks a cached row the (width, steps) table could not offer at that budget."""
    import math

    from edgekit.policy import Policy
    from edgekit.policy_inputs import PolicyConfig, latency_ratio, parse_table

    vectors, params = _cache_vectors()
    for case in vectors["cases"]:
        table = vectors["tables"][case["table"]]
        policy = Policy(PolicyConfig.from_dict(params), parse_table(table))
        old = Policy(PolicyConfig.from_dict(params), parse_table([r for r in table if r.get("cache", 1) == 1]))
        offered_new = False
        for sample in case["samples"]:
            d, e = policy.decide_or_fallback(sample["t"], sample["state"]), sample["expect"]
            assert (d.steps, d.width, d.cache, d.reason, d.over_budget) == \
                (e["steps"], e["width"], e["cache"], e["reason"], e["over_budget"]), (sample["t"], d)
            assert math.isclose(d.budget_ms, e["budget_ms"], rel_tol=1e-6)
            assert math.isclose(d.latency_ms, e["latency_ms"], rel_tol=1e-6)
            o = old.decide_or_fallback(sample["t"], sample["state"])
            offered_new |= d.cache > 1 and d.latency_ms <= d.budget_ms and d.quality > o.quality
        assert offered_new
    for case in vectors["latency_ratios"]:
        assert math.isclose(latency_ratio(case["runs"], parse_table(vectors["tables"][case["table"]])), case["ratio"],
                            rel_tol=1e-12)


def test_policy_refuses_bad_cache_rows():
    from edgekit.errors import InputError
    from edgekit.policy_inputs import parse_table

    vectors, _ = _cache_vectors()
    for bad in vectors["bad_tables"]:
        with pytest.raises(InputError, match=bad["error_contains"]):
            parse_table(bad["rows"])


def test_bench_measures_rows_per_cache_interval_and_the_policy_reads_them(cached_bundle, tmp_path):
    """edgekit bench --cache 1,2: rows (width, steps, cache), merged by all three, checked against the manifest's
    plans by the policy; a row naming an interval the bundle has no plan for is refused."""
    import shutil

    from edgekit.bundle import read_manifest
    from edgekit.errors import InputError
    from edgekit.policy import Policy
    from edgekit.runtime.bench import BenchConfig, measure, merge_table

    bundle = tmp_path / "b"
    shutil.copytree(cached_bundle, bundle)
    rows, _ = measure(bundle, BenchConfig(steps=(4,), widths=(1.0,), samples=4, repeats=1,
                                          reference_model=__import__("pathlib").Path(SLIM), cache_intervals=(1, 2)))
    assert [(r["width"], r["steps"], r.get("cache", 1)) for r in rows] == [(1.0, 4, 1), (1.0, 4, 2)]
    assert rows[0]["quality"]["value"] != rows[1]["quality"]["value"]  # another loop, other images
    written, _ = merge_table(bundle, read_manifest(bundle), rows, None)
    policy = Policy.from_manifest(written)
    assert {r.cache for r in policy.rows} == {1, 2}
    other = Policy.from_manifest({**written, "table": [{**written["table"][1], "cache": 3, "steps": 8}]})
    assert other.rows[0].cache == 3  # interval 3 at 8 steps: the bundle has that plan
    bad = {**written, "table": [{**written["table"][1], "cache": 4}]}
    with pytest.raises(InputError, match="no step-cache plan"):
        Policy.from_manifest(bad)
    with pytest.raises(InputError, match="^cache 5"):
        measure(bundle, BenchConfig(steps=(4,), widths=(1.0,), samples=4, repeats=1, cache_intervals=(1, 5)))


# ---------------------------------------------------------------------------------------------- the twins' vectors
def test_step_cache_vectors_are_what_the_python_device_loop_does():
    """edgekit/twin_vectors/step_cache.json (the Kotlin and Swift cores run it) against a fresh build, and the
    bundle sampler's own loop (edgekit.runtime.sampler.sample) with the vectors' fake graphs reproduces every case."""
    import json
    import sys

    sys.path.insert(0, str(POLICY_VECTORS.parent.parent / "tests"))
    import step_cache_vectors as sv

    from edgekit.runtime.sampler import Components, sample
    from edgekit.step_cache import cache_plan

    stored = json.loads((POLICY_VECTORS / "step_cache.json").read_text())
    assert stored == json.loads(json.dumps(sv.build()))
    shape = (sv.CHANNELS, 1, sv.HW)

    def rows(fn):
        def run(x, t, hidden, *rest):
            flat = x.reshape(len(x), -1).astype(np.float64)
            return np.stack([fn(flat[r], float(t[r]), float(hidden[r, 0, 0]), *(f[r].reshape(-1) for f in rest))
                             for r in range(len(x))]).reshape(len(x), -1, 1, sv.HW).astype(np.float32)
        return run

    for case in stored["cases"]:
        table = stored["sampling"]["schedules"][str(case["steps"])]
        got = []
        comps = Components(text_encoder=lambda ids: ids.astype(np.float32)[:, :1, None],
                           unet=rows(lambda x, t, h: sv.full(x, t, h)[:sv.CHANNELS * sv.HW]),
                           vae_decoder=lambda lat: got.append(lat) or np.zeros((len(lat), 3, 1, sv.HW), np.float32),
                           unet_full=rows(sv.full), unet_shallow=rows(sv.shallow), noise_channels=sv.CHANNELS)
        plan = stored["sampling"]["step_cache"]["plans"][str(case["interval"])][str(case["steps"])] \
            if case["interval"] > 1 else None
        # one role per UNet call of the table: the PNDM table makes steps + 1 calls
        assert plan == case["plan"] and (plan is None or plan == cache_plan(case["interval"], case["steps"],
                                                                            len(table["timesteps"])))
        sample(comps, lambda prompts: np.array([[1.0 if p else 0.0] for p in prompts]), table, ["c"], [case["seed"]],
               case["guidance_scale"], shape, 1.0, mode=case["guidance_mode"], plan=plan)
        assert np.allclose(got[0].reshape(-1), case["expected"], rtol=1e-4, atol=1e-4), case


@pytest.mark.slow  # an INT8 quantization inside the export: ~1 min on 2 shared cores
def test_int8_bundle_quantizes_the_full_graph_from_the_unets_rows(default_model, small_calib, tmp_path):
    """INT8 ort-web with --cache: the full graph is quantized from the UNet's calibration rows (its inputs are the
    UNet's), the shallow graph from rows the export captures on the torch cached loop (the calibration's prompts,
    steps, guidance and seed); both verified, and the INT8 loop stays close to the torch cached loop."""
    from edgekit.bundle import read_manifest
    from edgekit.cli import main

    out = tmp_path / "int8"
    assert main(["export", "--model", str(default_model), "--target", "ort-web", "--precision", "int8", "--calib",
                 str(small_calib), "--steps", "4", "--cache", "2", "--out", str(out)]) == 0
    m = read_manifest(out)
    full, shallow = m["components"]["unet_full"]["widths"]["1.00"], m["components"]["unet_shallow"]["widths"]["1.00"]
    assert full["precision"] == "int8" and full["quantization"]["from"] == "ort-static, run by the export"
    assert shallow["precision"] == "int8" and shallow["calibrated_on"]["rows"] > 0
    assert "cached loop" in shallow["calibrated_on"]["from"]
    record = m["verification"]["unet_full"]["widths"]["1.00"]
    assert record["inputs_from"] == "calibration rows"  # the UNet's rows, not random inputs
    for name in ("unet_full", "unet_shallow"):
        record = m["verification"][name]["widths"]["1.00"]
        assert all(c["rel_err"] <= record["tolerance"] for c in record["checks"] if "rel_err" in c)

    from edgekit.pipeline import load_pipeline
    from edgekit.runtime.sampler import BundleSampler
    from edgekit.step_cache import generate_cached

    sampler = BundleSampler(out, threads=1)
    image, _ = sampler.generate(["a handwritten digit six"], [3200], 4, 1.0, cache=2)
    reference = generate_cached(load_pipeline(default_model), ["a handwritten digit six"], [3200], 4,
                                sampler.guidance()[0], 2)
    assert float(np.abs(image - reference).mean()) < 0.05  # INT8's error, not another image


@pytest.mark.slow  # a LiteRT / Core ML conversion of three UNet graphs: minutes on 2 shared cores
@pytest.mark.parametrize("target", ["tflite", "coreml"])
def test_phone_targets_carry_both_cache_graphs(target, pipe, tmp_path):
    """tflite: the LiteRT loop following the plan draws the torch cached loop's image; coreml: both graphs
    converted and structure-checked here (prediction needs macOS)."""
    from edgekit.bundle import read_manifest
    from edgekit.cli import main

    out = tmp_path / target
    assert main(["export", "--model", SLIM, "--target", target, "--steps", "8", "--cache", "2", "--out", str(out)]) == 0
    m = read_manifest(out)
    for name in ("unet_full", "unet_shallow"):
        checks = m["verification"][name]["widths"]["1.00"]["checks"]
        assert checks and not any("error" in c for c in checks), checks
    if target == "tflite":
        from edgekit.runtime.sampler import BundleSampler
        from edgekit.step_cache import generate_cached

        sampler = BundleSampler(out, threads=1)
        image, _ = sampler.generate(["a handwritten digit four"], [3100], 8, 1.0, cache=2)
        reference = generate_cached(pipe, ["a handwritten digit four"], [3100], 8, sampler.guidance()[0], 2)
        assert float(np.abs(image - reference).max()) < 1e-4


def test_policy_generate_runs_the_cached_row_it_picks(cached_bundle, tmp_path, capsys):
    """A table whose cheapest good row is cached: `edgekit policy generate` picks it and draws with the manifest's
    plan for that interval (the image the bundle loop draws at that interval, not the plain one)."""
    import json
    import shutil

    from PIL import Image

    from edgekit.bundle import read_manifest
    from edgekit.cli import main
    from edgekit.runtime.bench import merge_table
    from edgekit.runtime.sampler import BundleSampler

    bundle = tmp_path / "b"
    shutil.copytree(cached_bundle, bundle)

    def row(cache, ms, q):
        return {"width": 1.0, "steps": 8, **({"cache": cache} if cache > 1 else {}), "latency_ms": ms,
                "latency_spread_ms": [ms, ms], "device": "test-data",
                "quality": {"evaluator": "test-data", "metric": "psnr_db", "value": q, "ci95": [q - 0.3, q + 0.3]}}

    merge_table(bundle, read_manifest(bundle), [row(1, 400.0, 30.0), row(2, 190.0, 29.9)], None)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"battery_level": 0.9, "charging": False, "low_power": False, "thermal": "nominal"}))
    out = tmp_path / "p.png"
    assert main(["policy", "generate", "--bundle", str(bundle), "--state", str(state), "--prompt",
                 "a handwritten digit five", "--seed", "3300", "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["decision"]["cache"] == 2 and payload["decision"]["steps"] == 8
    sampler = BundleSampler(bundle, threads=1)
    cached, _ = sampler.generate(["a handwritten digit five"], [3300], 8, 1.0, cache=2)
    plain, _ = sampler.generate(["a handwritten digit five"], [3300], 8, 1.0, cache=1)
    drawn = np.asarray(Image.open(out), dtype=np.float32) / 255
    assert np.abs(drawn - cached[0]).max() <= 1 / 255 + 1e-6 < np.abs(drawn - plain[0]).max()


def test_package_config_carries_the_cache_intervals(tmp_path, capsys):
    from cli_checks import one_line

    from edgekit.cli import main
    from edgekit.errors import InputError
    from edgekit.package import PackageConfig

    config = PackageConfig.from_dict({"cache": [3, 1]})
    assert PackageConfig.from_dict(config.to_dict()) == config and config.to_dict()["cache"] == [3, 1]
    with pytest.raises(InputError, match="^cache 0"):
        PackageConfig.from_dict({"cache": [1, 0]})
    out = tmp_path / "pkg"
    assert main(["package", "--cache", "0", "--out", str(out)]) == 2
    one_line(capsys.readouterr().err, "--cache 0: expected a whole number")
    assert not out.exists()


def test_browser_page_follows_the_plan_and_draws_the_python_loops_image(cached_bundle, tmp_path):
    """The demo page pinned to a cached row (?steps=8&width=1.00&cache=2) runs the manifest's plan with
    onnxruntime-web (wasm) and draws the image the Python bundle loop draws at that interval; the plain row (cache
    1) draws another one."""
    import json
    import subprocess
    from pathlib import Path

    from cli_checks import served
    from edgekit.runtime.sampler import BundleSampler

    repo = Path(__file__).resolve().parent.parent
    driver = Path(__file__).with_name("web_page_image.mjs")
    pages = {}
    with served(cached_bundle) as url:
        for cache in (2, 1):
            proc = subprocess.run(["node", str(driver), f"{url}?steps=8&width=1.00&cache={cache}",
                                   str(tmp_path / f"profile{cache}"), "a handwritten digit two", "5"],
                                  capture_output=True, text=True, timeout=600, cwd=repo)
            assert proc.returncode == 0, proc.stderr[-3000:]
            pages[cache] = json.loads(proc.stdout.strip().splitlines()[-1])
    sampler = BundleSampler(cached_bundle, threads=1)
    for cache, page in pages.items():
        assert page["status"] == "done", page["error"]
        assert page["decision"]["cache"] == cache and page["cache"]["interval"] == cache
        assert page["cache"]["plan"] == (None if cache == 1 else ["full", "shallow"] * 4)
        assert (f"step cache every {cache}" in page["shown"]) == (cache > 1)
        python, _ = sampler.generate(["a handwritten digit two"], [5], 8, 1.0, cache=cache)
        drawn = np.asarray(page["image"]["rgb"], np.float32).reshape(python.shape[1:])
        assert float(np.abs(drawn - python[0]).max()) * 255 <= 2, cache  # fp32 graphs: wasm vs ORT CPU
        assert not [m for m in page["console"] if m.startswith(("error", "pageerror"))], page["console"]
    a, b = (np.asarray(pages[c]["image"]["rgb"]) for c in (2, 1))
    assert float(np.abs(a - b).max()) > 0.01  # the shallow steps ran
