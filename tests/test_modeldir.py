"""edgekit.modeldir: a pipeline directory is checked once, each JSON file read once and the model hashed once per
process; a directory rewritten in place gets fresh answers; the scheduler is the class diffusers builds."""
import json
import os

import pytest

from edgekit.errors import InputError, ModelFormatError
from edgekit.modeldir import ModelDir


def count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_a_directory_is_checked_read_and_hashed_once(model_copy, monkeypatch):
    from edgekit import fsutil, model_checks, pipeline, safe_read

    checks = count_calls(monkeypatch, model_checks, "check_layout")
    reads = count_calls(monkeypatch, safe_read, "read_json")
    hashes = count_calls(monkeypatch, fsutil, "sha256_tree")
    first = ModelDir.open(model_copy)
    read_once = len(reads)
    assert len(checks) == 1 and read_once >= 5  # model_index.json, the configs, the tokenizer files
    for _ in range(3):  # what the stages of one run ask, each through its own entry point
        assert pipeline.check_model_dir(model_copy) == model_copy.resolve()
        assert ModelDir.of(str(model_copy)) is first
        assert pipeline.sampling_defaults(model_copy) == first.sampling_defaults
        assert pipeline.scheduler_config(model_copy)["_class_name"] == "DPMSolverMultistepScheduler"
        ModelDir.of(first).unet_layout, first.config("unet"), first.config("vae")
        assert ModelDir.of(model_copy).sha256 == first.sha256
    assert len(checks) == 1
    assert len(reads) == read_once + 1  # edgekit_defaults.json, the one file the checks do not parse
    assert [call[0] for call in hashes] == [model_copy.resolve()]
    assert first.sha256 == fsutil.sha256_tree(model_copy)


def test_a_directory_rewritten_in_place_gets_fresh_answers(model_copy):
    before = ModelDir.open(model_copy)
    assert before.sampling_defaults.guidance_scale == 2.0
    digest = before.sha256
    defaults = model_copy / "edgekit_defaults.json"
    data = json.loads(defaults.read_text())
    defaults.write_text(json.dumps({**data, "guidance_scale": 3.5}))
    after = ModelDir.of(before)
    assert after is not before and after.sampling_defaults.guidance_scale == 3.5 and after.sha256 != digest
    config = model_copy / "unet" / "config.json"
    unet = json.loads(config.read_text())
    config.write_text(json.dumps({**unet, "sample_size": 5000}))  # now the checks refuse it
    with pytest.raises(ModelFormatError, match="sample_size 5000"):
        ModelDir.open(model_copy)


def test_answers_are_copies_a_caller_may_edit(model_copy):
    model = ModelDir.open(model_copy)
    model.config("unet")["in_channels"] = 99
    model.model_index.pop("unet")
    assert model.config("unet")["in_channels"] == 4 and "unet" in model.model_index
    model.scheduler_config["_class_name"] = "PNDMScheduler"
    model.sampling_defaults  # cached, and frozen
    assert model.scheduler_config["_class_name"] == "DPMSolverMultistepScheduler"
    assert model.config_path("scheduler").name == "scheduler_config.json"
    assert model.config("scheduler")["num_train_timesteps"] == 1000


def test_the_scheduler_is_the_class_model_index_names_as_diffusers_builds_it(model_copy):
    from edgekit.pipeline import load_pipeline

    index = json.loads((model_copy / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", "EulerDiscreteScheduler"]
    (model_copy / "model_index.json").write_text(json.dumps(index))
    saved = json.loads((model_copy / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "DPMSolverMultistepScheduler"  # the class that saved the config
    model = ModelDir.open(model_copy)
    assert model.scheduler_class == "EulerDiscreteScheduler"
    assert model.scheduler_config["_class_name"] == "EulerDiscreteScheduler"
    assert type(model.scheduler()).__name__ == "EulerDiscreteScheduler"
    assert type(load_pipeline(model).scheduler).__name__ == "EulerDiscreteScheduler"  # diffusers agrees


def test_errors_name_the_parameter_and_what_is_wrong(tmp_path, model_copy):
    with pytest.raises(InputError, match="reference_model") as missing:
        ModelDir.open(tmp_path / "nowhere", param="reference_model")
    assert "no such directory" in str(missing.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="model_index.json missing"):
        ModelDir.of(tmp_path / "empty")
    os.remove(model_copy / "vae" / "config.json")
    with pytest.raises(ModelFormatError, match="vae's configuration"):
        ModelDir.open(model_copy)


def test_the_shared_instances_are_bounded(tmp_path):
    from edgekit import modeldir

    for i in range(modeldir.CACHED_DIRS + 5):
        (tmp_path / str(i)).mkdir()
        ModelDir.unchecked(tmp_path / str(i))
    assert len(modeldir._cache) == modeldir.CACHED_DIRS
    assert (tmp_path / str(modeldir.CACHED_DIRS + 4)).resolve() in modeldir._cache  # the newest kept
    assert (tmp_path / "0").resolve() not in modeldir._cache


def test_a_config_linked_out_of_the_model_directory_is_refused(model_copy, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text((model_copy / "vae" / "config.json").read_text())
    os.remove(model_copy / "vae" / "config.json")
    os.symlink(outside, model_copy / "vae" / "config.json")
    with pytest.raises(ModelFormatError, match="outside the model directory"):
        ModelDir.open(model_copy)
