"""One seed is one image everywhere: `edgekit generate` in torch and `edgekit generate --bundle` on the bundle's own
runtime draw their noise from edgekit.noise (initial latents and a stochastic scheduler's step noise), so the same
--seed gives the same picture, within the bundle's verification tolerance turned into pixels, at every width."""
import json
import shutil

import numpy as np
import pytest

from edgekit.bundle import read_manifest
from edgekit.zoo.tiny_digits import SLIM_DIR

PROMPT, SEED, STEPS = "a handwritten digit seven", 7, 20
WIDTHS = ("1.0", "0.5")


def _png(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path), dtype=np.int16)


def _pixel_tolerance(bundle, width: str) -> int:
    """The bundle's own verification tolerance (relative error of a component against torch) as 8-bit levels of an
    image in [0, 1], plus the one level that rounding two floats on either side of a level boundary costs."""
    m = read_manifest(bundle)
    tol = max(float(m["verification"][name]["tolerance"]) for name in ("text_encoder", "vae_decoder"))
    tol = max(tol, float(m["verification"]["unet"]["widths"][f"{float(width):.2f}"]["tolerance"]))
    return int(np.floor(tol * 255)) + 1


def _export(run_cli, out, target: str, model=SLIM_DIR, widths="0.5,1.0", steps=str(STEPS)):
    code, _, err = run_cli("export", "--target", target, "--precision", "fp32", "--model", model,
                           "--widths", widths, "--steps", steps, "--out", out)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def web_bundle(tmp_path_factory):
    from edgekit.cli import main

    out = tmp_path_factory.mktemp("seed") / "web"
    assert main(["export", "--target", "ort-web", "--precision", "fp32", "--model", str(SLIM_DIR),
                 "--widths", "0.5,1.0", "--steps", str(STEPS), "--out", str(out)]) == 0
    return out


def _torch_and_bundle_pngs(run_cli, tmp_path, bundle, width: str, seed: int = SEED, model=SLIM_DIR,
                           steps: int = STEPS) -> tuple[np.ndarray, np.ndarray]:
    common = ("--prompt", PROMPT, "--seed", seed, "--steps", steps, "--width", width, "--json")
    code, out, err = run_cli("generate", "--model", model, *common, "--out", tmp_path / f"torch{width}-{seed}.png")
    assert code == 0, err
    code, out2, err = run_cli("generate", "--bundle", bundle, *common, "--out", tmp_path / f"bundle{width}-{seed}.png")
    assert code == 0, err
    assert json.loads(out)["seed"] == json.loads(out2)["seed"] == seed
    return _png(tmp_path / f"torch{width}-{seed}.png"), _png(tmp_path / f"bundle{width}-{seed}.png")


@pytest.mark.parametrize("width", WIDTHS)
def test_torch_and_the_ort_bundle_draw_one_image_per_seed(web_bundle, tmp_path, run_cli, width):
    torch_png, bundle_png = _torch_and_bundle_pngs(run_cli, tmp_path, web_bundle, width)
    tolerance = _pixel_tolerance(web_bundle, width)
    assert torch_png.shape == bundle_png.shape == (32, 32, 3)
    assert np.abs(torch_png - bundle_png).max() <= tolerance, (np.abs(torch_png - bundle_png).max(), tolerance)
    # the comparison can fail: another seed is another digit drawing, tens of levels away
    other, _ = _torch_and_bundle_pngs(run_cli, tmp_path, web_bundle, width, seed=SEED + 1)
    assert np.abs(other - torch_png).max() > 50


def test_torch_generate_matches_the_bundle_sampler_in_float(web_bundle):
    """The same comparison before 8-bit rounding, through the library calls the commands make."""
    from edgekit.loader import open_model
    from edgekit.pipeline import generate
    from edgekit.runtime.sampler import BundleSampler
    from edgekit.width import Width

    sampler = BundleSampler(web_bundle)
    for width in WIDTHS:
        theirs, _ = sampler.generate([PROMPT, PROMPT], [SEED, 3], STEPS, float(width))
        ours = generate(open_model(SLIM_DIR, width=Width.parse(width)), [PROMPT, PROMPT], [SEED, 3], STEPS, 2.0,
                        batch_size=1)
        m = read_manifest(web_bundle)
        tol = m["verification"]["unet"]["widths"][f"{float(width):.2f}"]["tolerance"]
        assert np.abs(ours - theirs).max() <= tol


def test_a_stochastic_schedulers_step_noise_is_the_bundles(default_model, tmp_path, run_cli):
    """Euler ancestral draws fresh noise every step: torch takes it from edgekit.noise's step streams, as the
    bundle's table does, so the two still draw one image."""
    from diffusers import EulerAncestralDiscreteScheduler

    model = tmp_path / "ancestral"
    shutil.copytree(default_model, model)
    config = json.loads((model / "scheduler/scheduler_config.json").read_text())
    betas = {k: config[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
    EulerAncestralDiscreteScheduler(**betas).save_pretrained(model / "scheduler")
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"]}))
    bundle = _export(run_cli, tmp_path / "web", "ort-web", model=model, widths="1.0", steps="8")
    assert read_manifest(bundle)["sampling"]["schedules"]["8"]["stochastic"]
    torch_png, bundle_png = _torch_and_bundle_pngs(run_cli, tmp_path, bundle, "1.0", model=model, steps=8)
    assert np.abs(torch_png - bundle_png).max() <= _pixel_tolerance(bundle, "1.0")


@pytest.mark.slow
@pytest.mark.parametrize("width", WIDTHS)
def test_torch_and_the_litert_bundle_draw_one_image_per_seed(tmp_path_factory, tmp_path, run_cli, width):
    pytest.importorskip("ai_edge_litert")
    bundle = tmp_path_factory.getbasetemp() / "seed-tflite"
    if not (bundle / "manifest.json").is_file():
        _export(run_cli, bundle, "tflite")
    torch_png, bundle_png = _torch_and_bundle_pngs(run_cli, tmp_path, bundle, width)
    assert np.abs(torch_png - bundle_png).max() <= _pixel_tolerance(bundle, width)
