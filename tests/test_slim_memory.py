"""slim refuses, before loading anything, a run its measured memory line says will not fit the available memory
(benchmarks/realsize_slim_memory.py), and names what would fit."""
import json
import os
from dataclasses import replace

import pytest

from edgekit.fsutil import sha256_tree
from edgekit.unet_layout import unet_layout
from cli_checks import one_line

REAL_UNET_PARAMS = 859_520_964  # SD-1.5's UNet


def _refused(run_cli, monkeypatch, available: int, out, *args) -> str:
    """Run the command with ``available`` bytes of memory reported: it must refuse in one line (exit 2) and write
    nothing at ``out``. Returns that line."""
    from edgekit.quantize import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: available)
    code, _, err = run_cli(*args, "--out", out)
    assert code == 2
    line = one_line(err)
    assert not out.exists()
    return line


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a pipeline or capturing calibration rows fails the test: the refusal comes before them."""
    import edgekit.compress.training_rows
    import edgekit.pipeline

    def forbidden(*_args, **_kwargs):
        raise AssertionError("heavy work started before the refusal")

    monkeypatch.setattr(edgekit.pipeline, "load_pipeline", forbidden)
    monkeypatch.setattr(edgekit.compress.training_rows, "calibration_rows", forbidden)


def _estimate(default_model, config, monkeypatch):
    """The estimate check_memory makes for ``config`` on the tiny model (with all the memory it could want)."""
    from edgekit.compress import slim
    from edgekit.quantize import memory

    with monkeypatch.context() as m:
        m.setattr(memory, "available_bytes", lambda: 2**50)
        return slim.check_memory(default_model, config)["estimated_peak_bytes"]


def test_estimate_uses_the_measured_fit(default_model, monkeypatch):
    from edgekit.compress import slim
    from edgekit.compress.slim import SlimConfig
    from edgekit.quantize import memory

    params = memory.component_params(default_model, "unet")
    assert params == 4_192_900
    order, train = SlimConfig(train_steps=0), SlimConfig(widths=(0.5, 1.0), train_steps=2, batch_size=1)
    a, b = slim.MEMORY_FIT["order"]
    assert slim.estimate_memory(order, params, 10**9, 5.0) == int(a + b * params)  # no rows, no backward
    a, b, c = slim.MEMORY_FIT["train"]
    assert slim.estimate_memory(train, params, 10**9, 2.0) == int(a + b * params + 2 * c + 10**9)
    # importance from data runs a backward pass: the training fit, no rows counted without training steps
    taylor = SlimConfig(importance="taylor")
    assert slim.estimate_memory(taylor, params, 10**9, 2.0) == int(a + b * params + 2 * c)
    # training holds a gradient and two AdamW moments per parameter beyond the untrained run's copies
    assert slim.MEMORY_FIT["train"][1] - slim.MEMORY_FIT["order"][1] >= 8
    # the lean line: its own fit, and one prompted row (and its twin) per pass whatever the batch
    a, b, c = slim.MEMORY_FIT["lean"]
    assert slim.estimate_memory(train, params, 10**9, 2.0, "lean") == int(a + b * params + 2 * c + 10**9)
    assert slim._memory_line(train, "lean") == "lean" and slim._memory_line(SlimConfig(), "lean") == "order"
    # activation units: SD-1.5's first-block width and 64x64 latents at batch 1 and widths 0.5,1.0 are one
    cfg = json.loads((default_model / "unet" / "config.json").read_text())
    one = cfg["block_out_channels"][0] / 320 * cfg["sample_size"] ** 2 / 64**2
    layout = unet_layout(default_model)
    batch16 = SlimConfig(widths=(0.5, 1.0), train_steps=2, batch_size=16)
    assert slim._activation_units(layout, train) == pytest.approx(one)
    assert slim._activation_units(layout, batch16) == pytest.approx(16 * one)
    assert slim._activation_units(layout, batch16, "lean") == pytest.approx(one)
    assert slim._activation_units(layout, SlimConfig(widths=(0.5, 0.75, 1.0), train_steps=2, batch_size=1)) \
        == pytest.approx(one * 2.25 / 1.5)
    # rows captured for training are counted (3000 steps: 75 images, 3000 rows); a given set's are not
    many = SlimConfig(widths=(0.5, 1.0), train_steps=3000, batch_size=1)
    assert slim._max_rows(slim._capture_samples(many)) == 3000
    assert slim._max_rows(slim._capture_samples(SlimConfig(train_steps=3000, batch_size=16))) == 48000
    rows = slim._rows_bytes(layout, 3000)
    assert slim._max_rows(slim._capture_samples(train)) == 880  # 22 images at least
    assert _estimate(default_model, many, monkeypatch) == _estimate(default_model, train, monkeypatch) \
        - slim._rows_bytes(layout, 880) + rows
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**50)
    assert slim.check_memory(default_model, many, calib_dir=default_model)["estimated_peak_bytes"] == \
        _estimate(default_model, train, monkeypatch) - slim._rows_bytes(layout, 880)
    # the lean mode also holds the teacher's outputs for the rows its steps take (each with its twin's)
    latent = 4 * layout.in_channels * layout.height * layout.width
    assert slim._rows_bytes(layout, 880, 2) - slim._rows_bytes(layout, 880) == 2 * 2 * latent


def test_slim_refuses_training_past_the_available_memory(run_cli, default_model, tmp_path, monkeypatch, no_loading):
    from edgekit.compress.slim import SlimConfig

    config = SlimConfig(widths=(0.5, 1.0), train_steps=2, batch_size=1)
    needed = min(_estimate(default_model, replace(config, memory=m), monkeypatch) for m in ("standard", "lean"))
    assert _estimate(default_model, SlimConfig(train_steps=0), monkeypatch) < needed - 1
    before = sha256_tree(default_model)
    out = tmp_path / "slim"
    line = _refused(run_cli, monkeypatch, needed - 1, out,  # the threshold lowered to the tiny model
                    "slim", "--model", default_model, "--widths", "0.5,1.0", "--train-steps", "2", "--batch-size", "1")
    assert line.startswith("edgekit slim: error: --train-steps 2: needs about ")
    assert "4M-parameter UNet" in line and "bytes per parameter" in line and "GB of activations" in line
    assert "GB of calibration rows" in line and "GB available" in line and "realsize_slim_memory.md" in line
    assert "--train-steps 0 fits" in line and "--memory lean fits" not in line
    assert not out.exists() and os.listdir(tmp_path) == []
    assert sha256_tree(default_model) == before


def _sd15_layout(tmp_path, monkeypatch):
    """A directory with SD-1.5's UNet config (64x64 latents, 320 first-block channels) whose weight headers read
    as 859.5M parameters: check_memory's real-size decision without any weights."""
    from edgekit.quantize import memory
    from edgekit.zoo.sd15 import SD15_UNET

    model = tmp_path / "sd15"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "config.json").write_text(json.dumps({**SD15_UNET, "sample_size": 64}))
    monkeypatch.setattr(memory, "component_params", lambda model_dir, component: REAL_UNET_PARAMS)
    return model


