"""Hostile inputs (issue 17, items 5-7): numerically unsafe flags, input files of the wrong JSON shape, and
step counts a scheduler cannot take. Each case: its exit code, exactly one stderr line naming the flag, file
or field and what was expected, no traceback, the input files' sha256 unchanged, nothing at --out.

Flag and file cases run the installed console script (what a user sees, warnings included); cases that
generate run in-process so torch loads once."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.fsutil import sha256_file, sha256_tree
from cli_checks import one_line

EXE = Path(sys.executable).parent / "edgekit"
SAFETENSORS = "diffusion_pytorch_model.safetensors"


def _digest(path: Path) -> str:
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def _check_refusal(code, err, expected_code, needles, inputs_before, out):
    assert code == expected_code, err
    one_line(err, *needles)
    for path, digest in inputs_before.items():
        assert _digest(path) == digest, f"{path} changed"
    if out is not None:
        assert not Path(out).exists(), f"{out} was written"
        assert not list(Path(out).parent.glob(f".{Path(out).name}.partial-*")), "a partial output was left"


def _console(tmp_path, *argv):
    proc = subprocess.run([str(EXE), *map(str, argv)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="session")
def default_model_digest(default_model) -> str:
    return sha256_tree(default_model)


# --- 2. flags: every command that takes --guidance, --seed, --widths or --steps -------------------------

# Each command with just enough other arguments that only the flag under test can be wrong.
COMMANDS = {
    "generate": ["generate", "--prompt", "a handwritten digit seven", "--out", "{out}.png"],
    "eval": ["eval"],
    "calibrate": ["calibrate", "--out", "{out}"],
    "export": ["export", "--target", "ort-web", "--out", "{out}"],
    "prune": ["prune", "--ratio", "0.5", "--out", "{out}"],
    "slim": ["slim", "--out", "{out}"],
    "package": ["package", "--out", "{out}"],
    "bench": ["bench", "{out}"],
    "policy generate": ["policy", "generate", "--bundle", "{out}", "--prompt", "x", "--out", "{out}.png"],
}
SEED_EXPECTATION = "expected a whole-number seed from 0 to 4294967295"
BAD_FLAGS = {
    "--guidance": ([("nan", "expected a finite number"), ("inf", "expected a finite number")],
                   ["generate", "eval", "calibrate"]),
    "--seed": ([("-1", SEED_EXPECTATION), (str(2**64), SEED_EXPECTATION), ("abc", SEED_EXPECTATION)],
               ["generate", "eval", "calibrate", "prune", "slim", "package", "bench", "policy generate"]),
    "--widths": ([("0.5,,1.0", "no empty entries"), ("0.5,abc", "expected comma-separated width multipliers"),
                  ("0.5,nan", "expected comma-separated width multipliers")],
                 ["slim", "package", "bench", "export"]),
    "--steps": ([("0", "positive whole number")], ["generate", "eval", "calibrate", "package", "bench"]),
}
FLAG_CASES = [pytest.param(command, flag, value, expectation, id=f"{command}{flag}={value}")
              for flag, (values, commands) in BAD_FLAGS.items()
              for command in commands for value, expectation in values]
FLAG_CASES += [
    pytest.param("generate", "--steps", "-5", "positive whole number", id="generate--steps=-5"),
    pytest.param("generate", "--scale", "100000", "from 1 to 32", id="generate--scale=100000"),
    pytest.param("generate", "--out", "", "expected a .png file name", id="generate--out=empty"),
    pytest.param("generate", "--out", "x.jpg", "expected a .png file name", id="generate--out=x.jpg"),
    pytest.param("calibrate", "--samples", "0", "positive whole number", id="calibrate--samples=0"),
    pytest.param("calibrate", "--max-rows-unet", "-3", "positive whole number", id="calibrate--max-rows-unet=-3"),
    pytest.param("prune", "--lr", "-1", "expected a positive number", id="prune--lr=-1"),
    pytest.param("prune", "--lr", "nan", "expected a finite number", id="prune--lr=nan"),
    pytest.param("prune", "--batch-size", "0", "positive whole number", id="prune--batch-size=0"),
    pytest.param("slim", "--train-steps", "-1", "whole number >= 0", id="slim--train-steps=-1"),
]


@pytest.mark.parametrize("command,flag,value,expectation", FLAG_CASES)
def test_bad_flag_value(tmp_path, default_model, default_model_digest, command, flag, value, expectation):
    out = tmp_path / "out"
    argv = [a.format(out=out) for a in COMMANDS[command]] + [f"{flag}={value}"]
    code, stdout, err = _console(tmp_path, *argv)
    _check_refusal(code, err, 2, [f"argument {flag}", expectation, value], {default_model: default_model_digest},
                   out)
    assert not Path(f"{out}.png").exists()
    assert stdout == ""


# --- 3. input files of the wrong JSON shape -----------------------------------------------------------

def _safetensors_list_header(model: Path) -> Path:
    path = model / "unet" / SAFETENSORS
    raw = path.read_bytes()
    old_len = int.from_bytes(raw[:8], "little")
    header = b"[1, 2, 3]     "
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + old_len:])
    return path


def _write(relative: str, text: str):
    def edit(model: Path) -> Path:
        (model / relative).write_text(text)
        return model / relative
    return edit


# a model file that holds a JSON value other than an object: (file, content, test id)
NOT_AN_OBJECT = [("model_index.json", '["unet", "vae"]', "model_index-list"),
                 ("edgekit_defaults.json", "[20]", "edgekit_defaults-list"),
                 ("unet/config.json", "[]", "unet-config-list"),
                 ("scheduler/scheduler_config.json", "[]", "scheduler-config-list"),
                 ("tokenizer/tokenizer_config.json", "[]", "tokenizer-config-list")]

MODEL_FILE_CASES = [
    *(pytest.param(_write(relative, text), "expected a JSON object, got a list", id=ident)
      for relative, text, ident in NOT_AN_OBJECT),
    pytest.param(_write("model_index.json", "{ not json"), "not valid JSON", id="model_index-not-json"),
    pytest.param(_write("edgekit_defaults.json", '{"guidance_scale": 2.0,'), "(Expecting property name",
                 id="edgekit_defaults-corrupt"),
    pytest.param(_write("edgekit_defaults.json", '{"num_inference_steps": "many"}'),
                 "num_inference_steps 'many': expected a positive whole number", id="edgekit_defaults-steps-text"),
    pytest.param(_write("edgekit_defaults.json", '{"guidance_scale": NaN}'), "guidance_scale nan: expected a finite",
                 id="edgekit_defaults-guidance-nan"),
    pytest.param(_safetensors_list_header, "header is a list, expected an object of tensors",
                 id="safetensors-header-list"),
]

@pytest.mark.parametrize("command", ["generate", "calibrate"])
@pytest.mark.parametrize("edit,expectation", MODEL_FILE_CASES)
def test_model_file_of_wrong_shape(tmp_path, model_copy, command, edit, expectation):
    broken = edit(model_copy)
    before = {model_copy: sha256_tree(model_copy)}
    out = tmp_path / ("x.png" if command == "generate" else "calib")
    argv = ["generate", "--prompt", "x"] if command == "generate" else ["calibrate"]
    code, _, err = _console(tmp_path, *argv, "--model", model_copy, "--out", out)
    _check_refusal(code, err, 2, [str(broken), expectation], before, out)


def test_unloadable_weights_are_one_line(tmp_path, model_copy):
    """Weights diffusers cannot read: its own logged error must not add a line before edgekit's."""
    unet = model_copy / "unet"
    (unet / SAFETENSORS).unlink()
    (unet / "diffusion_pytorch_model.bin").write_bytes(b"not a torch checkpoint")
    before = {model_copy: sha256_tree(model_copy)}
    out = tmp_path / "x.png"
    code, _, err = _console(tmp_path, "generate", "--model", model_copy, "--prompt", "x", "--out", out)
    _check_refusal(code, err, 2, [f"--model {model_copy}", "diffusers could not load it"], before, out)


