"""edgekit export --target ort-web and edgekit verify on a pipeline of SD-1.5's architecture: the bundle
holds what the manifest contract promises, matches torch in onnxruntime and in onnxruntime-web (Node,
wasm), and verify catches a flipped byte or a missing file, naming it. Bad input exits 2, writes nothing."""
import json
import shutil

import numpy as np
import pytest

from edgekit.bundle import FORMAT_VERSION, component_entries, read_manifest
from edgekit.cli import main


def _cli(*argv):
    return main([str(a) for a in argv])


@pytest.fixture(scope="session")
def ort_bundle(sd15_reduced, tmp_path_factory):
    out = tmp_path_factory.mktemp("ortweb") / "bundle"
    assert _cli("export", "--model", sd15_reduced, "--target", "ort-web", "--out", out) == 0
    return out


def test_manifest_follows_the_contract(ort_bundle, sd15_reduced):
    from edgekit.fsutil import sha256_tree
    from edgekit.schedule import schedule_table

    m = read_manifest(ort_bundle)
    assert (m["format_version"], m["stage"], m["target"], m["precision"]) == (FORMAT_VERSION, "export", "ort-web",
                                                                         "fp32")
    assert m["source_model"]["sha256"] == sha256_tree(sd15_reduced)
    assert m["widths"] == [1.0] and list(m["components"]["unet"]["widths"]) == ["1.00"]
    assert list(m["components"]) == ["text_encoder", "unet", "vae_decoder"]  # no VAE encoder in a browser bundle
    unet = m["components"]["unet"]["widths"]["1.00"]
    assert [t["name"] for t in unet["inputs"]] == ["sample", "timestep", "encoder_hidden_states"]
    assert unet["inputs"][0]["shape"] == ["batch", 4, 8, 8] and unet["layout"] == "NCHW"
    assert m["geometry"]["latent_shape"] == [4, 8, 8] and m["geometry"]["image_size"] == 64
    # the profile's fused attention: every UNet attention block is one MultiHeadAttention node, verified below
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import Attention

    blocks = sum(isinstance(x, Attention) for x in UNet2DConditionModel.from_pretrained(sd15_reduced / "unet").modules())
    assert blocks > 0 and unet["attention"] == {"op": "com.microsoft.MultiHeadAttention", "nodes": blocks}
    assert "attention" not in m["components"]["text_encoder"]  # its causal-masked attention does not match
    assert "attention" not in m["components"]["vae_decoder"]  # not in the profile's fused_attention list
    assert m["geometry"]["vae_scale_factor"] == 8
    assert "tokenizer/tokenizer.json" in m["tokenizer"]["files"] and m["tokenizer"]["max_length"] == 77
    assert m["sampling"]["batching"] == "batch2"
    assert {"4", "8", "12", "20"} <= set(m["sampling"]["schedules"])
    from edgekit.bundle import scheduler_config

    assert m["sampling"]["schedules"]["8"] == json.loads(json.dumps(schedule_table(scheduler_config(m), 8)))
    assert m["table"] == [] and m["policy"] == {}
    assert m["files"] and all(len(f["sha256"]) == 64 for f in m["files"].values())
    for name, width, entry in component_entries(m):
        record = m["verification"][name] if width is None else m["verification"][name]["widths"][width]
        runtimes = [c["runtime"] for c in record["checks"]]
        assert any(r.startswith("onnxruntime 1.") for r in runtimes)
        assert any(r.startswith("onnxruntime-web") for r in runtimes), runtimes
        assert all(c["rel_err"] < record["tolerance"] for c in record["checks"])


