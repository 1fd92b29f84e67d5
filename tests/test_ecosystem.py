"""Bundles other tools can load: the text encoder takes int32 ids everywhere, an onnx bundle reads per width
as the directory diffusers' OnnxStableDiffusionPipeline loads and draws edgekit's image for the same noise,
and no manifest carries a path of the packaging host."""
import json
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle import read_manifest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def onnx_bundle(tmp_path_factory):
    """The embedded digits model (VAE scaling factor 1.325, not the 0.18215 the ONNX pipelines assume)."""
    from edgekit.cli import main

    out = tmp_path_factory.mktemp("onnx") / "bundle"
    assert main(["export", "--target", "onnx", "--out", str(out)]) == 0
    return out


def test_every_text_encoder_graph_takes_int32_ids(onnx_bundle):
    import onnx

    m = read_manifest(onnx_bundle)
    assert m["components"]["text_encoder"]["inputs"][0] == {"name": "input_ids", "dtype": "int32", "shape": ["batch", 16]}
    for path in (onnx_bundle / "text_encoder/model.onnx", onnx_bundle / "w1.00/text_encoder/model.onnx"):
        graph_input = onnx.load(str(path), load_external_data=False).graph.input[0]
        assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert m["verification"]["text_encoder"]["data"]["inputs"]["input_ids"]["dtype"] == "int32"


def test_onnx_bundle_lists_and_verifies_its_vae_encoder(onnx_bundle):
    """The registry's VAE encoder: in the onnx manifest like any component, checked against torch, and the graph
    the pipeline view links (behind one Mul into the pipelines' 0.18215 units for this model's scaling)."""
    from edgekit.runtime.verify import verify

    m = read_manifest(onnx_bundle)
    entry = m["components"]["vae_encoder"]
    assert entry["file"] == "vae_encoder/model.onnx" and entry["precision"] == "fp32"
    assert [t["name"] for t in entry["inputs"]] == ["sample"] and entry["outputs"][0]["name"] == "latent_sample"
    assert entry["outputs"][0]["shape"] == m["components"]["vae_decoder"]["inputs"][0]["shape"]
    record = m["verification"]["vae_encoder"]
    assert record["checks"] and all(c["rel_err"] <= record["tolerance"] for c in record["checks"] if "rel_err" in c)
    rechecked = {c["component"]: c for c in verify(onnx_bundle)["checks"]}
    assert rechecked["vae_encoder"]["rel_err"] <= record["tolerance"]
    assert m["geometry"]["vae_scaling_factor"] != 0.18215  # so the view's encoder is the rescaled graph
    view = onnx_bundle / m["components"]["unet"]["widths"]["1.00"]["pipeline_dir"] / "vae_encoder" / "model.onnx"
    assert view.read_bytes() != (onnx_bundle / entry["file"]).read_bytes()


def test_onnx_bundle_loads_in_diffusers_and_draws_edgekits_image(onnx_bundle):
    from diffusers import OnnxStableDiffusionPipeline

    from edgekit.runtime.sampler import BundleSampler

    m = read_manifest(onnx_bundle)
    view = onnx_bundle / m["components"]["unet"]["widths"]["1.00"]["pipeline_dir"]
    index = json.loads((view / "model_index.json").read_text())
    assert index["_class_name"] == "OnnxStableDiffusionPipeline"
    for name in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (view / name / "model.onnx").is_file() and (view / name / "config.json").is_file()
    # one copy on disk: the view's UNet is the manifest's file (a hard link where the file system has them)
    assert (view / "unet/model.onnx").read_bytes() == (onnx_bundle / "unet/w1.00/model.onnx").read_bytes()

    sampler = BundleSampler(onnx_bundle)
    prompt, seed, steps, guidance = "a handwritten digit seven", 3, 8, 4.0
    ours, _ = sampler.generate([prompt], [seed], steps, 1.0, guidance=guidance)
    pipe = OnnxStableDiffusionPipeline.from_pretrained(view, provider="CPUExecutionProvider")
    pipe.set_progress_bar_config(disable=True)
    try:  # the seeded noise the bundle sampler draws (edgekit.noise where the shared generator exists)
        from edgekit.noise import initial_latents
    except ImportError:
        def initial_latents(seeds, shape):
            return np.stack([np.random.default_rng(s).standard_normal(shape) for s in seeds]).astype(np.float32)
    noise = np.asarray(initial_latents([seed], sampler.latent_shape), dtype=np.float32)
    side = sampler.latent_shape[-1] * 8  # that pipeline derives the latent size as height // 8
    theirs = pipe(prompt, height=side, width=side, num_inference_steps=steps, guidance_scale=guidance,
                  latents=noise, output_type="np").images
    assert theirs.shape == ours.shape == (1, 32, 32, 3)
    assert np.abs(theirs - ours).max() < 1e-4
    assert ours.std() > 0.05  # a drawn digit, not a flat image
    # the VAE encoder round-trips an image through the pipelines' latent units
    image = ours.transpose(0, 3, 1, 2) * 2 - 1
    latents = pipe.vae_encoder(sample=image.astype(np.float32))[0] * 0.18215
    back = pipe.vae_decoder(latent_sample=latents / 0.18215)[0]
    assert np.abs(np.clip(back / 2 + 0.5, 0, 1) - ours.transpose(0, 3, 1, 2)).mean() < 0.1


