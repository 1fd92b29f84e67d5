"""Hostile inputs, second round (issue 27, items 3-7, 9 and 12): unbounded counts, special files, deep or
huge JSON/YAML, model directories whose configs lie, broken Unicode, profiles outside what the exporter
takes, and imported device names with terminal escapes.

Every case is a reproduction from the issue, replayed: exit code 2, exactly one stderr line naming the flag
or file (and field) and the limit or what was expected, no traceback, every input's sha256 unchanged and
nothing written at --out. Each is refused before any model loads, so the whole file runs in seconds; the
cases that used to hang (a FIFO, /dev/zero) run the console script under a timeout, so a regression fails
instead of blocking the suite."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.fsutil import sha256_file, sha256_tree
from cli_checks import one_line

EXE = Path(sys.executable).parent / "edgekit"
TRACE_SAMPLE = {"t": 0.0, "battery_level": 0.5, "charging": False, "low_power": False, "thermal": "nominal"}


def _digest(path: Path) -> str:
    return sha256_tree(path) if path.is_dir() else sha256_file(path)


def _check(code, err, needles, inputs=(), out=None, before=None):
    """Exit 2, one stderr line holding every needle, no traceback, inputs unchanged, nothing at ``out``."""
    assert code == 2, err
    line = one_line(err, *needles)
    for path, digest in (before or {}).items():
        assert _digest(path) == digest, f"{path} changed"
    if out is not None:
        assert not Path(out).exists(), f"{out} was written"
        assert not list(Path(out).parent.glob(f".{Path(out).name}.partial-*")), "a partial output was left"
    return line


def _console(cwd, *argv, timeout=60):
    """The installed console script (what a user runs); a hang fails the test at ``timeout``."""
    proc = subprocess.run([os.fsencode(a) if isinstance(a, bytes) else str(a) for a in (str(EXE), *argv)],
                          capture_output=True, cwd=cwd, timeout=timeout)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def lying_model(default_model: Path, root: Path, edit) -> Path:
    """A model directory that lies: the default model's small files copied, its weights hard-linked (never
    written: the edits touch JSON and text only), then ``edit(directory)``."""
    model = root / "model"

    def link_or_copy(src, dst):
        if src.endswith((".safetensors", ".bin")):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(default_model, model, copy_function=link_or_copy)
    edit(model)
    return model


def set_json(relative: str, **changes):
    def edit(model: Path) -> None:
        path = model / relative
        data = json.loads(path.read_text())
        for key, value in changes.items():
            if value is _DELETE:
                data.pop(key, None)
            else:
                data[key] = value
        path.write_text(json.dumps(data))
    return edit


_DELETE = object()
SCHED = "scheduler/scheduler_config.json"


def _extra_token(model: Path) -> None:
    """A tokenizer that can emit id 650, where the text encoder has embeddings for ids 0..598."""
    path = model / "tokenizer" / "tokenizer.json"
    data = json.loads(path.read_text())
    data["added_tokens"].append({"id": 650, "content": "<extra>", "single_word": False, "lstrip": False,
                                 "rstrip": False, "normalized": False, "special": True})
    path.write_text(json.dumps(data))


def _write(relative: str, text: str):
    def edit(model: Path) -> None:
        (model / relative).write_text(text)
    return edit


# (edit, the file it names, what the line must say): item 4 of the issue and its neighbours
LYING_MODELS = [
    pytest.param(set_json(SCHED, num_train_timesteps=100_000_000), SCHED,
                 "num_train_timesteps 100000000: expected a whole number from 1 to 10,000", id="timesteps-huge"),
    pytest.param(set_json(SCHED, num_train_timesteps=-5), SCHED, "num_train_timesteps -5: expected",
                 id="timesteps-neg"),
    pytest.param(set_json(SCHED, beta_schedule="bogus"), SCHED, "beta_schedule 'bogus': expected one of linear",
                 id="beta-bogus"),
    pytest.param(set_json(SCHED, prediction_type="banana"), SCHED,
                 "prediction_type 'banana': expected one of epsilon, v_prediction, sample", id="prediction-banana"),
    pytest.param(set_json(SCHED, _class_name="FlowMatchEulerDiscreteScheduler"), SCHED,
                 "_class_name 'FlowMatchEulerDiscreteScheduler' is not a scheduler edgekit supports; supported: DDIM",
                 id="flow-match-scheduler"),
    pytest.param(set_json("model_index.json", image_encoder=None), "model_index.json",
                 "'image_encoder' null: expected [library, class], or [null, null]", id="image-encoder-null"),
    pytest.param(set_json("unet/config.json", sample_size=0), "unet/config.json",
                 "sample_size 0: expected a latent side from 1 to 1,024", id="sample-size-0"),
    pytest.param(set_json("unet/config.json", sample_size=100_000), "unet/config.json",
                 "sample_size 100000: expected a latent side from 1 to 1,024", id="sample-size-100000"),
    pytest.param(set_json("tokenizer/tokenizer_config.json", model_max_length=77), "tokenizer/tokenizer_config.json",
                 "model_max_length 77: expected a whole number up to the text encoder's 16 positions",
                 id="max-length-77"),
    pytest.param(_extra_token, "tokenizer/tokenizer.json",
                 "token id 650 is beyond the text encoder's vocabulary", id="token-beyond-vocab"),
    pytest.param(set_json("text_encoder/config.json", vocab_size=10), "tokenizer/tokenizer.json",
                 "vocab_size 10, ids 0 to 9", id="vocab-size-10"),
    pytest.param(_write("model_index.json", "[" * 200_000 + "]" * 200_000), "model_index.json",
                 "nests deeper than 64 levels", id="model-index-deep"),
    pytest.param(_write("unet/config.json", '{"sample_size": ' + "9" * 5000 + "}"), "unet/config.json",
                 "an integer of 5000 digits, over the 64-digit limit", id="config-5000-digits"),
    pytest.param(_write("scheduler/scheduler_config.json", '{"_class_name": "DDIMScheduler", "beta_start": ' +
                        "1" * 400 + "}"), SCHED, "an integer of 400 digits", id="config-400-digits"),
]


@pytest.mark.parametrize("edit,relative,expectation", LYING_MODELS)
def test_a_model_directory_that_lies_is_refused_before_it_loads(default_model, tmp_path, run_cli, edit, relative,
                                                                 expectation):
    model = lying_model(default_model, tmp_path, edit)
    before = {model: sha256_tree(model)}
    out = tmp_path / "x.png"
    code, _, err = run_cli("generate", "--model", model, "--prompt", "a handwritten digit seven", "--steps", "4",
                           "--out", out)
    _check(code, err, [str(model / relative), expectation], out=out, before=before)


def test_bare_null_optional_component_named_and_bracketed_nulls_accepted(default_model, tmp_path):
    """diffusers' own form for a component left out is [null, null] (the embedded model has three): accepted."""
    from edgekit.pipeline import check_model_dir

    index = json.loads((default_model / "model_index.json").read_text())
    assert index["image_encoder"] == [None, None]
    assert check_model_dir(default_model) == default_model.resolve()