def _calibration_meta(text: str):
    def make(directory: Path) -> Path:
        directory.mkdir()
        (directory / "meta.json").write_text(text)
        return directory / "meta.json"
    return make


# prune reads --calib before loading anything heavy; quantize (which imports its backend first) runs the
# case the issue names.
@pytest.mark.parametrize("command,make,expectation", [
    pytest.param("quantize", _calibration_meta("[]"), "expected a JSON object, got a list", id="quantize-list"),
    pytest.param("prune", _calibration_meta("[]"), "expected a JSON object, got a list", id="list"),
    pytest.param("prune", _calibration_meta('{"components": [1]}'), "'components' missing or not an object",
                 id="components-list"),
    pytest.param("prune", _calibration_meta('{"components": {"unet": {"shards": 3}}}'), "components.unet.shards",
                 id="shards-number"),
    pytest.param("prune", _calibration_meta('{"components": {"unet": {"shards": [{"file": "../x", "sha256": "0"}]}}}'),
                 "inside the directory", id="shard-outside"),
    pytest.param("prune", _calibration_meta('{"components": {}, "width": "wide"}'), "width 'wide'", id="width-text"),
])
def test_calibration_meta_of_wrong_shape(tmp_path, command, make, expectation):
    calib = tmp_path / "calib"
    meta = make(calib)
    before = {calib: sha256_tree(calib)}
    out = tmp_path / "out"
    argv = (["quantize", "--method", "ort-static"] if command == "quantize" else ["prune", "--ratio", "0.5"])
    code, _, err = _console(tmp_path, *argv, "--calib", calib, "--out", out)
    _check_refusal(code, err, 2, [str(meta), expectation], before, out)


