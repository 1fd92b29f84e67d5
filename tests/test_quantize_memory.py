"""What lets quantize run at real size: unchanged components hard-linked (not copied) into the output, stale
partial outputs removed, activation ranges measured within one inference's memory and handed to ORT's own
QDQ writer (same tensors, same ranges, same graph), weights past 2 GB kept in external data."""
import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from edgekit.fsutil import link_or_copy_tree, sha256_file, sha256_tree


def _inode(path):
    return os.stat(path).st_ino


# ---------------------------------------------------------------- link_or_copy_tree

def test_link_or_copy_tree_links_skips_and_never_touches_the_source(tmp_path):
    src = tmp_path / "src"
    (src / "unet").mkdir(parents=True)
    (src / "unet" / "weights.bin").write_bytes(b"w" * 1000)
    (src / "model_index.json").write_text("{}")
    (src / "manifest.json").write_text("{}")
    (src / ".cache").mkdir()
    (src / ".cache" / "x").write_text("x")
    (src / "unet" / ".hidden").write_text("h")
    dst = tmp_path / "dst"
    stats = link_or_copy_tree(src, dst, skip_top=("manifest.json",))
    assert stats["linked"] == 2 and stats["copied"] == 0 and stats["linked_bytes"] == 1002
    assert _inode(dst / "unet" / "weights.bin") == _inode(src / "unet" / "weights.bin")
    assert not (dst / "manifest.json").exists() and not (dst / ".cache").exists()
    assert not (dst / "unet" / ".hidden").exists()
    # a stage replaces a mirrored file (unlink, write anew): the source keeps its bytes
    (dst / "unet" / "weights.bin").unlink()
    (dst / "unet" / "weights.bin").write_bytes(b"new")
    assert (src / "unet" / "weights.bin").read_bytes() == b"w" * 1000


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM])
def test_link_or_copy_tree_copies_where_links_are_refused(tmp_path, monkeypatch, code):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f").write_bytes(b"abc")
    (src / "g").write_bytes(b"de")

    def refuse(*_args, **_kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "link", refuse)
    stats = link_or_copy_tree(src, tmp_path / "dst")
    assert stats == {"linked": 0, "copied": 2, "linked_bytes": 0, "copied_bytes": 5}
    assert (tmp_path / "dst" / "a" / "f").read_bytes() == b"abc"
    assert _inode(tmp_path / "dst" / "g") != _inode(src / "g")