def _host_paths(tmp_root: Path) -> list[str]:
    home = str(Path.home())
    return [p for p in {str(tmp_root), str(REPO), str(REPO.resolve()), home} if len(p) > 1]


def _assert_no_host_paths(manifests: list[Path], roots: list[str]) -> None:
    assert manifests
    for path in manifests:
        text = path.read_text()
        leaked = [r for r in roots if r in text]
        assert not leaked, f"{path}: names host paths {leaked}"


def test_bundle_manifest_holds_no_host_paths(onnx_bundle, default_model):
    m = read_manifest(onnx_bundle)
    assert m["source_model"]["name"] == default_model.name and m["source_model"]["calibration"] is None
    _assert_no_host_paths(sorted(onnx_bundle.rglob("manifest.json")),
                          _host_paths(onnx_bundle.parent.parent) + [str(default_model.parent)])


@pytest.mark.slow
def test_int8_manifest_from_the_quantize_stage_holds_no_host_paths(sd15_reduced, sd15_calib, tmp_path, run_cli):
    """An ort-web INT8 bundle shipping the quantize stage's graphs (which recorded a host path before)."""
    from edgekit.profiles import shipped_profile
    from edgekit.targets.base import ExportRequest, export_bundle

    quantized = tmp_path / "quantized"
    code, _, err = run_cli("quantize", "--model", sd15_reduced, "--calib", sd15_calib, "--method", "ort-static",
                           "--components", "unet", "--float-budget", "0", "--out", quantized)
    assert code == 0, err
    out = tmp_path / "int8"
    export_bundle(ExportRequest(model_dir=sd15_reduced, out=out, target="ort-web",
                                profile=shipped_profile("web-ort").with_precision("int8"), calib_dir=sd15_calib,
                                quantized_dirs=((1.0, quantized),)))
    unet = read_manifest(out)["components"]["unet"]["widths"]["1.00"]
    assert unet["quantization"]["from"] == "quantize stage"
    assert unet["quantization"]["graph"] == "quantized/unet/model.onnx"
    _assert_no_host_paths(sorted(out.rglob("manifest.json")), _host_paths(tmp_path.parent) + [str(sd15_calib.parent)])
    assert read_manifest(out)["source_model"]["calibration"]["name"] == sd15_calib.name


