"""The component registry: one class per component owns its facts, every stage loops over the registry, and a
new component (the VAE encoder) is one module that exports and verifies like the others. Also the one
registration pattern (edgekit.registry) that targets, quantizers and runners share."""
import platform
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from edgekit.components import (BUNDLE_COMPONENTS, CALIB_COMPONENTS, COMPONENTS, PER_WIDTH_COMPONENTS, all_components,
                                bundle_components, component_spec, example_inputs, export_module, get_component,
                                run_torch)
from edgekit.errors import InputError
from edgekit.registry import Registry
from edgekit.width import Width


def test_registry_holds_each_component_once_in_manifest_order():
    assert COMPONENTS.names() == ["text_encoder", "unet", "vae_decoder", "vae_encoder", "unet_full", "unet_shallow"]
    assert BUNDLE_COMPONENTS == ("text_encoder", "unet", "vae_decoder")  # what the bundle sampler runs
    assert CALIB_COMPONENTS == ("text_encoder", "unet", "vae_decoder")  # what calibration can capture
    assert PER_WIDTH_COMPONENTS == ("unet",)
    assert [c.name for c in bundle_components(("vae_encoder",))] == COMPONENTS.names()[:4]
    assert {c.name: c.pipeline_attr for c in all_components()} == {
        "text_encoder": "text_encoder", "unet": "unet", "vae_decoder": "vae", "vae_encoder": "vae",
        "unet_full": "unet", "unet_shallow": "unet"}  # the step-cache graphs (edgekit.step_cache)
    with pytest.raises(InputError, match="did you mean 'vae_decoder'"):
        get_component("vae_decodr")


def test_folders_and_labels_come_from_the_component_and_one_width_value():
    unet, text = get_component("unet"), get_component("text_encoder")
    assert unet.folder(0.5) == "unet/w0.50" and unet.folder(Width.parse("1")) == "unet/w1.00"
    assert unet.label(0.75) == "unet@0.75" and unet.label(None) == "unet@1.00"
    assert text.folder(0.5) == "text_encoder" and text.label(None) == "text_encoder"


def test_every_component_runs_its_own_example_inputs(default_pipe):
    for comp in all_components():
        spec = component_spec(default_pipe, comp.name)
        inputs = example_inputs(default_pipe, comp.name, batch=2, seed=3)
        assert list(inputs) == spec.input_names()
        for t in spec.inputs:
            assert inputs[t.name].dtype == np.dtype(t.dtype) and inputs[t.name].shape == t.concrete(2), comp.name
        again = comp.example_inputs(default_pipe, batch=2, seed=3)
        assert all(np.array_equal(again[k], v) for k, v in inputs.items())  # seeded: the same rows every time
        out = run_torch(export_module(default_pipe, comp.name), spec, inputs)
        assert out.shape == spec.outputs[0].concrete(2) and np.isfinite(out).all(), comp.name
    ids = example_inputs(default_pipe, "text_encoder", batch=4)["input_ids"]
    assert ids.min() >= 0 and ids.max() < len(default_pipe.tokenizer)


def test_vae_encoder_is_one_component_that_exports_and_verifies_against_torch(default_pipe, tmp_path):
    from edgekit.onnx_export import export_onnx, verify_onnx

    encoder = get_component("vae_encoder")
    spec = encoder.spec(default_pipe)
    assert spec.input_names() == ["sample"] and spec.output_names() == ["latent_sample"]
    # its output is what the VAE decoder takes
    assert spec.outputs[0].shape == component_spec(default_pipe, "vae_decoder").inputs[0].shape
    assert not encoder.in_every_bundle and not encoder.calibrated and encoder.latent_side == "output"
    image = example_inputs(default_pipe, "vae_encoder", batch=2)["sample"]
    assert -1.0 <= image.min() and image.max() <= 1.0  # an image in the pipeline's range
    path = tmp_path / "model.onnx"
    export_onnx(default_pipe, "vae_encoder", path)
    result = verify_onnx(default_pipe, "vae_encoder", path)
    assert result["rel_err"] < spec.fp32_tolerance and result["rows"] == 2
    # deterministic: the posterior's mean, the same latents the float VAE gives
    import torch

    with torch.no_grad():
        mean = default_pipe.vae.encode(torch.from_numpy(image)).latent_dist.mean.numpy()
    assert np.allclose(run_torch(encoder.export_module(default_pipe), spec, {"sample": image}), mean, atol=1e-6)


