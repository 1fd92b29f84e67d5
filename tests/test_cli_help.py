"""The CLI teaches itself: `edgekit --version`; every option of every command has help text; every command's help
ends with an example, and every example runs as written (in the order of edgekit/commands/examples.py, in an
empty directory); target lists come from the target registry; list flags take commas, spaces too; a hub id given
as --model says how to get a local directory."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cli_checks import serve_answers

from edgekit.cli import build_parser, command_parsers
from edgekit.commands.examples import EXAMPLES, TOP_LEVEL

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def _help(argv) -> str:
    proc = subprocess.run([str(VENV_BIN / "edgekit"), *argv, "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_version(run_cli):
    from edgekit import __version__

    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"edgekit {__version__}"


def test_every_option_has_help_and_every_command_an_example():
    parser = build_parser()
    paths = [path for path, _ in command_parsers(parser)]
    assert sorted(paths) == sorted(EXAMPLES), "a command without an example, or an example without a command"
    for path, command in command_parsers(parser):
        undocumented = [a.option_strings or a.dest for a in command._actions if not a.help]
        assert not undocumented, f"edgekit {path}: {undocumented} have no help text"
        text = command.format_help()
        last = text.rstrip().splitlines()[-1].strip()
        assert last == EXAMPLES[path] and re.search(rf"(^|&& )edgekit {path}( |$)", last), (path, last)
        assert command.description  # its --help opens with what it does
    assert build_parser().format_help().rstrip().splitlines()[-3].strip() == TOP_LEVEL


def test_target_lists_come_from_the_registry():
    from edgekit.targets import target_names

    assert "onnx" in target_names()
    top = _help([])
    export = _help(["export"])
    package = _help(["package"])
    for name in target_names():
        assert name in top.split("export", 1)[1].split("\n\n")[0].replace("\n", " ") or name in top
        assert re.search(rf"--target TARGET\s+[^\n]*{re.escape(name)}", export), export
        assert name in package
    assert "ort-web | tflite | coreml\n" not in export


def test_no_help_names_a_missing_file():
    """Every repository file a help text names exists (prune/slim --calib once named a prompts file that did not)."""
    parser = build_parser()
    named = set()
    for _, command in command_parsers(parser):
        for action in command._actions:
            named.update(re.findall(r"(?:calibration_data|targets)/[\w.<>-]+", action.help or ""))
    assert named
    for rel in named:
        if "<" not in rel:
            assert (REPO / rel).exists(), f"a help text names {rel}, which does not exist"


@pytest.mark.parametrize("argv, expected", [
    (("export", "--target", "onnx", "--widths", "0.5,1.0", "--steps", "4,8", "--out", "x"), ((0.5, 1.0), (4, 8))),
    (("export", "--target", "onnx", "--widths", "0.5", "1.0", "--steps", "4", "8", "--out", "x"), ((0.5, 1.0), (4, 8))),
    (("export", "--target", "onnx", "--widths", "0.5, 1.0", "--steps", "4 8", "--out", "x"), ((0.5, 1.0), (4, 8))),
    (("package", "--widths", "0.5", "1.0", "--steps", "4,8", "--out", "x"), ((0.5, 1.0), (4, 8))),
    # bench takes BUNDLE as well: its lists are one value each (commas, or spaces inside quotes), so that
    # `edgekit bench --steps 4,8 BUNDLE` keeps its bundle
    (("bench", "--widths", "0.5 1.0", "--steps", "4,8", "b"), ((0.5, 1.0), (4, 8))),
])
def test_list_flags_take_commas_and_spaces(argv, expected):
    args = build_parser().parse_args(list(argv))
    assert (args.widths, args.steps) == expected


def test_slim_and_package_lists():
    parser = build_parser()
    assert parser.parse_args(["slim", "--widths", "0.5", "1.0", "--out", "x"]).widths == (0.5, 1.0)
    assert parser.parse_args(["package", "--targets", "ort-web", "onnx", "--out", "x"]).targets == ("ort-web", "onnx")
    assert parser.parse_args(["package", "--targets", "ort-web,onnx", "--out", "x"]).targets == ("ort-web", "onnx")


@pytest.mark.parametrize("bad", ["0.5,,1.0", "0.5,", ""])
def test_an_empty_list_entry_is_refused_in_one_line(run_cli, bad):
    code, _, err = run_cli("export", "--target", "onnx", "--widths", bad, "--out", "x")
    assert code == 2 and "comma-separated" in err and len(err.strip().splitlines()) == 1


def test_a_hub_id_says_how_to_get_a_local_directory(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for argv in (("generate", "--prompt", "x", "--out", "x.png"), ("eval",), ("calibrate", "--out", "c"),
                 ("export", "--target", "onnx", "--out", "b"), ("package", "--out", "p")):
        code, _, err = run_cli(*argv, "--model", "stable-diffusion-v1-5/stable-diffusion-v1-5")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "local diffusers directory" in err
        assert "huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir DIR" in err
        assert list(tmp_path.iterdir()) == []
    code, _, err = run_cli("generate", "--prompt", "x", "--model", "no/such/dir/here", "--out", "x.png")
    assert code == 2 and "no such directory" in err and "huggingface-cli" not in err


def test_every_help_example_runs_as_written(tmp_path):
    """In one empty directory, in examples.py's order (later examples read what earlier ones wrote)."""
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "EDGEKIT_CACHE": str(tmp_path / "cache")}
    work = tmp_path / "work"
    work.mkdir()
    for path, line in EXAMPLES.items():
        if path == "serve":
            serve_answers(line, work, env)
            continue
        proc = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"edgekit {path} example: {line}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    for made in ("seven.png", "calib", "int8", "bundle", "bundles/report.md", "three.png", "three-3.png", "pruned",
                 "slim"):
        assert (work / made).exists(), made


def test_package_takes_the_onnx_target_its_help_lists(tmp_path, run_cli, default_model, monkeypatch):
    """`package --targets onnx` (listed from the registry) runs, and its size is bytes on disk: the pipeline
    views' hard links count once."""
    import json

    monkeypatch.setenv("EDGEKIT_CACHE", str(tmp_path / "cache"))
    code, out, err = run_cli("package", "--model", default_model, "--targets", "onnx", "--widths", "1.0",
                             "--calib-samples", "2", "--calib-steps", "2", "--steps", "2", "--samples", "2",
                             "--repeats", "1", "--out", tmp_path / "pkg", "--json")
    assert code == 0, err
    bundle = json.loads(out)["bundles"]["onnx"]
    files = json.loads((tmp_path / "pkg/onnx/manifest.json").read_text())["files"]
    inodes = {(st.st_dev, st.st_ino): st.st_size for st in ((tmp_path / "pkg/onnx" / rel).stat() for rel in files)}
    assert bundle["bytes"] == sum(inodes.values()) < sum(f["bytes"] for f in files.values())