def test_real_size_training_takes_the_lean_line(tmp_path, monkeypatch):
    """At SD-1.5's size, a few batch-1 steps with 16 GB available: auto takes the lean mode (its note says so in
    one line, with the standard mode's need); standard asked for is refused naming the lean mode; with too
    little even for lean, training is refused naming the untrained run."""
    from edgekit.compress import slim
    from edgekit.compress.slim import SlimConfig
    from edgekit.errors import InputError
    from edgekit.quantize import memory

    model = _sd15_layout(tmp_path, monkeypatch)
    config = SlimConfig(widths=(0.5, 1.0), train_steps=3, batch_size=1)
    monkeypatch.setattr(memory, "available_bytes", lambda: 16 * 2**30)
    record = slim.check_memory(model, config)
    assert record["memory"] == "lean" and record["estimated_peak_bytes"] <= 16 * 2**30
    note = record["memory_note"]
    assert note.startswith("training in the lean memory mode: the standard one needs about ") and "\n" not in note
    standard = float(note.split("needs about ")[1].split(" GB")[0])
    assert standard > 16 and standard == pytest.approx(slim._estimate(
        unet_layout(model), REAL_UNET_PARAMS, config, "standard", None)["bytes"] / 2**30, abs=0.05)
    with pytest.raises(InputError) as refused:
        slim.check_memory(model, replace(config, memory="standard"))
    assert str(refused.value).startswith("train_steps 3: needs about ")
    assert "memory lean fits (about " in str(refused.value) and "the lean memory mode)" in str(refused.value)
    with pytest.raises(InputError) as refused:  # the package's words: the fields of its slim section
        slim.check_memory(model, replace(config, memory="standard"), section="slim")
    assert refused.value.param == "slim.train_steps" and refused.value.mentions == ("slim.memory",)
    assert "slim.memory lean fits" in str(refused.value)
    lean = record["estimated_peak_bytes"]
    order = slim.estimate_memory(SlimConfig(train_steps=0), REAL_UNET_PARAMS)
    if order < lean:  # room for the untrained run but not the lean training
        monkeypatch.setattr(memory, "available_bytes", lambda: (order + lean) // 2)
        with pytest.raises(InputError) as refused:
            slim.check_memory(model, config)
        assert "in the lean memory mode" in str(refused.value) and "train_steps 0 fits" in str(refused.value)
    # the package's importance (taylor: a backward pass over 16 rows) does not fit beside it; l1 is named
    monkeypatch.setattr(memory, "available_bytes", lambda: 16 * 2**30)
    with pytest.raises(InputError) as refused:
        slim.check_memory(model, replace(config, importance="taylor"))
    assert "importance l1 fits (about " in str(refused.value) and "memory lean" not in str(refused.value)


def test_slim_cli_says_when_it_chose_the_lean_mode(run_cli, digits_arch_model, tmp_path, monkeypatch):
    """auto with the standard line past the available memory and the lean one within: the run trains in the
    lean mode and the summary says so in one line."""
    from edgekit.compress import slim
    from edgekit.compress.prune import REPORT_FILE
    from edgekit.compress.slim import SlimConfig
    from edgekit.quantize import memory

    config = SlimConfig(widths=(0.5, 1.0), train_steps=2, batch_size=2)
    # the tiny model's lean and standard lines are both near their intercepts: make the standard one larger
    a, b, c = slim.MEMORY_FIT["train"]
    monkeypatch.setitem(slim.MEMORY_FIT, "train", (a + 2**40, b, c))
    lean = _estimate(digits_arch_model, replace(config, memory="lean"), monkeypatch)
    monkeypatch.setattr(memory, "available_bytes", lambda: lean)
    code, stdout, err = run_cli("slim", "--model", digits_arch_model, "--widths", "0.5,1.0", "--train-steps", "2",
                                "--batch-size", "2", "--out", tmp_path / "slim")
    assert code == 0, err
    notes = [line for line in stdout.splitlines() if "lean memory mode" in line]
    assert len(notes) == 1 and notes[0].startswith("training in the lean memory mode: the standard one needs")
    report = json.loads((tmp_path / "slim" / REPORT_FILE).read_text())
    assert report["memory"] == "lean" and report["training"]["memory"] == "lean" and report["memory_note"] == notes[0]
    assert report["config"]["memory"] == "auto"


def test_slim_refuses_taylor_importance_and_names_l1(run_cli, default_model, tmp_path, monkeypatch, no_loading):
    from edgekit.compress.slim import SlimConfig

    needed = _estimate(default_model, SlimConfig(importance="taylor"), monkeypatch)
    line = _refused(run_cli, monkeypatch, needed - 1, tmp_path / "slim", "slim", "--model", default_model,
                    "--importance", "taylor")
    assert "--importance taylor: needs about" in line and "--train-steps 0 --importance l1 fits" in line


def test_slim_refuses_when_even_ordering_does_not_fit(run_cli, default_model, tmp_path, monkeypatch, no_loading):
    line = _refused(run_cli, monkeypatch, 2**20, tmp_path / "slim", "slim", "--model", default_model)
    assert line.startswith(f"edgekit slim: error: --model {default_model}: needs about ")
    assert "use a machine with more memory" in line and "--train-steps 0 fits" not in line


def test_slim_runs_when_it_fits(run_cli, default_model, tmp_path, monkeypatch):
    """The check passes a run the available memory holds (the untrained run on the tiny model)."""
    from edgekit.compress.slim import SlimConfig
    from edgekit.quantize import memory

    needed = _estimate(default_model, SlimConfig(), monkeypatch)
    monkeypatch.setattr(memory, "available_bytes", lambda: needed)
    out = tmp_path / "slim"
    code, _, err = run_cli("slim", "--model", default_model, "--widths", "0.5,1.0", "--out", out)
    assert code == 0, err
    assert (out / "structure.json").exists()


def _config_file(tmp_path, data: dict):
    path = tmp_path / "package.json"
    path.write_text(json.dumps(data))
    return path


def test_package_refuses_a_slim_stage_past_the_available_memory(run_cli, digits_arch_model, tmp_path, monkeypatch,
                                                                 no_loading):
    """`edgekit package` at a width the model must be slimmed for checks the slim stage's line in its plan, before
    any stage runs, and words the refusal with its own flag (--slim-steps)."""
    from edgekit.compress.slim import SlimConfig
    from edgekit.package import SLIM_RECIPE

    config = SlimConfig(widths=(0.5, 1.0), train_steps=3, importance=SLIM_RECIPE["importance"])
    needed = min(_estimate(digits_arch_model, replace(config, memory=m), monkeypatch) for m in ("standard", "lean"))
    before = sha256_tree(digits_arch_model)
    line = _refused(run_cli, monkeypatch, needed - 1, tmp_path / "pk", "package", "--model", digits_arch_model,
                    "--targets", "ort-web", "--widths", "1.0,0.5", "--slim-steps", "3")
    assert line.startswith("edgekit package: error: --slim-steps 3: needs about "), line
    # the lean mode holds the training; the importance the package's recipe takes (taylor) does not fit beside it
    assert "UNet, its taylor importance run before the lean training (measured" in line
    assert "slim.importance l1 fits (about" in line and "the lean memory mode" in line
    line = _refused(run_cli, monkeypatch, needed - 1, tmp_path / "pk", "package", "--model", digits_arch_model,
                    "--targets", "ort-web", "--widths", "1.0,0.5", "--slim-steps", "3", "--config",
                    _config_file(tmp_path, {"slim": {"memory": "standard"}}))
    assert line.startswith("edgekit package: error: --slim-steps 3: needs about ") and "lean memory mode" not in \
        line.split(";")[0]
    assert "slim.memory lean slim.importance l1 fits (about" in line
    assert sha256_tree(digits_arch_model) == before
