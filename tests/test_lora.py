"""--lora FILE[:SCALE]: a LoRA made here for the embedded model (peft, rank 4, UNet attention and text-encoder
projections) is fused before any stage; torch draws what diffusers' own load_lora_weights + fuse_lora draws, the
exported bundle draws the same image (the LoRA survives export), the manifest and the package stage keys carry
the LoRA's sha256; a bad LoRA is one line, exit 2, nothing written."""
import hashlib
import json

import numpy as np
import pytest
import torch

from edgekit.bundle import read_manifest

PROMPT, SEED, STEPS = "a handwritten digit seven", 7, 20


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path), dtype=np.int16)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 100.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory, default_model):
    """A rank-4 LoRA of the embedded model in diffusers' file format, random but seeded, strong enough to move
    the picture."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    from edgekit.pipeline import load_pipeline

    pipe = load_pipeline(default_model)
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    pipe.text_encoder.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                             target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in [*pipe.unet.named_parameters(), *pipe.text_encoder.named_parameters()]:
            if "lora_B" in name:
                param.normal_(0, 0.3)
    out = tmp_path_factory.mktemp("lora")
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet)),
        text_encoder_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.text_encoder)))
    return out / "pytorch_lora_weights.safetensors"


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path_factory.getbasetemp() / "lora-cache"))


def _diffusers_fused(default_model, lora_file, scale: float = 1.0) -> np.ndarray:
    """diffusers' own route, independent of edgekit.lora: load_lora_weights + fuse_lora, then edgekit's generate."""
    from edgekit.pipeline import generate, load_pipeline

    pipe = load_pipeline(default_model)
    pipe.load_lora_weights(str(lora_file))
    pipe.fuse_lora(lora_scale=scale)
    return generate(pipe, [PROMPT], [SEED], STEPS, 2.0)[0]


def test_lora_survives_export(default_model, lora_file, tmp_path, run_cli):
    common = ("--prompt", PROMPT, "--seed", SEED, "--steps", STEPS)
    assert run_cli("generate", *common, "--out", tmp_path / "plain.png")[0] == 0
    code, _, err = run_cli("generate", "--lora", lora_file, *common, "--out", tmp_path / "lora.png")
    assert code == 0, err
    plain, torch_lora = _png(tmp_path / "plain.png"), _png(tmp_path / "lora.png")
    assert np.abs(plain - torch_lora).max() > 40  # the LoRA changes the picture
    reference = np.round(_diffusers_fused(default_model, lora_file) * 255).astype(np.int16)
    assert np.abs(torch_lora - reference).max() <= 1  # what diffusers' own fusing draws

    code, _, err = run_cli("export", "--target", "ort-web", "--precision", "fp32", "--lora", lora_file,
                           "--steps", STEPS, "--out", tmp_path / "web")
    assert code == 0, err
    code, _, err = run_cli("generate", "--bundle", tmp_path / "web", *common, "--out", tmp_path / "bundle.png")
    assert code == 0, err
    bundle = _png(tmp_path / "bundle.png")
    with_lora, without = _psnr(bundle, torch_lora), _psnr(bundle, plain)
    print(f"LoRA fidelity: bundle vs torch with the LoRA {with_lora:.1f} dB, vs torch without {without:.1f} dB")
    assert np.abs(bundle - torch_lora).max() <= 1 and with_lora > without + 20

    source = read_manifest(tmp_path / "web")["source_model"]
    assert source["loras"] == [{"name": lora_file.name, "sha256": _sha256(lora_file), "scale": 1.0}]
    from edgekit.fsutil import sha256_tree

    assert source["base_model"] == {"name": default_model.name, "sha256": sha256_tree(default_model)}


def test_scale_and_repeat(default_model, lora_file, tmp_path, run_cli):
    common = ("--prompt", PROMPT, "--seed", SEED, "--steps", STEPS)
    code, _, err = run_cli("generate", "--lora", f"{lora_file}:0.5", *common, "--out", tmp_path / "half.png")
    assert code == 0, err
    reference = np.round(_diffusers_fused(default_model, lora_file, 0.5) * 255).astype(np.int16)
    assert np.abs(_png(tmp_path / "half.png") - reference).max() <= 1
    # the same file twice at 0.5 each is the file once at 1.0 (fused in order, linear in the scale)
    code, _, err = run_cli("generate", "--lora", f"{lora_file}:0.5", "--lora", f"{lora_file}:0.5", *common,
                           "--out", tmp_path / "twice.png")
    assert code == 0, err
    code, _, err = run_cli("generate", "--lora", lora_file, *common, "--out", tmp_path / "once.png")
    assert code == 0, err
    assert np.abs(_png(tmp_path / "twice.png") - _png(tmp_path / "once.png")).max() <= 1


@pytest.mark.slow  # three package runs (about 80 s here)
def test_lora_in_calibrate_eval_and_the_package_stage_keys(default_model, lora_file, tmp_path, run_cli):
    code, _, err = run_cli("calibrate", "--lora", lora_file, "--samples", "2", "--steps", "2", "--out",
                           tmp_path / "calib")
    assert code == 0, err
    code, out, err = run_cli("eval", "--lora", lora_file, "--samples", "2", "--steps", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] != str(default_model)  # the fused model is evaluated
    package = ("package", "--model", default_model, "--targets", "ort-web", "--widths", "1.0", "--calib-samples", "2",
               "--calib-steps", "2", "--steps", "2", "--samples", "2", "--repeats", "1", "--out", tmp_path / "pkg",
               "--json")
    code, out, err = run_cli(*package, "--lora", lora_file)
    assert code == 0, err
    bundle = tmp_path / "pkg" / "ort-web"
    assert read_manifest(bundle)["source_model"]["loras"][0]["sha256"] == _sha256(lora_file)
    # the same run again reuses every stage; another LoRA scale is another model: every stage runs again
    code, out, err = run_cli(*package, "--lora", lora_file)
    assert code == 0, err
    assert not any(r["ran"] for r in json.loads(out)["stages"])
    code, out, err = run_cli(*package, "--lora", f"{lora_file}:0.5")
    assert code == 0, err
    stages = json.loads(out)["stages"]
    assert stages and all(r["ran"] for r in stages), stages


@pytest.fixture(scope="module")
def bad_loras(tmp_path_factory, lora_file):
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("bad")
    (root / "text.safetensors").write_text("not a safetensors file")
    good = load_file(str(lora_file))
    name = next(k for k in good if k.endswith("to_q.lora.down.weight"))
    wrong = dict(good)
    wrong[name] = torch.zeros(good[name].shape[0], good[name].shape[1] + 3)
    save_file(wrong, str(root / "shapes.safetensors"))
    save_file({"unet.no_such.layer.lora.down.weight": torch.zeros(4, 8),
               "unet.no_such.layer.lora.up.weight": torch.zeros(8, 4)}, str(root / "keys.safetensors"))
    save_file({"weight": torch.zeros(3)}, str(root / "notlora.safetensors"))
    return root


@pytest.mark.parametrize("name, message", [
    ("text.safetensors", "not a safetensors file"),
    ("shapes.safetensors", "do not fit this model's layers"),
    ("keys.safetensors", "not found in the base model"),
    ("notlora.safetensors", "Invalid LoRA checkpoint"),
    ("missing.safetensors", "no such file"),
])
def test_a_bad_lora_is_one_line_and_exit_2(bad_loras, tmp_path, run_cli, name, message):
    path = bad_loras / name
    before = {p: p.read_bytes() for p in bad_loras.iterdir()}
    code, _, err = run_cli("generate", "--lora", path, "--prompt", "x", "--out", tmp_path / "x.png")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"edgekit generate: error: --lora {path}") and message in err, err
    assert not list(tmp_path.iterdir()) and {p: p.read_bytes() for p in bad_loras.iterdir()} == before
    code, _, err = run_cli("export", "--target", "onnx", "--lora", f"{path}:2", "--out", tmp_path / "b")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not list(tmp_path.iterdir())


def test_a_bad_scale_is_refused(lora_file, tmp_path, run_cli):
    code, _, err = run_cli("generate", "--lora", f"{lora_file}:1e9", "--prompt", "x", "--out", tmp_path / "x.png")
    assert code == 2 and "expected a finite number" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("generate", "--bundle", tmp_path, "--lora", lora_file, "--prompt", "x",
                           "--out", tmp_path / "x.png")
    assert code == 2 and "already hold the LoRAs" in err