def test_symlinked_calibration_prompts_outside_the_model_are_refused(default_model, tmp_path, run_cli):
    """Item 12: edgekit_defaults.json names calibration_prompts.txt, a symlink to /etc/hostname."""
    def link_out(model):
        (model / "calibration_prompts.txt").unlink()
        (model / "calibration_prompts.txt").symlink_to(outside)

    outside = tmp_path / "secret.txt"
    outside.write_text("not a prompt\n")
    model = lying_model(default_model, tmp_path, link_out)
    before = {outside: sha256_file(outside)}
    out = tmp_path / "calib"
    code, _, err = run_cli("calibrate", "--model", model, "--out", out)
    _check(code, err, [str(model / "calibration_prompts.txt"), "a link to", str(outside), "outside the model"],
           out=out, before=before)


def test_a_weights_symlink_out_of_the_model_is_refused(default_model, tmp_path, run_cli):
    def link_out(model):
        weights = model / "vae" / "diffusion_pytorch_model.safetensors"
        weights.unlink()
        weights.symlink_to(default_model / "vae" / "diffusion_pytorch_model.safetensors")

    model = lying_model(default_model, tmp_path, link_out)
    out = tmp_path / "x.png"
    code, _, err = run_cli("generate", "--model", model, "--prompt", "x", "--out", out)
    _check(code, err, ["vae/diffusion_pytorch_model.safetensors", "outside the model directory"], out=out)


