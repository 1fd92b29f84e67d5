"""Bad input at real size, refused before the heavy work: a quantize method whose measured memory growth does
not fit this machine, a --widths the GroupNorm layout cannot take, calibration rows from the reduced model
given to the real-size one, and an out directory on a disk without room. Each is one line, exit 2 (1 for the
full disk, a stage failure), nothing written, the inputs unchanged.

The "real-size" model here is the reduced SD-1.5 pipeline with the real SD-1.5 UNet config.json: its weights
do not fit that config, so any of these paths that loaded them would fail differently (and the tests also
make loading and hashing raise)."""
import json
import os
import shutil
import subprocess

import pytest

from edgekit.fsutil import sha256_tree
from cli_checks import one_line


@pytest.fixture
def realsize_config_model(sd15_reduced, tmp_path):
    """The reduced SD-1.5 directory with the real-size UNet's config (SD-1.5's 860M-parameter layout)."""
    from edgekit.zoo.sd15 import SD15_UNET

    model = tmp_path / "realsize"
    shutil.copytree(sd15_reduced, model)
    config_path = model / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config.update({k: list(v) if isinstance(v, tuple) else v for k, v in SD15_UNET.items()})
    config_path.write_text(json.dumps(config))
    return model


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Loading a pipeline, hashing a model or quantizing fails the test: the refusals come before them."""
    import edgekit.fsutil
    import edgekit.modeldir
    import edgekit.package
    import edgekit.pipeline
    import edgekit.quantize

    def forbidden(*_args, **_kwargs):
        raise AssertionError("heavy work started before the refusal")

    edgekit.modeldir.forget()  # no digest left from an earlier test: hashing now would be this command's own
    monkeypatch.setattr(edgekit.pipeline, "load_pipeline", forbidden)
    monkeypatch.setattr(edgekit.fsutil, "sha256_tree", forbidden)  # ModelDir.sha256, the one digest of a model
    monkeypatch.setattr(edgekit.quantize, "quantize_component", forbidden)


# ---------------------------------------------------------------- a method that cannot fit

def test_component_params_read_from_headers_equal_the_module(default_pipe, default_model):
    from edgekit.quantize.memory import component_params

    assert component_params(default_model, "unet") == sum(p.numel() for p in default_pipe.unet.parameters())
    assert component_params(default_model, "vae_decoder") == sum(p.numel() for p in default_pipe.vae.parameters())


def test_estimate_uses_the_measured_line(monkeypatch, default_model):
    from edgekit.quantize import get_quantizer, memory

    nncf, fx, ort = get_quantizer("nncf"), get_quantizer("fx"), get_quantizer("ort-static")
    assert ort.memory_fit is None and memory.check_memory(ort, default_model, ("unet",)) is None
    # 860M parameters: NNCF's line passes 24 GB (this machine), FX's stays under the 16 GB goal
    assert memory.estimate_bytes(nncf, 859_520_964) > 24 * 2**30
    assert memory.estimate_bytes(fx, 859_520_964) < 16 * 2**30
    monkeypatch.setattr(memory, "available_bytes", lambda: 64 * 2**30)
    record = memory.check_memory(fx, default_model, ("unet", "vae_decoder"))
    assert record["component"] == "unet" and record["params"] == 4_192_900


@pytest.mark.parametrize("method", ["nncf", "fx"])
def test_quantize_refuses_a_method_past_the_available_memory(run_cli, default_model, small_calib, tmp_path,
                                                             monkeypatch, no_heavy_work, method):
    from edgekit.quantize import get_quantizer, memory

    needed = memory.estimate_bytes(get_quantizer(method), memory.component_params(default_model, "unet"))
    monkeypatch.setattr(memory, "available_bytes", lambda: needed - 1)  # the threshold lowered to the tiny model
    before = sha256_tree(small_calib)
    out = tmp_path / "q"
    code, _, err = run_cli("quantize", "--model", default_model, "--method", method, "--calib", small_calib,
                           "--components", "unet", "--out", out)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"edgekit quantize: error: --method {method}: needs about ")
    assert "bytes per parameter" in line and "GB available" in line and "use --method ort-static" in line
    assert not out.exists() and sorted(os.listdir(tmp_path)) == []
    assert sha256_tree(small_calib) == before


def test_package_refuses_a_method_past_the_available_memory(run_cli, default_model, tmp_path, monkeypatch,
                                                            no_heavy_work):
    from edgekit.quantize import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    out = tmp_path / "pk"
    code, _, err = run_cli("package", "--model", default_model, "--targets", "ort-web", "--quant", "nncf",
                           "--out", out)
    assert code == 2
    line = one_line(err)
    assert "--quant nncf: needs about" in line and "use --quant ort-static" in line
    assert not out.exists()


# ---------------------------------------------------------------- widths and calibration rows at real size

def test_package_refuses_a_groupnorm_width_at_real_size_without_loading(run_cli, realsize_config_model, tmp_path,
                                                                        no_heavy_work):
    before = sha256_tree(realsize_config_model)
    out = tmp_path / "pk"
    code, _, err = run_cli("package", "--model", realsize_config_model, "--targets", "ort-web", "--widths",
                           "1.0,0.04", "--out", out)
    assert code == 2
    line = one_line(err)
    assert "--widths 0.04" in line and "320 channels" in line and "GroupNorm" in line
    assert not out.exists()
    assert sha256_tree(realsize_config_model) == before


def test_package_refuses_a_groupnorm_width_on_the_reduced_layout(run_cli, sd15_reduced, tmp_path, no_heavy_work):
    out = tmp_path / "pk"
    code, _, err = run_cli("package", "--model", sd15_reduced, "--targets", "ort-web", "--widths", "1.0,0.5",
                           "--out", out)
    assert code == 2
    line = one_line(err)
    assert "--widths 0.5" in line and "GroupNorm" in line
    assert not out.exists()


def test_reduced_rows_given_to_the_real_size_model_fail_before_hash_or_load(run_cli, realsize_config_model,
                                                                           sd15_calib, tmp_path, no_heavy_work):
    before = sha256_tree(sd15_calib), sha256_tree(realsize_config_model)
    out = tmp_path / "q"
    code, _, err = run_cli("quantize", "--model", realsize_config_model, "--method", "ort-static", "--calib",
                           sd15_calib, "--components", "unet", "--out", out)
    assert code == 2
    line = one_line(err)
    assert f"--calib {sd15_calib.resolve()}: unet rows have sample of shape" in line
    assert "[4, 64, 64]" in line and "re-run edgekit calibrate on" in line
    assert not out.exists()
    assert (sha256_tree(sd15_calib), sha256_tree(realsize_config_model)) == before


def test_rows_of_a_model_with_another_text_width_are_refused_by_the_library(sd15_reduced, sd15_calib, tmp_path):
    from edgekit.calibration import CalibrationSet
    from edgekit.errors import CalibrationError

    model = tmp_path / "wide_text"
    shutil.copytree(sd15_reduced, model)
    config_path = model / "unet" / "config.json"
    config = json.loads(config_path.read_text())
    config["cross_attention_dim"] = 768
    config_path.write_text(json.dumps(config))
    with pytest.raises(CalibrationError, match=r"encoder_hidden_states of shape \[77, 64\].*takes \[\*, 768\]"):
        CalibrationSet.open(sd15_calib, model)
    assert CalibrationSet.open(sd15_calib, sd15_reduced).components()  # its own model still opens


# ---------------------------------------------------------------- an out directory on a full disk

def _mount_tmpfs(path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or result.returncode})")


def test_quantize_on_a_full_disk_names_out_and_leaves_nothing(run_cli, default_model, small_calib, tmp_path):
    """A 2 MiB tmpfs cannot take the source model the quantized directory starts from (11 MB, copied across
    filesystems where it would be hard-linked on one)."""
    small = tmp_path / "small"
    _mount_tmpfs(small, "2m")
    try:
        before = sha256_tree(default_model), sha256_tree(small_calib)
        out = small / "q"
        code, _, err = run_cli("quantize", "--model", default_model, "--method", "ort-static", "--calib",
                               small_calib, "--components", "unet", "--out", out)
        assert code == 1
        line = one_line(err)
        assert line.startswith(f"edgekit quantize: error: quantize: no space left on device writing {out}")
        assert "nothing was written to it" in line
        assert [p for p in small.iterdir() if not p.name.endswith(".log")] == []
        assert (sha256_tree(default_model), sha256_tree(small_calib)) == before
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_calibrate_on_a_full_disk_names_out_and_leaves_nothing(run_cli, default_model, tmp_path, monkeypatch):
    import edgekit.calibration

    small = tmp_path / "small"
    _mount_tmpfs(small, "64k")
    real_save = edgekit.calibration.np.savez

    def fill_then_save(file, *args, **kwargs):  # the shards are small: fill the disk first, as a big model would
        with open(small / "filler", "wb") as fh:
            try:
                fh.write(b"\0" * 2**20)
            except OSError:
                pass
        return real_save(file, *args, **kwargs)

    monkeypatch.setattr(edgekit.calibration.np, "savez", fill_then_save)
    try:
        out = small / "calib"
        code, _, err = run_cli("calibrate", "--model", default_model, "--samples", "1", "--steps", "2", "--out", out)
        (small / "filler").unlink(missing_ok=True)
        assert code == 1
        line = one_line(err)
        assert line.startswith(f"edgekit calibrate: error: calibrate: no space left on device writing {out}")
        assert [p for p in small.iterdir() if not p.name.endswith(".log")] == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