@pytest.mark.parametrize("argv,needle", [
    pytest.param(["generate", "--prompt", "x", "--model", "loop", "--out", "x.png"], "--model loop",
                 id="generate-model"),
    pytest.param(["quantize", "--method", "ort-static", "--calib", "loop", "--out", "q"], "--calib loop",
                 id="quantize-calib"),
    pytest.param(["prune", "--ratio", "0.5", "--calib", "loop", "--out", "q"], "--calib loop", id="prune-calib"),
    pytest.param(["calibrate", "--out", "loop/calib"], "--out loop/calib", id="calibrate-out"),
])
def test_symlink_loop_is_one_line(tmp_path, argv, needle):
    (tmp_path / "loop").symlink_to("loop")
    code, _, err = _console(tmp_path, *argv)
    _check_refusal(code, err, 2, [needle, "cannot be resolved (Symlink loop"], {}, tmp_path / argv[-1])


# --- 1. step counts the scheduler cannot take; NaN/Inf outputs ----------------------------------------

def test_scheduler_limit_is_measured_not_assumed(default_model):
    """The default DPMSolverMultistep scheduler (linspace spacing, 1000 training timesteps) repeats a
    timestep at 1000 steps, and the zero step turns its latents to NaN: 999 is its last good count. The
    limit follows the config: fewer training timesteps give a lower one; Euler takes all 1000."""
    import diffusers

    from edgekit.pipeline import _scheduler_stays_finite, max_scheduler_steps, scheduler_config

    config = scheduler_config(default_model)
    assert config["_class_name"] == "DPMSolverMultistepScheduler" and config["num_train_timesteps"] == 1000
    sched = diffusers.DPMSolverMultistepScheduler.from_config(config)
    sched.set_timesteps(1000)
    assert len(set(sched.timesteps.tolist())) == 999  # one timestep twice
    assert max_scheduler_steps(config) == 999
    assert not _scheduler_stays_finite(json.dumps(config, sort_keys=True, default=str), 1000)
    assert max_scheduler_steps({**config, "num_train_timesteps": 500}) == 499
    assert max_scheduler_steps({**config, "_class_name": "EulerDiscreteScheduler"}) == 1000


@pytest.mark.parametrize("argv,expectation", [
    pytest.param(["generate", "--prompt", "a handwritten digit seven", "--steps", "1000"],
                 "--steps 1000: the model's DPMSolverMultistepScheduler takes at most 999 steps (its latents turn "
                 "to NaN/Inf", id="generate-1000"),
    pytest.param(["generate", "--prompt", "a handwritten digit seven", "--steps", "10000"],
                 "--steps 10000: the model's DPMSolverMultistepScheduler takes at most 999 steps (more than its "
                 "1000 training timesteps)", id="generate-10000"),
    pytest.param(["calibrate", "--steps", "1000"], "takes at most 999 steps", id="calibrate-1000"),
])
def test_step_count_beyond_the_scheduler_is_refused(run_cli, tmp_path, default_model, default_model_digest, argv,
                                                    expectation):
    out = tmp_path / ("x.png" if argv[0] == "generate" else "calib")
    code, _, err = run_cli(*argv, "--out", out)
    _check_refusal(code, err, 2, [expectation], {default_model: default_model_digest}, out)