def test_link_or_copy_tree_raises_other_errors(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", full)
    with pytest.raises(OSError) as info:
        link_or_copy_tree(src, tmp_path / "dst")
    assert info.value.errno == errno.ENOSPC


# ---------------------------------------------------------------- bounded activation ranges

@pytest.fixture(scope="module")
def unet_onnx(default_pipe, tmp_path_factory):
    from edgekit.components import example_inputs
    from edgekit.quantize.ort_static import export_fp32_onnx

    path = tmp_path_factory.mktemp("ranges") / "unet.onnx"
    export_fp32_onnx(default_pipe, "unet", path)
    return path, example_inputs(default_pipe, "unet", batch=12, seed=3)


def _ort_calibrator_ranges(path, rows, tmp_path):
    from onnxruntime.quantization.calibrate import create_calibrator

    from edgekit.quantize.ort_static import DEFAULT_OP_TYPES, _as_reader

    calibrator = create_calibrator(path, list(DEFAULT_OP_TYPES), augmented_model_path=str(tmp_path / "aug.onnx"))
    calibrator.collect_data(_as_reader(rows, 8))
    return {k: v.range_value for k, v in calibrator.compute_data().items()}


def test_bounded_ranges_equal_ort_calibrator(unet_onnx, tmp_path):
    from edgekit.quantize.ort_static import minmax_ranges

    path, rows = unet_onnx
    reference = _ort_calibrator_ranges(path, rows, tmp_path)
    ours = minmax_ranges(path, rows)  # one row per run
    assert set(ours) == set(reference) and len(ours) > 100
    for name, (lo, hi) in ours.items():
        ref_lo, ref_hi = reference[name]
        assert lo.shape == ref_lo.shape == (1,) and lo.dtype == ref_lo.dtype == np.float32
        width = max(float(ref_hi[0] - ref_lo[0]), 1e-6)
        assert abs(float(lo[0] - ref_lo[0])) <= 1e-5 * width and abs(float(hi[0] - ref_hi[0])) <= 1e-5 * width, name
    # several passes over slices of the tensors measure the same thing
    sliced = minmax_ranges(path, rows, tensors_per_pass=40)
    assert all(np.array_equal(sliced[k][0], ours[k][0]) and np.array_equal(sliced[k][1], ours[k][1]) for k in ours)


def test_bounded_ranges_give_ort_own_qdq_graph(unet_onnx, tmp_path):
    """Rows batched as ORT's reader batches them give bit-equal ranges, so ORT's QDQ writer writes the very same
    file; one row per run (the default) differs from it only by float summation order."""
    import onnxruntime as ort

    from edgekit.quality import relative_error
    from edgekit.quantize.ort_static import quantize_onnx_static

    path, rows = unet_onnx
    plain = quantize_onnx_static(path, rows, tmp_path / "plain.onnx", activations="uint8", bounded_ranges=False)
    same = quantize_onnx_static(path, rows, tmp_path / "same.onnx", activations="uint8", range_rows_per_run=8)
    default = quantize_onnx_static(path, rows, tmp_path / "default.onnx", activations="uint8")
    assert plain["range_collector"] == "onnxruntime calibrator" and default["tensors_measured"] > 100
    assert (tmp_path / "same.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()
    assert default["quantize_linear_nodes"] == plain["quantize_linear_nodes"]
    feeds = {k: v[:4] for k, v in rows.items()}
    fp32 = ort.InferenceSession(str(path)).run(None, feeds)[0]
    errs = {name: relative_error(ort.InferenceSession(str(tmp_path / f"{name}.onnx")).run(None, feeds)[0], fp32)
            for name in ("plain", "default")}
    assert 0 < errs["default"] < 0.1 and abs(errs["default"] - errs["plain"]) < 0.25 * errs["plain"], errs


def test_bounded_ranges_without_cache_argument(unet_onnx, tmp_path, monkeypatch):
    """An onnxruntime whose quantize_static has no calibration_cache_path still takes the ranges."""
    import onnxruntime.quantization as ortq

    from edgekit.quantize import ort_static

    path, rows = unet_onnx
    ort_static.quantize_onnx_static(path, rows, tmp_path / "a.onnx", activations="uint8", range_rows_per_run=8)
    real = ortq.quantize_static

    def old_signature(model_input, model_output, calibration_data_reader, **kwargs):
        return real(model_input, model_output, calibration_data_reader, **kwargs)

    monkeypatch.setattr(ortq, "quantize_static", old_signature)
    ort_static.quantize_onnx_static(path, rows, tmp_path / "b.onnx", activations="uint8", range_rows_per_run=8)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_ranges_of_external_data_model_leave_nothing_beside_it(unet_onnx, tmp_path):
    import onnx

    from edgekit.quantize.ort_static import minmax_ranges

    path, rows = unet_onnx
    ext = tmp_path / "ext" / "unet.onnx"
    ext.parent.mkdir()
    onnx.save_model(onnx.load(str(path)), str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="unet.onnx.data", size_threshold=1024)
    inline = {k: v for k, v in list(minmax_ranges(path, {k: v[:3] for k, v in rows.items()}).items())}
    external = minmax_ranges(ext, {k: v[:3] for k, v in rows.items()})
    assert all(np.array_equal(external[k][0], inline[k][0]) for k in inline)
    assert sorted(p.name for p in ext.parent.iterdir()) == ["unet.onnx", "unet.onnx.data"]


# ---------------------------------------------------------------- the quantize stage's output directory

def test_quantized_dir_links_unchanged_components_and_keeps_weights_external(default_model, small_calib, tmp_path,
                                                                               monkeypatch):
    """ort-static on the UNet with the 2 GB thresholds lowered: the float export and the INT8 file both go
    through external data; the float source is mirrored by hard links; a dead run's partial copy goes."""
    import edgekit.onnx_export
    from edgekit.quantize import QuantizeOptions, quantize_model
    from edgekit.quantize import ort_static
    from edgekit.quantize.artifact import load_quantized_pipeline

    model = tmp_path / "model"  # a private copy on the same filesystem as the output, so links can be made
    link_or_copy_tree(default_model, model)
    source_files = {p.relative_to(model): sha256_file(p) for p in model.rglob("*") if p.is_file()}
    before = sha256_tree(model)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".q.partial-{dead.pid}"
    (stale / "unet").mkdir(parents=True)
    (stale / "unet" / "big.bin").write_bytes(b"0" * 4096)

    monkeypatch.setattr(edgekit.onnx_export, "TWO_GB", 1)
    monkeypatch.setattr(ort_static, "EXTERNAL_INT8_FROM_BYTES", 1)
    out = tmp_path / "q"
    manifest = quantize_model(model, small_calib, "ort-static", out, components=("unet",),
                              options=QuantizeOptions(sensitivity_rows=2))
    assert not stale.exists()
    files = manifest["components"]["unet"]["files"]
    assert files == ["quantized/unet/model.onnx", "quantized/unet/model.onnx.data"]
    assert manifest["components"]["unet"]["report"]["fp32_graph"]["external_data"] is True
    for rel in source_files:
        if rel.name != "manifest.json" and not any(part.startswith(".") for part in rel.parts):
            assert _inode(out / rel) == _inode(model / rel), rel
    for rel in files:
        assert os.stat(out / rel).st_nlink == 1
    assert sha256_tree(model) == before
    assert {p.relative_to(model): sha256_file(p) for p in model.rglob("*") if p.is_file()} == source_files
    assert 0 < manifest["components"]["unet"]["heldout_rel_err"] < 0.1  # measured on the external-data INT8 file
    from diffusers import UNet2DConditionModel

    assert not isinstance(load_quantized_pipeline(out).unet, UNet2DConditionModel)  # onnxruntime runs it


# ---------------------------------------------------------------- sensitivity at bounded cost

def test_size_rule_picks_the_bounded_measure_past_the_limit(default_pipe, monkeypatch):
    from edgekit.components import export_module
    from edgekit.quantize import sensitivity

    module = export_module(default_pipe, "unet")
    assert sensitivity.measure_for(module) == "output"  # the digits UNet: 4M weights
    monkeypatch.setattr(sensitivity, "FULL_RANKING_MAX_WEIGHTS", 1_000_000)
    assert sensitivity.measure_for(module) == "bounded"


def test_bounded_ranking_keeps_what_the_output_ranking_keeps(default_pipe):
    """On the same rows, the bounded measure ranks by output error exactly the units the budget can keep, so
    select_float_units keeps the same ones; the rest are ranked by the local measure, after them."""
    from edgekit.components import component_spec, example_inputs, export_module
    from edgekit.quantize.sensitivity import LOCAL_ROWS, rank, select_float_units

    module = export_module(default_pipe, "unet")
    spec = component_spec(default_pipe, "unet")
    rows = example_inputs(default_pipe, "unet", batch=LOCAL_ROWS, seed=2)
    full = rank(module, spec, rows, rows, measure="output")
    for budget in (0.002, 0.02):
        bounded = rank(module, spec, rows, rows, measure="bounded", float_budget=budget)
        assert {r["unit"] for r in bounded} == {r["unit"] for r in full}
        total = sum(r["weights"] for r in full)
        by_output = [r for r in bounded if r["measure"] == "output"]
        assert by_output == bounded[:len(by_output)] and 0 < len(by_output) < len(bounded)
        assert all(r["weights"] <= budget * total for r in by_output)
        assert [r["rel_err"] for r in by_output] == sorted((r["rel_err"] for r in by_output), reverse=True)
        assert select_float_units(bounded, budget) == select_float_units(full, budget)