def test_calibration_hooks_record_what_the_pipeline_feeds(default_pipe):
    from edgekit.pipeline import generate

    rows = {name: [] for name in CALIB_COMPONENTS}
    state = {"order": 0, "step": 0, "prompt_batch": 0, "cfg": True, "guidance_dim": None, "uncond_calls": 0}
    with ExitStack() as stack:
        for name in CALIB_COMPONENTS:
            stack.enter_context(get_component(name).recording(default_pipe, rows[name].append, state))
        generate(default_pipe, ["a handwritten digit three"], [0], 2, 4.0)
    assert "decode" not in vars(default_pipe.vae)  # the decode wrapper is gone after the block
    assert len(rows["text_encoder"]) == 2 and len(rows["unet"]) == 2 * 2 and len(rows["vae_decoder"]) == 1
    for name, captured in rows.items():
        spec = component_spec(default_pipe, name)
        for t in spec.inputs:
            assert list(captured[0][t.name].shape) == [int(d) for d in t.shape[1:]], (name, t.name)
    orders = [int(r["order"]) for name in CALIB_COMPONENTS for r in rows[name]]
    assert sorted(orders) == list(range(1, len(orders) + 1))  # one running count over every component
    assert [int(r["is_uncond"]) for r in rows["unet"]] == [1, 0, 1, 0]  # the CFG pair as the pipeline builds it
    with pytest.raises(NotImplementedError, match="vae_encoder"):
        with get_component("vae_encoder").recording(default_pipe, print, state):
            pass


def test_stand_ins_take_the_pipeline_modules_place(default_pipe):
    """What a quantized directory installs: the component's own stand-in, fed by input name."""
    import copy

    import torch

    pipe = copy.copy(default_pipe)
    pipe.__dict__ = dict(default_pipe.__dict__)  # a shallow copy: installing never touches the shared pipe
    for name in CALIB_COMPONENTS:
        comp = get_component(name)
        module = comp.export_module(default_pipe)
        spec = comp.spec(default_pipe)
        seen = []

        def run(feeds, module=module, spec=spec, seen=seen):
            seen.append(sorted(feeds))
            return run_torch(module, spec, feeds)

        comp.install(pipe, comp.standin(pipe, run, spec.input_names(), f"{name} (test)"))
        assert getattr(default_pipe, comp.pipeline_attr) is not getattr(pipe, comp.pipeline_attr)
        inputs = comp.example_inputs(default_pipe, batch=1)
        if name == "vae_decoder":
            out = pipe.vae.decode(torch.from_numpy(inputs["latent_sample"]), return_dict=False)[0]
        elif name == "unet":
            out = pipe.unet(*(torch.from_numpy(inputs[n]) for n in spec.input_names()), return_dict=False)[0]
        else:
            out = pipe.text_encoder(torch.from_numpy(inputs["input_ids"]))[0]
        assert np.allclose(np.asarray(out), run_torch(module, spec, inputs), atol=1e-6)
        assert seen == [sorted(spec.input_names())]


def test_one_registry_pattern_for_every_extension_point():
    import importlib

    import edgekit.components as components_package
    from edgekit.constants import FORMATS
    from edgekit.quantize import QUANTIZERS
    from edgekit.runtime.runners import RUNNERS
    from edgekit.targets import TARGETS

    # the components: one module per component in edgekit/components/ (beside base.py), each naming itself
    folder = Path(components_package.__file__).parent
    modules = sorted(p.stem for p in folder.glob("*.py") if p.stem not in {"__init__", "base"})
    assert sorted(COMPONENTS.names()) == modules
    assert [importlib.import_module(f"edgekit.components.{m}").COMPONENT.name for m in modules] == modules
    for registry, names in ((TARGETS, ["ort-web", "tflite", "coreml", "onnx"]),
                            (QUANTIZERS, ["ort-static", "fx", "nncf"]),
                            (RUNNERS, list(FORMATS)),
                            (COMPONENTS, ["text_encoder", "unet", "vae_decoder", "vae_encoder", "unet_full",
                                          "unet_shallow"])):
        assert isinstance(registry, Registry) and registry.names() == names
    assert FORMATS == ("onnx", "tflite", "mlpackage")  # one runner per format the manifest accepts
    registry = Registry("widget", "WIDGET")
    registry.add("a", "edgekit.width")  # a module name: loaded on first use, its WIDGET is the entry
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("a", "edgekit.fsutil")
    with pytest.raises(InputError, match="unknown widget 'b'"):
        registry.get("b")
    with pytest.raises(AttributeError):
        registry.get("a")  # edgekit.width defines no WIDGET


def test_targets_own_their_format_and_their_components():
    from edgekit.runtime.runners import CoreMLRunner, LiteRTRunner, OrtRunner, runner_class
    from edgekit.targets import get_target

    assert [c.name for c in get_target("onnx").components()] == COMPONENTS.names()[:4]  # it ships the VAE encoder
    assert [c.name for c in get_target("ort-web").components()] == list(BUNDLE_COMPONENTS)
    assert get_target("ort-web").runner_class() is OrtRunner is runner_class("onnx")
    assert get_target("tflite").runner_class() is LiteRTRunner
    assert get_target("coreml").runner_class() is CoreMLRunner
    assert get_target("ort-web").runtime_missing() is None
    on_mac = platform.system() == "Darwin"
    assert (get_target("coreml").runtime_missing() is None) == on_mac
    with pytest.raises(InputError, match="unknown runner format 'pt'"):
        runner_class("pt")
    with pytest.raises(InputError, match="did you mean 'tflite'"):
        get_target("tflight")