def test_default_step_count_beyond_the_scheduler_names_the_file(run_cli, tmp_path, model_copy):
    (model_copy / "edgekit_defaults.json").write_text(json.dumps({"num_inference_steps": 1000}))
    before = {model_copy: sha256_tree(model_copy)}
    out = tmp_path / "x.png"
    code, _, err = run_cli("generate", "--model", model_copy, "--prompt", "x", "--out", out)
    _check_refusal(code, err, 2, ["edgekit_defaults.json num_inference_steps 1000", "at most 999 steps"], before, out)


@pytest.mark.parametrize("command", ["generate", "calibrate"])
def test_non_finite_generation_is_an_error(run_cli, tmp_path, default_model, default_model_digest, command):
    """A finite but huge guidance overflows the sampler: an error naming the image, never a black PNG."""
    out = tmp_path / ("x.png" if command == "generate" else "calib")
    argv = (["generate", "--prompt", "a handwritten digit seven"] if command == "generate"
            else ["calibrate", "--samples", "2"])
    code, _, err = run_cli(*argv, "--steps", "2", "--guidance", "1e30", "--out", out)
    _check_refusal(code, err, 1, ["generate: image 0", "holds NaN/Inf after 2 steps at guidance 1e+30"],
                   {default_model: default_model_digest}, out)


def test_bundle_sampler_refuses_non_finite_images():
    from edgekit.errors import NumericError
    from edgekit.runtime.sampler import Components, sample

    table = {"timesteps": [999.0], "init_noise_sigma": 1.0, "input_scale": [1.0], "sample_coeff": [1.0],
             "eps_coeffs": [[0.0]]}

    def components(decoder):
        return Components(text_encoder=lambda ids: np.zeros((len(ids), 2, 3), np.float32),
                          unet=lambda x, t, h: np.zeros_like(x), vae_decoder=decoder)

    def encode(prompts):
        return np.zeros((len(prompts), 2), np.int64)

    good, _ = sample(components(lambda z: np.zeros((len(z), 3, 4, 4), np.float32)), encode, table, ["a", "b"],
                     [0, 1], 1.0, (4, 1, 1), 1.0)
    assert good.shape == (2, 4, 4, 3) and np.isfinite(good).all()

    def decoder_with_nan(z):
        images = np.zeros((len(z), 3, 4, 4), np.float32)
        images[1, 0, 0, 0] = np.nan
        return images

    with pytest.raises(NumericError, match=r"VAE decoder's images hold NaN/Inf for image 1 \(prompt 'b', seed 1"):
        sample(components(decoder_with_nan), encode, table, ["a", "b"], [0, 1], 1.0, (4, 1, 1), 1.0)


# --- 7. generate --out ------------------------------------------------------------------------------

def test_generate_does_not_overwrite_without_force(run_cli, tmp_path):
    out = tmp_path / "mine.png"
    out.write_bytes(b"a picture of my cat")
    code, _, err = run_cli("generate", "--prompt", "a handwritten digit one", "--steps", "2", "--out", out)
    _check_refusal(code, err, 2, [f"--out {out}", "already exists (pass --force to replace it)"], {}, None)
    assert out.read_bytes() == b"a picture of my cat"
    code, stdout, err = run_cli("generate", "--prompt", "a handwritten digit one", "--steps", "2", "--out", out,
                                "--force")
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("out", [".", "", ".."])
def test_force_never_replaces_the_working_directory(run_cli, tmp_path, monkeypatch, out):
    """`--out . --force` (and an empty --out, which resolves to it) would delete the folder the user is in."""
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    keep = work / "keep.txt"
    keep.write_text("mine")
    monkeypatch.chdir(work)
    code, stdout, err = run_cli("calibrate", "--samples", "1", "--steps", "1", "--out", out, "--force")
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "--out" in err and "Traceback" not in err
    assert keep.read_text() == "mine" and sorted(p.name for p in work.iterdir()) == ["keep.txt"]