def test_hub_cache_snapshot_links_into_its_blobs_are_accepted(default_model, tmp_path):
    """The Hugging Face cache keeps a snapshot's files as links into the repository's blobs/: not a lie."""
    from edgekit.pipeline import check_model_dir

    repo = tmp_path / "models--org--tiny"
    snapshot = repo / "snapshots" / "abc123"
    shutil.copytree(default_model, snapshot, copy_function=os.link)
    blob = repo / "blobs" / "unet-config"
    blob.parent.mkdir()
    config = snapshot / "unet" / "config.json"
    shutil.copy2(config, blob)
    config.unlink()
    config.symlink_to(os.path.relpath(blob, config.parent))
    assert check_model_dir(snapshot) == snapshot.resolve()


# --- item 3: counts bounded before work, refused while the command line is parsed ---------------------------

STEPS_400 = ",".join(str(s) for s in range(1, 401))
LIMIT_CASES = [
    pytest.param(["calibrate", "--samples", "1000000000", "--out", "{out}"],
                 ["--samples", "over the limit of 100,000 images"],
                 id="calibrate-samples"),
    pytest.param(["eval", "--samples", "1000000000"], ["--samples", "over the limit of 100,000 images"],
                 id="eval-samples"),
    pytest.param(["eval", "--samples-per-digit", "100000000"], ["over the limit of 100,000 images"],
                 id="eval-samples-per-digit"),
    pytest.param(["bench", "{out}", "--samples", "1000000000"], ["--samples", "over the limit of 100,000"],
                 id="bench-samples"),
    pytest.param(["bench", "{out}", "--repeats", "1000000000"], ["--repeats", "over the limit of 1,000 timing rounds"],
                 id="bench-repeats"),
    pytest.param(["bench", "{out}", "--threads", "200"], ["--threads", "more threads than the"], id="bench-threads"),
    pytest.param(["export", "--target", "ort-web", "--steps", STEPS_400, "--out", "{out}"],
                 ["--steps", "400 step counts, over the limit of 64"], id="export-steps-1-to-400"),
    pytest.param(["export", "--target", "ort-web", "--steps", "1000,999,998,997,996", "--out", "{out}"],
                 ["--steps", "coefficients", "over the limit of 1,048,576"], id="export-steps-tables"),
    pytest.param(["generate", "--prompt", "x", "--steps", "100000000", "--out", "{out}.png"],
                 ["--steps", "over the limit of 10,000 sampling steps"], id="generate-steps"),
    pytest.param(["package", "--repeats", "1000000000", "--out", "{out}"], ["--repeats", "over the limit"],
                 id="package-repeats"),
    pytest.param(["package", "--calib-samples", "1000000000", "--out", "{out}"], ["--calib-samples", "over the limit"],
                 id="package-calib-samples"),
]


@pytest.mark.parametrize("argv,needles", LIMIT_CASES)
def test_counts_over_their_limit_are_refused_before_any_work(tmp_path, run_cli, argv, needles):
    out = tmp_path / "out"
    code, _, err = run_cli(*[a.replace("{out}", str(out)) for a in argv])
    _check(code, err, needles, out=out)


