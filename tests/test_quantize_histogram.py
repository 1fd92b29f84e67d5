"""Entropy and percentile ranges within a bounded memory: passes over subsets of the tensors feed ORT's own
HistogramCollector, and the ranges (and the QDQ graph) are the ones ORT's calibrator makes on the digits UNet."""
import numpy as np
import pytest

METHODS = ("entropy", "percentile")


@pytest.fixture(scope="module")
def unet_onnx(default_pipe, tmp_path_factory):
    from edgekit.components import example_inputs
    from edgekit.quantize.ort_static import export_fp32_onnx

    path = tmp_path_factory.mktemp("histogram") / "unet.onnx"
    export_fp32_onnx(default_pipe, "unet", path)
    return path, example_inputs(default_pipe, "unet", batch=12, seed=3)


def _ort_ranges(path, rows, method, tmp_path, stride):
    """ORT's calibrator, fed ``stride`` rows per collect_data (stride = all rows: its plain calibration)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    from edgekit.quantize.ort_static import DEFAULT_OP_TYPES, _as_reader

    kind = {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method]
    calibrator = create_calibrator(path, list(DEFAULT_OP_TYPES), augmented_model_path=str(tmp_path / "aug.onnx"),
                                   calibrate_method=kind)
    n = len(next(iter(rows.values())))
    for first in range(0, n, stride):
        calibrator.collect_data(_as_reader({k: v[first:first + stride] for k, v in rows.items()}, stride))
    return {k: v.range_value for k, v in calibrator.compute_data().items()}


def _worst_gap(ours, reference) -> float:
    """Largest distance between our and ORT's range ends, as a share of ORT's range width."""
    assert set(ours.keys()) == set(reference) and len(reference) > 100
    worst = 0.0
    for name, (lo, hi) in reference.items():
        mine = ours[name].range_value
        width = max(float(hi - lo), 1e-6)
        worst = max(worst, abs(float(mine[0] - lo)) / width, abs(float(mine[1] - hi)) / width)
    return worst


@pytest.mark.parametrize("method", METHODS)
def test_histogram_ranges_equal_ort_calibrator(unet_onnx, tmp_path, method):
    from edgekit.quantize.ort_static import histogram_ranges

    path, rows = unet_onnx
    reference = _ort_ranges(path, rows, method, tmp_path, stride=12)
    # one row per run (ORT's reader runs 12): the forward's summation order moves the ends by ~1e-6 of the width
    ours, plan = histogram_ranges(path, rows, method)
    assert plan == {"passes": 1, "stride": 12}
    assert _worst_gap(ours, reference) < 1e-5
    # several passes, each exposing a bounded subset of the tensors, still all rows per collect: bit-equal
    # to ORT's when the rows run in ORT's batches
    split, plan = histogram_ranges(path, rows, method, pass_bytes=2_000_000, rows_per_run=12)
    assert plan["passes"] > 5 and plan["stride"] == 12
    assert _worst_gap(split, reference) == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_histogram_ranges_past_the_budget_equal_ort_strided_calibration(unet_onnx, tmp_path, method):
    """When the largest tensor's rows pass the budget, rows reach the collector a stride at a time: ORT's own
    strided calibration (histograms merged by its code), bit-equal with the same batches."""
    from edgekit.quantize.ort_static import histogram_ranges

    path, rows = unet_onnx
    ours, plan = histogram_ranges(path, rows, method, pass_bytes=400_000, rows_per_run=3)
    assert plan["stride"] == 3 and plan["passes"] > 5
    assert _worst_gap(ours, _ort_ranges(path, rows, method, tmp_path, stride=3)) == 0.0


def test_histogram_passes_hold_the_budget():
    from edgekit.quantize.ort_ranges import histogram_passes

    sizes = {f"t{i}": s for i, s in enumerate([10, 300, 20, 5, 80, 80, 1])}
    groups, stride = histogram_passes(sizes, n_rows=10, pass_bytes=1000)
    assert stride == 3  # 1000 // 300: the largest tensor's rows fit once per collect
    assert [t for g in groups for t in g] == list(sizes)  # every tensor once, in graph order
    assert all(sum(sizes[t] for t in g) * stride <= 1000 for g in groups)
    groups, stride = histogram_passes(sizes, n_rows=4, pass_bytes=10**6)
    assert (len(groups), stride) == (1, 4)
    groups, stride = histogram_passes({"big": 5000, "small": 1}, n_rows=4, pass_bytes=1000)
    assert stride == 1 and groups == [["big"], ["small"]]  # a tensor past the budget alone: one row at a time


@pytest.mark.parametrize("method", METHODS)
def test_bounded_histogram_route_writes_ort_own_qdq_file(unet_onnx, tmp_path, method):
    from edgekit.quantize.ort_static import quantize_onnx_static

    path, rows = unet_onnx
    # ORT's calibrator reads the 12 rows in batches of 6 (the largest divisor of 12 up to 8)
    plain = quantize_onnx_static(path, rows, tmp_path / "plain.onnx", calibrate_method=method, activations="uint8",
                                 bounded_ranges=False)
    bounded = quantize_onnx_static(path, rows, tmp_path / "bounded.onnx", calibrate_method=method,
                                   activations="uint8", range_rows_per_run=6)
    assert plain["range_collector"] == "onnxruntime calibrator"
    assert bounded["range_collector"].startswith("onnxruntime HistogramCollector over 1 bounded pass(es), 12 row(s)")
    assert bounded["tensors_measured"] > 100
    assert (tmp_path / "bounded.onnx").read_bytes() == (tmp_path / "plain.onnx").read_bytes()


def test_bounded_histogram_route_without_cache_argument(unet_onnx, tmp_path, monkeypatch):
    """An onnxruntime whose quantize_static has no calibration_cache_path still takes the histogram ranges."""
    import onnxruntime.quantization as ortq

    from edgekit.quantize import ort_static

    path, rows = unet_onnx
    ort_static.quantize_onnx_static(path, rows, tmp_path / "a.onnx", calibrate_method="entropy", activations="uint8")
    real = ortq.quantize_static

    def old_signature(model_input, model_output, calibration_data_reader, **kwargs):
        return real(model_input, model_output, calibration_data_reader, **kwargs)

    monkeypatch.setattr(ortq, "quantize_static", old_signature)
    ort_static.quantize_onnx_static(path, rows, tmp_path / "b.onnx", calibrate_method="entropy", activations="uint8")
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
