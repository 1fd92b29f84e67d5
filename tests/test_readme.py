"""README.md followed line by line: every fenced command block (shell lines that start with `.venv/bin/` or
`bash scripts/`, and `python` blocks) is claimed by one test below and run as written, from a directory that
looks like the checkout (its top-level entries linked, outputs written beside them, never into the checkout).
A block no test claims fails test_every_command_block_is_run, so a new README command cannot go untested.

The blocks that set up a venv, run the whole package or train models take minutes: those tests are slow
(pytest -m slow; .ci/run runs them). Two run with a stated change, because as written they cannot run inside
this suite: the test command (it is this suite: it runs with --collect-only appended) and the embedded model's
training (64 CPU-minutes: it runs with its step counts cut to 2 and --out in a temporary directory)."""
from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_checks import serve_answers

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SHELL_PREFIXES = (".venv/bin/", "bash scripts/")


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def commands(self) -> list[str]:
        """Shell logical lines (continuations joined), comment-only lines dropped."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]

    @property
    def is_command_block(self) -> bool:
        if self.lang == "python":
            return True
        return self.lang in ("", "sh", "bash", "shell") and bool(self.commands) and \
            all(c.startswith(SHELL_PREFIXES) for c in self.commands)


def readme_blocks() -> list[Block]:
    blocks, lines = [], README.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if fence:
            indent, start = len(fence.group(1)), i
            body = []
            i += 1
            while not re.match(r"^\s*```\s*$", lines[i]):
                body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            blocks.append(Block(start + 1, fence.group(2), "\n".join(body) + "\n"))
        i += 1
    return blocks


def command_blocks() -> list[Block]:
    return [b for b in readme_blocks() if b.is_command_block]


# Each claim: (name, predicate on a block). Every command block is claimed by exactly one.
CLAIMS = {
    "setup_package": lambda b: "bash scripts/setup.sh && .venv/bin/edgekit package" in b.text,
    "setup_tests": lambda b: "bash scripts/setup.sh && .venv/bin/python -m pytest" in b.text,
    "hand_chain": lambda b: b.commands[0].startswith(".venv/bin/edgekit calibrate"),
    "seed_shell": lambda b: "--out seven-onnx.png" in b.text,
    "seed_python": lambda b: b.lang == "python" and "OnnxStableDiffusionPipeline" in b.text,
    "accelerate": lambda b: b.commands[0].startswith(".venv/bin/accelerate"),
    "train": lambda b: b.commands == [".venv/bin/python scripts/train_tiny_digits.py"],
}


def claimed(name: str) -> Block:
    found = [b for b in command_blocks() if CLAIMS[name](b)]
    assert len(found) == 1, f"README claim {name}: {len(found)} blocks match"
    return found[0]


def test_every_command_block_is_run():
    blocks = command_blocks()
    assert len(blocks) >= len(CLAIMS)
    for block in blocks:
        owners = [name for name, claim in CLAIMS.items() if claim(block)]
        assert len(owners) == 1, f"README.md line {block.line}: block claimed by {owners or 'no test'}:\n{block.text}"
    # a block that is not commands holds none either (a tree, a JSON example): nothing runnable hides in one
    for block in readme_blocks():
        if not block.is_command_block:
            assert not any(ln.strip().startswith(SHELL_PREFIXES + ("edgekit ",)) for ln in block.text.splitlines()), \
                f"README.md line {block.line}: a block mixing commands and other text"


def _checkout_view(root: Path) -> Path:
    """A directory holding links to the checkout's top-level entries: README paths resolve as in the checkout,
    and what the commands write (runs/, bundles/, images) lands here."""
    root.mkdir(parents=True, exist_ok=True)
    for entry in REPO.iterdir():
        if entry.name not in {"runs", "bundles", ".git", ".pytest_cache"} and entry.suffix != ".png":
            (root / entry.name).symlink_to(entry)
    return root


def _env(tmp: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "EDGEKIT_CACHE": str(tmp / "cache"), "HF_HUB_OFFLINE": "1"}


def _run_shell(command: str, cwd: Path, env: dict, timeout: int = 3600) -> str:
    proc = subprocess.run(["bash", "-e", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"README command failed: {command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_one_seed_one_image_and_the_onnx_view_in_diffusers(tmp_path):
    """The seed section: torch, the onnx bundle and diffusers' OnnxStableDiffusionPipeline on each width directory
    draw one image for seed 7, with no "EP Error" noise."""
    work = _checkout_view(tmp_path / "checkout")
    env = _env(tmp_path)
    printed = {command: _run_shell(command, work, env) for command in claimed("seed_shell").commands}
    # the export summary counts bytes on disk: the views' hard links once
    export_line = next(out for command, out in printed.items() if " export " in command).splitlines()[0]
    files = json.loads((work / "runs/onnx/manifest.json").read_text())["files"]
    inodes = {(st.st_dev, st.st_ino): st.st_size for st in ((work / "runs/onnx" / rel).stat() for rel in files)}
    listed = sum(f["bytes"] for f in files.values())
    on_disk = float(re.search(r"([\d.]+) MiB on disk", export_line).group(1))
    assert abs(on_disk - sum(inodes.values()) / 2**20) < 0.1 and on_disk < listed / 2**20 - 1, export_line
    code = claimed("seed_python").text
    proc = subprocess.run([str(REPO / ".venv/bin/python"), "-c", code], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EP Error" not in proc.stderr + proc.stdout
    torch_png, onnx_png = _png(work / "seven-torch.png"), _png(work / "seven-onnx.png")
    assert np.abs(torch_png - onnx_png).max() <= 1  # fp32 graphs, tolerance 1e-4: one 8-bit level
    views = sorted(p.name for p in (work / "runs/onnx").glob("w*"))
    assert views == ["w0.50", "w1.00"]
    for view in views:
        theirs = _png(work / f"seven-diffusers-{view}.png")
        assert theirs.shape == (32, 32, 3)
        if view == "w0.50":
            assert np.abs(theirs - onnx_png).max() <= 1
        else:  # the other width: edgekit's own image of it
            _run_shell(f'.venv/bin/edgekit generate --bundle runs/onnx --width 1.0 --prompt "a handwritten digit seven" '
                       f"--seed 7 --out full.png", work, env)
            assert np.abs(theirs - _png(work / "full.png")).max() <= 1
    assert np.abs(_png(work / "seven-diffusers-w0.50.png") - _png(work / "seven-diffusers-w1.00.png")).max() > 0


@pytest.mark.slow
def test_the_hand_chain(tmp_path):
    work = _checkout_view(tmp_path / "checkout")
    env = _env(tmp_path)
    for command in claimed("hand_chain").commands:
        if " serve " in f" {command} ":
            serve_answers(command, work, env)
        else:
            _run_shell(command, work, env)
    assert (work / "runs/web/manifest.json").is_file()


@pytest.mark.slow
def test_training_on_several_processes(tmp_path):
    work = _checkout_view(tmp_path / "checkout")
    env = {**_env(tmp_path), "HF_HOME": str(tmp_path / "hf")}  # accelerate's config, if a line writes one
    for command in claimed("accelerate").commands:
        _run_shell(command, work, env)


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """A clone of this checkout's HEAD: what a newcomer gets."""
    root = tmp_path_factory.mktemp("clone") / "edgekit"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(root)], check=True, timeout=600)
    return root