def test_library_configs_bound_their_counts(tmp_path):
    """The same limits hold for a caller of the library and a package config file, not only the flags."""
    from edgekit.calibration import CalibrationConfig
    from edgekit.errors import InputError
    from edgekit.package import PackageConfig
    from edgekit.runtime.bench import BenchConfig

    with pytest.raises(InputError, match="samples 1000000000: over the limit of 100,000 images"):
        CalibrationConfig(prompts=("x",), samples=10**9)
    with pytest.raises(InputError, match="repeats 1000000000: over the limit of 1,000"):
        BenchConfig(repeats=10**9)
    with pytest.raises(InputError, match="threads 100000: more threads than the"):
        BenchConfig(threads=100_000)
    with pytest.raises(InputError, match="samples 1000000000: over the limit"):
        PackageConfig(samples=10**9)
    with pytest.raises(InputError, match="400 step counts, over the limit of 64"):
        PackageConfig(steps=tuple(range(1, 401)))
    config = tmp_path / "package.yaml"
    config.write_text("repeats: 1000000000\n")
    with pytest.raises(InputError, match="repeats 1000000000: over the limit"):
        PackageConfig.from_yaml(config)


def test_scheduler_tables_are_bounded_before_diffusers_builds_them():
    """num_train_timesteps 10**8 reached diffusers (22 GB, killed by the kernel): now refused from the dict."""
    from edgekit.errors import InputError
    from edgekit.pipeline import check_scheduler_steps

    config = json.loads((Path(__file__).parent.parent / "edgekit/zoo/tiny_digits/pipeline" / SCHED).read_text())
    with pytest.raises(InputError, match="num_train_timesteps 100000000: expected a whole number from 1 to 10,000"):
        check_scheduler_steps({**config, "num_train_timesteps": 10**8}, 4)


# --- item 5: special files refused by type, never opened for reading ------------------------------------------

SPECIAL = {
    "fifo": lambda tmp_path, fifo: fifo,
    "dev-zero": lambda tmp_path, fifo: Path("/dev/zero"),
    "directory": lambda tmp_path, fifo: tmp_path,
}
KIND = {"fifo": "a FIFO (named pipe), not a regular file", "dev-zero": "a character device, not a regular file",
        "directory": "a directory, not a regular file"}


def _simulate_manifest(tmp_path: Path) -> Path:
    """A hand-written manifest.json with a table and a policy, as `policy simulate` takes one."""
    from policy_bundles import made_up_row

    from edgekit.policy_inputs import PolicyConfig

    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"table": [made_up_row(1.0, 4, 100.0, 30.0, 1.0)],
                                "policy": PolicyConfig.default().to_dict()}))
    return path


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
@pytest.mark.parametrize("command", ["simulate-trace", "package-config", "calibrate-prompts", "export-profile"])
def test_special_files_are_refused_by_type_without_blocking(tmp_path, fifo, kind, command):
    special = SPECIAL[kind](tmp_path, fifo)
    out = tmp_path / "out"
    argv, flag = {
        "simulate-trace": (["policy", "simulate", "--bundle", _simulate_manifest(tmp_path), "--trace", special],
                           "--trace"),
        "package-config": (["package", "--config", special, "--out", out], "--config"),
        "calibrate-prompts": (["calibrate", "--prompts", special, "--out", out], "--prompts"),
        "export-profile": (["export", "--target", "ort-web", "--profile", special, "--out", out], "--profile"),
    }[command]
    code, _, err = _console(tmp_path, *argv, timeout=60)
    _check(code, err, [f"{flag} {special}", KIND[kind]], out=out)


def test_readers_refuse_special_files_in_the_library(tmp_path, fifo):
    """Every bounded reader, called directly: a FIFO with no writer would block open() or read() forever."""
    from edgekit.bundle import read_manifest
    from edgekit.errors import InputError
    from edgekit.policy import load_trace
    from edgekit.runtime.bench import import_rows

    manifest_dir = tmp_path / "bundle"
    manifest_dir.mkdir()
    os.mkfifo(manifest_dir / "manifest.json")
    for call in (lambda: load_trace(fifo), lambda: import_rows(fifo, {}),
                 lambda: read_manifest(manifest_dir / "manifest.json", checked=False)):
        with pytest.raises(InputError, match="a FIFO"):
            call()
    with pytest.raises(InputError, match="a character device"):
        load_trace(Path("/dev/zero"))


