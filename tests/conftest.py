import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def default_model() -> Path:
    from edgekit.pipeline import default_model_dir

    return default_model_dir()


@pytest.fixture(scope="session")
def default_pipe(default_model):
    from edgekit.pipeline import load_pipeline

    return load_pipeline(default_model)


@pytest.fixture(scope="session")
def sd15_reduced(tmp_path_factory) -> Path:
    """A pipeline with SD-1.5's architecture at reduced width, random weights, written locally."""
    from edgekit.zoo.sd15 import build_sd15_pipeline

    return build_sd15_pipeline(tmp_path_factory.mktemp("sd15") / "pipeline", reduced=True)


@pytest.fixture(scope="session")
def sd15_calib(sd15_reduced, tmp_path_factory) -> Path:
    """`edgekit calibrate` output for the reduced SD-1.5 pipeline (short: 4 steps, 8 images)."""
    from edgekit.cli import main

    out = tmp_path_factory.mktemp("sd15_calib") / "calib"
    assert main(["calibrate", "--model", str(sd15_reduced), "--steps", "4", "--samples", "8", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def small_calib(default_pipe, default_model, tmp_path_factory) -> Path:
    """A small calibration of the default model (2 prompts, 2 steps, 8 UNet rows): quick to capture, for tests
    that need real rows but not their quality."""
    from edgekit.calibration import CalibrationConfig, capture

    out = tmp_path_factory.mktemp("small_calib") / "calib"
    out.mkdir()
    config = CalibrationConfig(prompts=("a handwritten digit three", "a handwritten digit seven"), steps=2,
                               guidance_scale=4.0, seed=1,
                               max_rows={"text_encoder": 4, "unet": 8, "vae_decoder": 2}, batch_size=2)
    capture(default_pipe, config, out, default_model)
    return out


@pytest.fixture(scope="session")
def digits_arch_model(tmp_path_factory, sd15_reduced):
    """A pipeline whose UNet has the default model's architecture (random weights): fast and independent of
    the trained weights, which the benchmark measures. Shared by the prune and slim tests."""
    import json

    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from edgekit.constants import EDGEKIT_DEFAULTS
    from edgekit.zoo.tiny_digits.recipe import UNET_CONFIG

    out = tmp_path_factory.mktemp("digits_arch") / "pipeline"
    pipe = StableDiffusionPipeline.from_pretrained(sd15_reduced, safety_checker=None, requires_safety_checker=False)
    torch.manual_seed(0)
    pipe.register_modules(unet=UNet2DConditionModel(**UNET_CONFIG))
    pipe.save_pretrained(out, safe_serialization=True)
    (out / EDGEKIT_DEFAULTS).write_text(json.dumps({"guidance_scale": 4.0, "num_inference_steps": 3}))
    return out


@pytest.fixture
def copy_of(tmp_path):
    """``copy_of(directory, name)``: a private copy (tmp_path / name) of a shared directory, for a test that
    damages it."""
    def make(source: Path, name: str) -> Path:
        destination = tmp_path / name
        shutil.copytree(source, destination)
        return destination

    return make


@pytest.fixture(scope="session")
def packaged(tmp_path_factory, default_model) -> Path:
    """One finished ort-web package of the default model (full width, helpers.FAST_CONFIG: short settings), made once
    per session and only read: a test that writes into a package or reruns into it uses ``package_copy``. Its
    --config file is fast.yaml beside it; the flags helpers.FAST name the same run (rerunning with them reuses every
    stage)."""
    from edgekit.cli import main
    from helpers import FAST_CONFIG

    root = tmp_path_factory.mktemp("package")
    (root / "fast.yaml").write_text(FAST_CONFIG)
    out = root / "out"
    assert main(["package", "--model", str(default_model), "--config", str(root / "fast.yaml"), "--out", str(out)]) == 0
    return out


@pytest.fixture
def package_copy(packaged, copy_of) -> Path:
    """A private copy of the shared package that a test may rerun into or damage."""
    return copy_of(packaged, "out")


@pytest.fixture
def model_copy(default_model, copy_of) -> Path:
    """A private copy of the default model that a test may break."""
    return copy_of(default_model, "model")


@pytest.fixture
def run_cli(capsys):
    """Run `edgekit ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from edgekit.cli import main

    def run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run