@pytest.mark.slow
def test_setup_and_the_main_job_on_a_fresh_clone(fresh_clone, tmp_path):
    block = claimed("setup_package")
    _run_shell(block.commands[0], fresh_clone, _env(tmp_path), timeout=5400)
    assert (fresh_clone / "bundles/report.md").is_file()


@pytest.mark.slow
def test_setup_and_the_test_command_on_a_fresh_clone(fresh_clone, tmp_path):
    """As written it is this suite (run by .ci/run); here it runs with --collect-only: the setup, and that
    the suite collects on a fresh clone."""
    command = claimed("setup_tests").commands[0]
    _run_shell(command + " --collect-only", fresh_clone, _env(tmp_path), timeout=3600)


@pytest.mark.slow
def test_the_embedded_models_training_command(fresh_clone, tmp_path):
    """As written it trains for about 64 CPU-minutes and rewrites the shipped model: here with 2 steps per part
    and --out in a temporary directory, on a fresh clone."""
    command = claimed("train").commands[0]
    if not (fresh_clone / ".venv/bin/python").is_file():
        _run_shell("bash scripts/setup.sh", fresh_clone, _env(tmp_path), timeout=3600)
    _run_shell(f"{command} --vae-steps 2 --unet-steps 2 --classifier-epochs 1 --out {tmp_path / 'trained'}",
               fresh_clone, _env(tmp_path), timeout=3600)
    assert (tmp_path / "trained" / "pipeline" / "model_index.json").is_file()