# --- item 6: nesting and number sizes in every JSON/YAML reader -----------------------------------------------

DEEP_JSON = "[" * 200_000 + "]" * 200_000


@pytest.mark.parametrize("content,needle", [
    pytest.param(DEEP_JSON, "nests deeper than 64 levels", id="deep"),
    pytest.param("[" + "9" * 5000 + "]", "an integer of 5000 digits, over the 64-digit limit", id="5000-digits"),
    pytest.param(json.dumps([TRACE_SAMPLE]).replace('"t": 0.0', '"t": ' + "9" * 400), "an integer of 400 digits",
                 id="t-400-digits"),
    pytest.param(json.dumps([TRACE_SAMPLE]).replace('"nominal"', '"\\ud800"'), "lone UTF-16 surrogate",
                 id="lone-surrogate"),
])
def test_trace_nesting_and_numbers_are_bounded(tmp_path, run_cli, content, needle):
    trace = tmp_path / "trace.json"
    trace.write_text(content)
    before = {trace: sha256_file(trace)}
    code, _, err = run_cli("policy", "simulate", "--bundle", _simulate_manifest(tmp_path), "--trace", trace)
    _check(code, err, [f"--trace {trace}", needle], before=before)


def test_manifest_policy_and_yaml_nesting_and_numbers_are_bounded(tmp_path, run_cli):
    deep_manifest = tmp_path / "deep" / "manifest.json"
    deep_manifest.parent.mkdir()
    deep_manifest.write_text('{"table": ' + DEEP_JSON + "}")
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps([TRACE_SAMPLE]))
    code, _, err = run_cli("policy", "simulate", "--bundle", deep_manifest, "--trace", trace)
    _check(code, err, [str(deep_manifest), "nests deeper than 64 levels"])

    out = tmp_path / "out"
    config = tmp_path / "deep.yaml"
    config.write_text(DEEP_JSON)
    code, _, err = run_cli("package", "--config", config, "--out", out)
    _check(code, err, [f"--config {config}", "nests deeper than 64 levels"], out=out)
    config.write_text("repeats: " + "9" * 5000 + "\n")
    code, _, err = run_cli("package", "--config", config, "--out", out)
    _check(code, err, [f"--config {config}", "64 digits"], out=out)



@pytest.mark.parametrize("content,needle", [
    pytest.param('{"dwell_s": ' + "9" * 400 + "}", "an integer of 400 digits", id="400-digits"),
    pytest.param(DEEP_JSON, "nests deeper than 64 levels", id="deep"),
])
def test_policy_and_state_files_are_bounded(tmp_path, fifo, content, needle):
    """--policy (bench, package) and --state (policy generate) go through commands.common.read_json."""
    from edgekit.commands.common import error_line, read_json
    from edgekit.errors import InputError

    path = tmp_path / "policy.json"
    path.write_text(content)
    for param in ("policy", "state"):
        with pytest.raises(InputError) as caught:
            read_json(path, param)
        assert caught.value.param == param
        assert error_line(caught.value, {param: f"--{param}"}).startswith(f"--{param} {path}: ")
        assert needle in str(caught.value)
    with pytest.raises(InputError, match="a FIFO"):
        read_json(fifo, "policy")


def test_a_policy_number_past_the_float_range_is_one_error():
    """dwell_s of 400 digits reached math.isfinite: OverflowError. Refused as a number out of range."""
    from edgekit.errors import InputError
    from edgekit.policy_inputs import PolicyConfig

    data = PolicyConfig.default().to_dict()
    with pytest.raises(InputError, match=r"dwell_s: expected a finite number, got an integer of \d+ bits"):
        PolicyConfig.from_dict({**data, "dwell_s": 10**400}, "--policy p.json")


