"""Held-out rows run in bounded chunks past the full-ranking size (a real-size UNet's 51 held-out rows in one
ONNX Runtime call asked for a 27 GB buffer)."""
from __future__ import annotations

import numpy as np


def test_run_in_chunks_joins_what_one_call_gives():
    from edgekit.components import run_in_chunks

    inputs = {"a": np.arange(10, dtype=np.float32).reshape(5, 2), "b": np.ones((5, 3), np.float32)}
    sizes = []

    def run(feeds):
        sizes.append(len(feeds["a"]))
        return feeds["a"] * 2 + feeds["b"][:, :2]

    whole = run(inputs)
    sizes.clear()
    np.testing.assert_array_equal(run_in_chunks(run, inputs, 2), whole)
    assert sizes == [2, 2, 1]
    sizes.clear()
    np.testing.assert_array_equal(run_in_chunks(run, inputs, None), whole)
    assert sizes == [5]


def _spy_quantizer(calls: list[int]):
    from edgekit.components import component_spec, export_module, run_torch
    from edgekit.quantize import ComponentArtifact, Quantizer

    class Spy(Quantizer):
        name = "spy"

        def quantize_component(self, pipe, name, calib_inputs, options, float_units, root, workdir):
            root.mkdir(parents=True, exist_ok=True)
            (root / "spy.bin").write_bytes(b"0" * 16)
            module, spec = export_module(pipe, name), component_spec(pipe, name)

            def run(feeds):
                calls.append(len(next(iter(feeds.values()))))
                return run_torch(module, spec, feeds)

            return ComponentArtifact("onnx", ["spy.bin"], run)

    return Spy()


def test_heldout_rows_run_one_at_a_time_past_the_size_rule(default_pipe, tmp_path, monkeypatch):
    from edgekit.components import example_inputs
    from edgekit.quantize import QuantizeOptions, quantize_component, sensitivity

    rows = example_inputs(default_pipe, "text_encoder", batch=12, seed=3)
    options = QuantizeOptions(holdout=0.5)
    calls: list[int] = []
    _, small = quantize_component(default_pipe, "text_encoder", rows, _spy_quantizer(calls), options,
                                  tmp_path / "a", tmp_path / "wa")
    assert calls == [small["heldout_rows"]] and small["heldout_rows"] > 1  # a small component: one call

    monkeypatch.setattr(sensitivity, "FULL_RANKING_MAX_WEIGHTS", 1)
    calls.clear()
    _, large = quantize_component(default_pipe, "text_encoder", rows, _spy_quantizer(calls), options,
                                  tmp_path / "b", tmp_path / "wb")
    assert calls == [1] * large["heldout_rows"]
    assert large["heldout_rel_err"] < 1e-5  # the spy is the float module: chunks join into the same outputs