def test_verify_replays_in_ort_and_node(ort_bundle, run_cli):
    code, out, err = run_cli("verify", ort_bundle, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert len(result["checks"]) == 3 and all(c["rel_err"] < 1e-4 for c in result["checks"])
    code, out, err = run_cli("verify", ort_bundle, "--node", "--json")
    assert code == 0, err
    assert all(c["runtime"].startswith("onnxruntime-web") for c in json.loads(out)["checks"])


def test_verify_names_a_flipped_byte_and_a_missing_file(ort_bundle, tmp_path, run_cli):
    copy = tmp_path / "b"
    shutil.copytree(ort_bundle, copy)
    target = copy / "unet/w1.00/model.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    code, _, err = run_cli("verify", copy)
    assert code == 1 and "unet/w1.00/model.onnx" in err and "sha256" in err
    shutil.copy(ort_bundle / "unet/w1.00/model.onnx", target)
    (copy / "tokenizer" / "tokenizer.json").unlink()
    code, _, err = run_cli("verify", copy, "--files-only")
    assert code == 1 and "tokenizer/tokenizer.json: missing" in err


def test_fp16_bundle_is_half_the_size_and_close(sd15_reduced, ort_bundle, tmp_path, run_cli):
    out = tmp_path / "fp16"
    code, stdout, err = run_cli("export", "--model", sd15_reduced, "--target", "ort-web", "--precision", "fp16",
                                "--out", out, "--json")
    assert code == 0, err
    m = read_manifest(out)
    full = read_manifest(ort_bundle)
    unet16 = m["components"]["unet"]["widths"]["1.00"]
    unet32 = full["components"]["unet"]["widths"]["1.00"]
    assert unet16["precision"] == "fp16" and unet16["bytes"] < 0.6 * unet32["bytes"]
    assert unet16["inputs"][0]["dtype"] == "float32"  # the page keeps feeding float32
    checks = m["verification"]["unet"]["widths"]["1.00"]["checks"]
    assert all(1e-6 < c["rel_err"] < 2e-2 for c in checks)  # really half precision, still close


def test_external_data_chunks_join_in_ort_and_onnxruntime_web(ort_bundle, tmp_path):
    from edgekit.runtime.runners import NodeOrtWebRunner, OrtRunner
    from edgekit.targets.ort_web import split_external_data

    model = tmp_path / "model.onnx"
    shutil.copy(ort_bundle / "vae_decoder/model.onnx", model)
    reference = OrtRunner(model)
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    expected = reference.run({"latent_sample": x})
    chunks = split_external_data(model, cap_bytes=2**20)
    assert len(chunks) >= 3 and all(c["bytes"] <= 2**20 for c in chunks)
    assert model.stat().st_size < 2**20
    np.testing.assert_allclose(OrtRunner(model).run({"latent_sample": x}), expected, rtol=0, atol=0)
    web = NodeOrtWebRunner(model, ["latent_sample"], [c["file"] for c in chunks])
    np.testing.assert_allclose(web.run({"latent_sample": x}), expected, atol=1e-4)


def test_bad_input_exits_2_and_writes_nothing(sd15_reduced, tmp_path, run_cli):
    out = tmp_path / "out"
    cases = [
        (("--target", "tflight"), "did you mean 'tflite'"),
        (("--target", "ort-web", "--precision", "int8"), "needs --calib"),
        (("--target", "ort-web", "--precision", "w8"), "offers fp32, fp16, int8"),
        (("--target", "ort-web", "--widths", "1.0", "0.5"), "not a slimmable model"),
        (("--target", "tflite", "--profile", "targets/web-ort.yaml"), "profile for target 'ort-web'"),
    ]
    for flags, message in cases:
        code, _, err = run_cli("export", "--model", sd15_reduced, *flags, "--out", out)
        assert code == 2, (flags, err)
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1 and message in errors[0], err
        assert not out.exists() and not list(tmp_path.glob(".out*"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntarget: ort-web\nopset: 17\nfixed_shape: true\n")
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "ort-web", "--profile", bad, "--out", out)
    assert code == 2 and "did you mean 'fixed_shapes'" in err and str(bad) in err


def test_existing_output_is_refused_without_force(sd15_reduced, tmp_path, run_cli):
    from edgekit.fsutil import sha256_tree

    before = sha256_tree(sd15_reduced)
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "ort-web", "--out", out)
    assert code == 2 and "already exists" in err
    assert (out / "keep.txt").read_text() == "mine"
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "ort-web", "--out", sd15_reduced / "b")
    assert code == 2 and "inside the input" in err
    assert sha256_tree(sd15_reduced) == before


@pytest.mark.slow
def test_int8_qdq_bundle_from_calibration(sd15_reduced, sd15_calib, tmp_path, run_cli):
    out = tmp_path / "int8"
    code, _, err = run_cli("export", "--model", sd15_reduced, "--target", "ort-web", "--precision", "int8",
                           "--calib", sd15_calib, "--out", out)
    assert code == 0, err
    m = read_manifest(out)
    unet = m["components"]["unet"]["widths"]["1.00"]
    assert unet["precision"] == "int8" and unet["quantization"]["format"] == "QDQ"
    assert unet["quantization"]["quantize_linear_nodes"] > 0
    record = m["verification"]["unet"]["widths"]["1.00"]
    assert record["inputs_from"] == "calibration rows"
    assert all(1e-3 < c["rel_err"] < record["tolerance"] for c in record["checks"])
    # onnxruntime, onnxruntime on the WebGPU form (edgekit.targets.ort_webgpu), onnxruntime-web (wasm)
    assert len(record["checks"]) == 3 and record["checks"][1]["runtime"].endswith("model.webgpu.onnx")
    assert unet["providers"]["webgpu"]["file"] == "unet/w1.00/model.webgpu.onnx"


@pytest.mark.slow
def test_slimmable_widths_export_one_unet_each(sd15_reduced, sd15_calib, tmp_path, run_cli):
    slim = tmp_path / "slim"
    code, _, err = run_cli("slim", "--model", sd15_reduced, "--calib", sd15_calib, "--widths", "1.0,0.75",
                           "--train-steps", "1", "--out", slim)
    assert code == 0, err
    out = tmp_path / "bundle"
    code, _, err = run_cli("export", "--model", slim, "--target", "ort-web", "--widths", "1.0", "0.75", "--out", out)
    assert code == 0, err
    m = read_manifest(out)
    assert m["widths"] == [1.0, 0.75]
    widths = m["components"]["unet"]["widths"]
    assert list(widths) == ["1.00", "0.75"] and widths["0.75"]["params"] < widths["1.00"]["params"]
    assert widths["0.75"]["file"] == "unet/w0.75/model.onnx"
    assert run_cli("verify", out)[0] == 0