def test_generate_runs_the_bundle_on_its_own_runtime(onnx_bundle, tmp_path, run_cli, monkeypatch):
    from PIL import Image

    from edgekit.runtime.sampler import BundleSampler

    monkeypatch.chdir(tmp_path)  # from any directory
    code, out, err = run_cli("generate", "--bundle", onnx_bundle, "--prompt", "a handwritten digit two", "--steps", "8",
                             "--guidance", "3", "--seed", "5", "--out", "two.png", "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["runtime"].startswith("onnxruntime") and payload["steps"] == 8 and payload["width"] == 1.0
    expected, _ = BundleSampler(onnx_bundle).generate(["a handwritten digit two"], [5], 8, 1.0, guidance=3.0)
    png = np.asarray(Image.open(tmp_path / "two.png"), dtype=np.float32) / 255
    assert np.abs(png - expected[0]).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("flags, message", [
    (("--steps", "7"), "no schedule for 7 steps"),
    (("--width", "0.5"), "the bundle has UNet widths 1.00"),
    (("--model", "."), "give one"),
    (("--out", "x.jpg"), "expected a .png"),
])
def test_generate_bundle_bad_input_exits_2(onnx_bundle, tmp_path, run_cli, flags, message):
    argv = ["generate", "--bundle", onnx_bundle, "--prompt", "x", *flags]
    if "--out" not in flags:
        argv += ["--out", tmp_path / "x.png"]
    code, _, err = run_cli(*argv)
    assert code == 2 and message in err, err
    assert not list(tmp_path.iterdir())
    code, _, err = run_cli("generate", "--bundle", tmp_path / "none", "--prompt", "x", "--out", tmp_path / "y.png")
    assert code == 2 and "not a directory" in err


def test_data_files_and_onnxruntime_web_lookup_order(tmp_path, monkeypatch):
    """Checkout copies when edgekit runs from a checkout, else the wheel's; onnxruntime-web from the checkout's
    node_modules, then EDGEKIT_NODE_MODULES, then edgekit's own copy; absent: one line naming each place."""
    import edgekit.resources as resources
    from edgekit.profiles import profiles_dir
    from edgekit.runtime.runners import node_available

    assert profiles_dir() == REPO / "targets" and resources.find_ort_web() == REPO / "node_modules/onnxruntime-web"

    def fake_modules(root: Path) -> Path:
        (root / "onnxruntime-web").mkdir(parents=True)
        (root / "onnxruntime-web" / "package.json").write_text('{"version": "0.0.0"}')
        return root

    wheel_data = tmp_path / "wheel_data"
    (wheel_data / "targets").mkdir(parents=True)
    monkeypatch.setattr(resources, "checkout_root", lambda: None)  # as installed from the wheel
    monkeypatch.setattr(resources, "PACKAGE_DATA", wheel_data)
    monkeypatch.delenv(resources.NODE_MODULES_ENV, raising=False)
    assert profiles_dir() == wheel_data / "targets"
    why = node_available()
    assert why is not None and len(why.splitlines()) == 1
    assert resources.NODE_MODULES_ENV in why and str(wheel_data / "node_modules") in why
    own = fake_modules(wheel_data / "node_modules")
    assert resources.find_ort_web() == own / "onnxruntime-web"
    env = fake_modules(tmp_path / "env_modules")
    monkeypatch.setenv(resources.NODE_MODULES_ENV, str(env))
    assert resources.find_ort_web() == env / "onnxruntime-web"
    checkout = tmp_path / "checkout"
    fake_modules(checkout / "node_modules")
    monkeypatch.setattr(resources, "checkout_root", lambda: checkout)
    assert resources.find_ort_web() == checkout / "node_modules" / "onnxruntime-web"


def test_an_ort_web_export_without_onnxruntime_web_says_so_and_still_checks_in_python(tmp_path, monkeypatch, run_cli):
    import edgekit.resources as resources

    import shutil

    wheel_data = tmp_path / "wheel_data"  # a wheel built without onnxruntime-web (npm ci had not run)
    shutil.copytree(REPO / "targets", wheel_data / "targets")
    monkeypatch.setattr(resources, "checkout_root", lambda: None)
    monkeypatch.setattr(resources, "PACKAGE_DATA", wheel_data)
    monkeypatch.delenv(resources.NODE_MODULES_ENV, raising=False)
    code, _, err = run_cli("export", "--target", "ort-web", "--out", tmp_path / "b")
    assert code == 0, err
    record = read_manifest(tmp_path / "b")["verification"]["text_encoder"]
    python, web = record["checks"]
    assert python["runtime"].startswith("onnxruntime 1.") and python["rel_err"] < 1e-4
    assert web["runtime"].startswith("onnxruntime-web") and "onnxruntime-web not found" in web["skipped"]


NOISY = r"""
import logging, os, sys, warnings
import edgekit.runtime.sampler as sampler
original = sampler.BundleSampler.generate
def noisy(self, *args, **kwargs):  # what converters and libraries do while a stage runs
    print("library print")
    warnings.warn("library warning")
    logging.getLogger("somelib").warning("library log record")
    os.write(2, b"native stderr line\n")
    os.write(1, b"native stdout line\n")
    return original(self, *args, **kwargs)
sampler.BundleSampler.generate = noisy
from edgekit.cli import main
sys.exit(main(sys.argv[1:]))
"""
NOISE = ("library print", "library warning", "library log record", "native stderr line", "native stdout line")


@pytest.mark.parametrize("verbose", [False, True])
def test_other_libraries_output_goes_to_a_log_and_json_stays_pure(onnx_bundle, tmp_path, verbose):
    import subprocess
    import sys

    out = tmp_path / "img.png"
    argv = [sys.executable, "-c", NOISY, "generate", "--bundle", str(onnx_bundle), "--prompt", "a handwritten digit one",
            "--steps", "4", "--out", str(out), "--json"] + (["-v"] if verbose else [])
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["out"] == str(out)  # stdout is the JSON object and nothing else
    log = tmp_path / "img.png.log"
    if verbose:
        assert not log.exists() and all(n in proc.stderr for n in NOISE)
    else:
        assert proc.stderr.strip().splitlines() == [f"other libraries' output: {log} (-v shows it live)"]
        text = log.read_text()
        assert all(n in text for n in NOISE), text


def test_a_quiet_command_leaves_no_log(onnx_bundle, tmp_path, run_cli):
    code, out, err = run_cli("generate", "--bundle", onnx_bundle, "--prompt", "x", "--steps", "4",
                             "--out", tmp_path / "q.png")
    assert code == 0 and "wrote" in out and "other libraries" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.png"]
