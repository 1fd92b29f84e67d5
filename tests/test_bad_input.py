"""Every bad input gets one line naming the file or flag, exit code 2, nothing written, input untouched."""
import json

import pytest

from edgekit.fsutil import sha256_tree
from cli_checks import one_line


def test_nonexistent_model(run_cli, tmp_path):
    code, _, err = run_cli("eval", "--model", tmp_path / "nope")
    assert code == 2
    one_line(err, "--model", "nope", "no such directory")


def test_directory_that_is_not_a_pipeline(run_cli, tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    code, _, err = run_cli("generate", "--model", tmp_path, "--prompt", "x", "--out", tmp_path.parent / "x.png")
    assert code == 2
    one_line(err, "model_index.json missing")
    assert not (tmp_path.parent / "x.png").exists()


def test_truncated_safetensors_is_named(run_cli, model_copy, tmp_path):
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    before = sha256_tree(model_copy)
    code, _, err = run_cli("calibrate", "--model", model_copy, "--out", tmp_path / "calib")
    assert code == 2
    one_line(err, str(weights), "truncated")
    assert not (tmp_path / "calib").exists()
    assert sha256_tree(model_copy) == before


def test_garbage_safetensors_header(run_cli, model_copy):
    weights = model_copy / "vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64)
    code, _, err = run_cli("eval", "--model", model_copy)
    assert code == 2
    one_line(err, str(weights), "not a valid safetensors")


def test_missing_component(run_cli, model_copy):
    import shutil

    shutil.rmtree(model_copy / "text_encoder")
    code, _, err = run_cli("eval", "--model", model_copy)
    assert code == 2
    one_line(err, "text_encoder")


def test_component_of_wrong_class(run_cli, model_copy):
    index_path = model_copy / "model_index.json"
    index = json.loads(index_path.read_text())
    index["unet"] = ["diffusers", "UNet2DModel"]
    index_path.write_text(json.dumps(index))
    code, _, err = run_cli("eval", "--model", model_copy)
    assert code == 2
    one_line(err, "'unet' is UNet2DModel")


def test_corrupt_model_index(run_cli, model_copy):
    (model_copy / "model_index.json").write_text("{ not json")
    code, _, err = run_cli("eval", "--model", model_copy)
    assert code == 2
    one_line(err, "model_index.json", "not valid JSON")


def test_empty_prompts_file(run_cli, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# only a comment\n\n")
    code, _, err = run_cli("calibrate", "--prompts", prompts, "--out", tmp_path / "calib")
    assert code == 2
    one_line(err, "--prompts", str(prompts), "no prompts")
    assert not (tmp_path / "calib").exists()


def test_missing_prompts_file(run_cli, tmp_path):
    code, _, err = run_cli("calibrate", "--prompts", tmp_path / "none.txt", "--out", tmp_path / "calib")
    assert code == 2
    one_line(err, "--prompts", "no such file")


@pytest.mark.parametrize("steps", ["0", "-3", "many"])
def test_steps_must_be_positive(run_cli, tmp_path, steps):
    code, _, err = run_cli("generate", "--prompt", "a handwritten digit one", "--steps", steps,
                           "--out", tmp_path / "x.png")
    assert code == 2
    one_line(err, "--steps", "positive whole number")
    assert not (tmp_path / "x.png").exists()


def test_output_inside_input_model(run_cli, model_copy):
    before = sha256_tree(model_copy)
    code, _, err = run_cli("calibrate", "--model", model_copy, "--out", model_copy / "calib")
    assert code == 2
    one_line(err, "--out", "inside the input")
    assert not (model_copy / "calib").exists()
    code, _, err = run_cli("generate", "--model", model_copy, "--prompt", "x", "--out", model_copy / "unet" / "x.png")
    assert code == 2
    one_line(err, "--out", "inside the input")
    assert sha256_tree(model_copy) == before


def test_output_that_contains_the_input(run_cli, model_copy):
    code, _, err = run_cli("calibrate", "--model", model_copy, "--out", model_copy.parent, "--force")
    assert code == 2
    one_line(err, "contains the input")
    assert (model_copy / "model_index.json").is_file()


def test_existing_output_needs_force(run_cli, tmp_path):
    out = tmp_path / "calib"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli("calibrate", "--out", out)
    assert code == 2
    one_line(err, "already exists", "--force")
    assert (out / "keep.txt").read_text() == "mine"


def test_console_script_exit_code(tmp_path):
    """The installed `edgekit` script, not only main(): exit 2 and a single stderr line."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "edgekit"
    assert exe.is_file(), "the edgekit console script is not installed beside this Python"
    proc = subprocess.run([str(exe), "eval", "--model", str(tmp_path / "missing")], capture_output=True, text=True)
    assert proc.returncode == 2
    one_line(proc.stderr, "no such directory")


def test_library_errors_name_the_parameter_and_each_command_its_own_flag():
    """The library says which parameter is wrong; a command words it with its flag only when it has that flag
    (`edgekit package` has no --calib, so a calibration error there keeps the library's words)."""
    from edgekit.cli import build_parser
    from edgekit.commands.common import error_line, flags_of
    from edgekit.errors import CalibrationError, InputError

    commands = build_parser()._subparsers._group_actions[0].choices
    exc = CalibrationError("fewer representative rows than the converter needs", param="calibration", value="c")
    assert str(exc) == "calibration c: fewer representative rows than the converter needs"
    assert error_line(exc, flags_of(commands["export"])).startswith("--calib c: fewer")
    assert error_line(exc, flags_of(commands["package"])) == str(exc)
    exists = InputError("already exists (pass {force} to replace it)", param="out", value="o", mentions=("force",))
    assert str(exists) == "out o: already exists (pass force to replace it)"
    assert error_line(exists, flags_of(commands["generate"])) == "--out o: already exists (pass --force to replace it)"
    slim = InputError("expected a positive number", param="slim.train_steps", value=-1)
    assert error_line(slim, flags_of(commands["package"])) == "--slim-steps -1: expected a positive number"
