"""prune/slim --calib: the cheap refusals (flags, --out, slim's memory line) come before the model's digest,
which reads every weight byte (seconds at SD-1.5's 3.4 GB); the digest still refuses another model's rows
before any loading."""
import pytest

from edgekit.fsutil import sha256_tree
from cli_checks import one_line


def _forbid(monkeypatch, module, name):
    def forbidden(*_args, **_kwargs):
        raise AssertionError(f"{module.__name__}.{name} ran before the refusal")

    monkeypatch.setattr(module, name, forbidden)


@pytest.fixture
def no_digest_no_loading(monkeypatch):
    import edgekit.fsutil
    import edgekit.modeldir
    import edgekit.pipeline

    edgekit.modeldir.forget()  # no digest left from an earlier test: the model must be hashed afresh to be refused
    _forbid(monkeypatch, edgekit.fsutil, "sha256_tree")  # ModelDir.sha256, the one digest of the model
    _forbid(monkeypatch, edgekit.pipeline, "load_pipeline")


def test_slim_memory_refusal_comes_before_the_calib_digest(run_cli, default_model, small_calib, tmp_path,
                                                           monkeypatch, no_digest_no_loading):
    from edgekit.quantize import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 2**20)
    out = tmp_path / "slim"
    code, _, err = run_cli("slim", "--model", default_model, "--calib", small_calib, "--out", out)
    assert code == 2
    line = one_line(err)
    assert line.startswith(f"edgekit slim: error: --model {default_model}: needs about ")
    assert not out.exists()


def test_slim_bad_out_comes_before_the_calib_digest(run_cli, default_model, small_calib, tmp_path,
                                                    no_digest_no_loading):
    (tmp_path / "file.txt").write_text("keep")
    code, _, err = run_cli("slim", "--model", default_model, "--calib", small_calib, "--out", tmp_path / "file.txt")
    assert code == 2 and "exists" in one_line(err)
    assert (tmp_path / "file.txt").read_text() == "keep"


@pytest.mark.parametrize("command", [["slim"], ["prune", "--ratio", "0.5"]])
def test_calib_of_another_model_is_refused_by_its_digest_before_loading(run_cli, model_copy, small_calib, tmp_path,
                                                                        monkeypatch, command):
    """The copy differs from the model the rows were captured from by one file: shapes and configs match, only
    the digest tells them apart. The memory check passes first (it ran: the digest comes after it)."""
    import edgekit.compress.slim
    import edgekit.pipeline
    from edgekit.quantize import memory

    (model_copy / "unet" / "notes.txt").write_text("changed")
    ran = []
    check_memory = edgekit.compress.slim.check_memory
    monkeypatch.setattr(edgekit.compress.slim, "check_memory", lambda *a: ran.append("memory") or check_memory(*a))
    monkeypatch.setattr(memory, "available_bytes", lambda: 2**50)
    _forbid(monkeypatch, edgekit.pipeline, "load_pipeline")
    before = sha256_tree(small_calib)
    out = tmp_path / "out"
    code, _, err = run_cli(*command, "--model", model_copy, "--calib", small_calib, "--out", out)
    assert code == 2
    line = one_line(err)
    assert f"--calib {small_calib.resolve()}: captured from another model" in line
    assert ran == (["memory"] if command == ["slim"] else [])
    assert not out.exists() and sha256_tree(small_calib) == before