@pytest.mark.parametrize("content,needle", [
    pytest.param(DEEP_JSON, "nests deeper than 64 levels", id="deep"),
    pytest.param('[{"latency_ms": ' + "9" * 400 + "}]", "an integer of 400 digits", id="latency-400-digits"),
    pytest.param("", "not JSON", id="empty"),
])
def test_import_table_nesting_and_numbers_are_bounded(tmp_path, content, needle):
    from edgekit.errors import InputError
    from edgekit.runtime.bench import import_rows

    table = tmp_path / "phone.json"
    table.write_text(content)
    with pytest.raises(InputError, match=needle):
        import_rows(table, {})


# --- item 12: imported device names bounded and printed without escapes -------------------------------------

def test_imported_device_names_are_bounded_and_stripped_of_escapes(tmp_path):
    from policy_bundles import made_up_row

    from edgekit.errors import InputError
    from edgekit.runtime.bench import import_rows

    table = tmp_path / "phone.json"
    table.write_text(json.dumps([made_up_row(1.0, 4, 100.0, 30.0, 1.0, device="x" * 10_000_000)]))
    with pytest.raises(InputError, match=r"\.device: expected a name of at most 200 characters, got a string of "
                                         r"10,000,000 characters"):
        import_rows(table, {})
    table.write_text(json.dumps([made_up_row(1.0, 4, 100.0, 30.0, 1.0, device="Pixel 8\x1b[2J\x1b]0;owned\x07\n")]))
    rows = import_rows(table, {})
    assert rows[0]["device"] == "Pixel 8[2J]0;owned"
    assert all(ord(ch) >= 32 for ch in rows[0]["device"])


# --- item 7: Unicode -----------------------------------------------------------------------------------------

def test_a_prompt_that_is_not_utf8_is_one_line(tmp_path):
    """Bytes that are not UTF-8 on the command line reach Python as a lone surrogate; the tokenizer raised a
    TypeError traceback on it."""
    out = tmp_path / "x.png"
    code, _, err = _console(tmp_path, "generate", "--prompt", b"seven \xff", "--out", out)
    _check(code, err, ["--prompt", "not valid UTF-8 text"], out=out)


def test_a_prompts_file_with_a_lone_surrogate_escape_is_one_line(tmp_path, run_cli):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text('a handwritten digit one\n"\\ud800 seven"\n')
    before = {prompts: sha256_file(prompts)}
    out = tmp_path / "calib"
    code, _, err = run_cli("calibrate", "--prompts", prompts, "--out", out)
    _check(code, err, [f"--prompts {prompts}", "line 2", "lone UTF-16 surrogate"], out=out, before=before)


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path):
    from edgekit.calibration import read_prompts

    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"\xef\xbb\xbf# a comment\na handwritten digit seven\n")
    assert read_prompts(prompts) == ["a handwritten digit seven"]
    trace = tmp_path / "trace.json"
    trace.write_bytes(b"\xef\xbb\xbf" + json.dumps([TRACE_SAMPLE]).encode())
    from edgekit.policy import load_trace

    assert load_trace(trace)[0][0] == 0.0


# --- item 9: profiles ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line,needle", [
    pytest.param("opset: 7", "opset 7: expected 14..20", id="opset-7"),
    pytest.param("opset: 23", "opset 23: expected 14..20", id="opset-23"),
    pytest.param("tolerance:\n  fp32: .nan", "tolerance.fp32 nan: expected a finite relative error", id="tol-nan"),
    pytest.param("tolerance:\n  fp16: .inf", "tolerance.fp16 inf: expected a finite", id="tol-inf"),
    pytest.param("max_file_mb: 0.001", "max_file_mb 0.001: expected a finite number of at least 1", id="file-mb"),
    pytest.param("steps: [" + ", ".join(map(str, range(1, 401))) + "]", "400 step counts, over the limit of 64",
                 id="steps-400"),
])
def test_a_profile_outside_what_the_exporter_takes_is_refused_at_validation(tmp_path, run_cli, line, needle):
    from edgekit.profiles import profiles_dir

    stock = (profiles_dir() / "web-ort.yaml").read_text()
    key = line.split(":")[0]
    kept = [l for l in stock.splitlines() if not l.startswith(f"{key}:")]
    if key == "tolerance":  # drop the stock section's indented lines too
        kept, skipping = [], False
        for l in stock.splitlines():
            if l.startswith("tolerance:"):
                skipping = True
                continue
            if skipping and l.startswith((" ", "\t")):
                continue
            skipping = False
            kept.append(l)
    profile = tmp_path / "profile.yaml"
    profile.write_text("\n".join(kept) + "\n" + line + "\n")
    before = {profile: sha256_file(profile)}
    out = tmp_path / "out"
    code, _, err = run_cli("export", "--target", "ort-web", "--profile", profile, "--out", out)
    _check(code, err, [str(profile), needle], out=out, before=before)


def test_a_file_cap_below_one_tensor_is_refused_not_exceeded(tmp_path):
    """max_file_mb 0.001 exited 0 with 1.18 MB chunks: a cap a tensor cannot fit is now an error naming both."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from edgekit.errors import InputError
    from edgekit.targets.ort_web import split_external_data

    weight = numpy_helper.from_array(np.ones((600, 600), np.float32), "big_weight")  # 1.37 MiB
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "big_weight"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 600])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 600])], [weight])
    path = tmp_path / "model.onnx"
    onnx.save_model(helper.make_model(graph), str(path))
    with pytest.raises(InputError, match=r"tensor 'big_weight' holds 1\.37 MiB, over the profile's max_file_mb 1"):
        split_external_data(path, 2**20)
    assert [c["bytes"] for c in split_external_data(path, 2 * 2**20)] == [600 * 600 * 4]


def test_bench_prints_an_imported_device_name_without_its_escapes(tmp_path_factory, default_model, tmp_path, run_cli):
    """Item 12 through the command: a 10 MB device name is refused (manifest unchanged); one with terminal escape
    codes is imported and printed without them."""
    from policy_bundles import exported, made_up_row

    bundle = tmp_path / "bundle"
    shutil.copytree(exported(tmp_path_factory, default_model), bundle)
    table = tmp_path / "phone.json"
    table.write_text(json.dumps([made_up_row(1.0, 4, 100.0, 30.0, 1.0, device="x" * 10_000_000)]))
    before = {bundle: sha256_tree(bundle)}
    code, _, err = run_cli("bench", bundle, "--import-table", table)
    _check(code, err, [f"--import-table {table}", "expected a name of at most 200 characters"], before=before)
    table.write_text(json.dumps([made_up_row(1.0, 4, 100.0, 30.0, 1.0, device="Pixel 8\x1b[2J\x1b]0;owned\x07")]))
    code, out, err = run_cli("bench", bundle, "--import-table", table)
    assert code == 0, err
    assert "\x1b" not in out and "\x07" not in out and "on Pixel 8[2J]0;owned" in out
    assert json.loads((bundle / "manifest.json").read_text())["table"][0]["device"] == "Pixel 8[2J]0;owned"


def test_quality_images_that_cannot_fit_in_memory_are_refused_first(default_model, monkeypatch):
    """The images of a quality number are held at once: their size (from the configs) against the memory
    available is checked before any model loads. The default model draws 32x32 images."""
    import psutil

    from edgekit.errors import InputError
    from edgekit.quality.evaluator import ModelQuality, check_image_memory, image_side

    assert image_side(default_model) == 32
    check_image_memory(100_000, default_model, available=2 * 100_000 * 32 * 32 * 3 * 4)  # fits exactly
    available = psutil.virtual_memory()._replace(available=2**30)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: available)
    with pytest.raises(InputError, match=r"samples 100000: its images need 2\.3 GiB in memory \(2 copies of 100,000 "
                                         r"32x32 float32 RGB images\), more than the 1\.0 GiB available"):
        ModelQuality(default_model, 100_000)
