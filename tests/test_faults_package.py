"""`edgekit package` under faults: a --out it does not own, damaged earlier output, Ctrl-C, an unwritable --out,
a full disk, leftovers of killed runs. Each case checks the exit code, the one-line message and that nothing
the user owns or a finished stage wrote is lost or half-written."""
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgekit.fsutil import sha256_file
from helpers import FAST
from cli_checks import one_line

TARGET = ("--targets", "ort-web")


def _files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _partials(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if ".partial-" in p.name]


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: no process has this id now
    return child.pid


def _stage(summary: dict, name: str) -> dict:
    return next(r for r in summary["stages"] if r["stage"] == name)


# -- 1. what is edgekit's output -----------------------------------------------------------------------------

@pytest.mark.parametrize("force", [False, True])
def test_a_directory_edgekit_did_not_write_is_refused_and_left_byte_identical(run_cli, default_model, tmp_path,
                                                                              force):
    app = tmp_path / "app"
    (app / "plots").mkdir(parents=True)
    (app / "package.json").write_text('{"name":"a"}\n')
    (app / "report.md").write_text("notes\n")
    (app / "plots" / "mine.png").touch()
    before = _files(app)
    code, _, err = run_cli("package", "--model", default_model, "--targets", "ort-web", "--widths", "1.0",
                           "--out", app, *(["--force"] if force else []))
    assert code == 2
    line = one_line(err)
    if force:  # --force never overwrites what edgekit did not write
        assert "package.json, report.md, plots" in line and "did not write" in line
    else:
        assert "not an edgekit package output" in line and "--force" in line
    assert _files(app) == before and sorted(p.name for p in app.iterdir()) == ["package.json", "plots", "report.md"]


def test_a_directory_holding_only_stages_is_not_adopted(run_cli, default_model, tmp_path):
    out = tmp_path / "out"
    (out / "stages").mkdir(parents=True)
    (out / "stages" / "calib-w1.00.json").write_text("{}")
    code, _, err = run_cli("package", "--model", default_model, *TARGET, "--out", out)
    assert code == 2 and "not an edgekit package output" in one_line(err)
    assert (out / "stages" / "calib-w1.00.json").read_text() == "{}"


def test_a_marker_that_is_not_edgekits_is_refused(run_cli, package_copy, default_model):
    from edgekit.package import MARKER

    (package_copy / MARKER).write_text(json.dumps({"format": "edgekit-package/1", "entries": ["../elsewhere"]}))
    before = _files(package_copy)
    code, _, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", package_copy, "--force")
    assert code == 2 and MARKER in one_line(err)
    assert _files(package_copy) == before


def _interrupt_first_stage(monkeypatch):
    import edgekit.calibration

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(edgekit.calibration, "capture", interrupted)


def test_force_removes_only_what_edgekit_wrote(run_cli, package_copy, default_model, monkeypatch):
    from edgekit.package import MARKER

    (package_copy / "notes.txt").write_text("mine\n")
    entries = json.loads((package_copy / MARKER).read_text())["entries"]
    assert {"stages", "ort-web", "package.json", "report.md", "plots"} <= set(entries)
    _interrupt_first_stage(monkeypatch)  # stop the restarted run before it writes anything
    code, _, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", package_copy, "--force")
    assert code == 130 and "interrupted" in one_line(err)
    assert sorted(p.name for p in package_copy.iterdir()) == [MARKER, "notes.txt"]
    assert (package_copy / "notes.txt").read_text() == "mine\n"


def test_force_writes_beside_foreign_files_and_records_only_its_own(run_cli, default_model, tmp_path, monkeypatch):
    from edgekit.package import MARKER

    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    _interrupt_first_stage(monkeypatch)
    code, _, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", out, "--force")
    assert code == 130, err
    marker = json.loads((out / MARKER).read_text())
    assert marker["format"] == "edgekit-package/1" and marker["run_key"] and "notes.txt" not in marker["entries"]
    code, _, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", out, "--force")
    assert code == 130 and (out / "notes.txt").read_text() == "mine\n"


# -- 2. resume checks damage ---------------------------------------------------------------------------------

def test_damaged_bundle_files_rerun_their_stage_and_what_follows(run_cli, package_copy, default_model):
    from edgekit.runtime.verify import verify

    # the shipped bundle damaged (a file replaced, one removed): only the bundle stage, which wrote it, reruns
    model = package_copy / "ort-web/unet/w1.00/model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.unlink()  # a new file: the export stage's own copy (a hard link of the old one) stays as it was
    model.write_bytes(bytes(data))
    (package_copy / "ort-web/tokenizer/tokenizer_config.json").unlink()
    code, out, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", package_copy, "--json")
    assert code == 0, err
    summary = json.loads(out)
    shipped = _stage(summary, "bundle-ort-web")
    assert shipped["ran"] and shipped["reran"].startswith("damaged (file ort-web/")
    assert "tokenizer/tokenizer_config.json missing" in shipped["reran"] and "1 more" in shipped["reran"]
    assert [r["stage"] for r in summary["stages"] if r["ran"]] == ["bundle-ort-web"]
    assert json.loads((package_copy / "package.json").read_text())["stages"] == summary["stages"]
    verify(package_copy / "ort-web")
    manifest = json.loads((package_copy / "ort-web/manifest.json").read_text())
    assert manifest["table"], "the shipped manifest carries the bench stage's table"

    # the export's own output damaged in place (the shipped file is the same inode): export, bench, bundle rerun
    exported = package_copy / "stages/export-ort-web/unet/w1.00/model.onnx"
    data = bytearray(exported.read_bytes())
    data[len(data) // 2] ^= 0x01
    exported.write_bytes(bytes(data))
    code, out, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", package_copy, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert _stage(summary, "export-ort-web")["reran"] == ("damaged (file stages/export-ort-web/unet/w1.00/model.onnx "
                                                         "changed)")
    assert _stage(summary, "bench-ort-web")["reran"] == "its input export-ort-web reran"
    assert [r["stage"] for r in summary["stages"] if r["ran"]] == ["export-ort-web", "bench-ort-web", "bundle-ort-web"]
    verify(package_copy / "ort-web")

    code, out, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", package_copy, "--json")
    assert code == 0 and not any(r["ran"] for r in json.loads(out)["stages"]), "every output is as its stage recorded it"


def test_stages_record_checksums_and_rerun_damage_and_its_readers(tmp_path):
    """The rule on its own, with tiny stages: a reads nothing, b reads a, c reads b's output into its own."""
    from edgekit.fsutil import staged_dir
    from edgekit.package import STAGES_DIR, Stages

    root = tmp_path / "out"
    calls = []

    def writer(name, text):
        def build(where):
            calls.append(name)
            with staged_dir(where, owned=True) as tmp:  # a stage owns its output (no edgekit manifest here)
                (tmp / "data.txt").write_text(text)
            return {}
        return build

    def run_all():
        stages = Stages(root)
        stages.run("a", {"x": 1}, writer("a", "A"), root / STAGES_DIR / "a")
        stages.run("b", {"a": stages.key("a")}, writer("b", "B"), root / "b")

        def merged(where):
            calls.append("c")
            with staged_dir(where, owned=True) as tmp:  # its own output, made from b's: b's files stay b's
                (tmp / "data.txt").write_text((root / "b" / "data.txt").read_text() + "+table")
            return {}

        stages.run("c", {"b": stages.key("b")}, merged, root / "c")
        return {r["stage"]: r.get("reran") for r in stages.records if r["ran"]}

    assert run_all() == {"a": None, "b": None, "c": None}
    assert (root / "b" / "data.txt").read_text() == "B" and (root / "c" / "data.txt").read_text() == "B+table"
    calls.clear()
    assert run_all() == {} and calls == [], "every output is as its stage recorded it"
    (root / "b" / "data.txt").write_text("B+tampered")
    assert run_all() == {"b": "damaged (file b/data.txt changed)", "c": "its input b reran"}
    (root / STAGES_DIR / "a" / "extra.bin").write_bytes(b"x")
    assert run_all() == {"a": f"damaged (file {STAGES_DIR}/a/extra.bin not written by this stage)",
                         "b": "its input a reran", "c": "its input b reran"}
    shutil.rmtree(root / "b")
    assert run_all() == {"b": "damaged (b missing)", "c": "its input b reran"}
    (root / STAGES_DIR / "c.json").write_text("{not json")
    assert run_all() == {"c": f"damaged (file {STAGES_DIR}/c.json unreadable)"}


# -- 3. Ctrl-C -----------------------------------------------------------------------------------------------

def test_ctrl_c_during_a_stage_is_one_line_exit_130_and_keeps_finished_stages(run_cli, package_copy, default_model,
                                                                              monkeypatch):
    from edgekit.runtime.verify import verify
    from edgekit.targets import get_target

    shutil.rmtree(package_copy / "stages" / "export-ort-web")  # the export stage reruns
    stages_before = _files(package_copy / "stages")
    target_class = type(get_target("ort-web"))
    original = target_class.write

    def write_then_interrupt(self, job, stage, profile):
        if job.name == "unet":
            raise KeyboardInterrupt  # in the middle of the bundle: the text encoder is already written
        return original(self, job, stage, profile)

    monkeypatch.setattr(target_class, "write", write_then_interrupt)
    code, _, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", package_copy)
    assert code == 130
    assert one_line(err) == (f"edgekit package: interrupted; finished stages kept in {package_copy.resolve()}, "
                              "rerun to resume")
    assert not (package_copy / "stages" / "export-ort-web").exists()
    assert not _partials(package_copy, package_copy.parent)
    unfinished = "export-ort-web.json"  # the stage under way has no record: it reruns
    assert _files(package_copy / "stages") == {k: v for k, v in stages_before.items() if k != unfinished}

    monkeypatch.setattr(target_class, "write", original)
    code, out, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", package_copy, "--json")
    assert code == 0, err
    assert [r["stage"] for r in json.loads(out)["stages"] if r["ran"]] == ["export-ort-web", "bench-ort-web",
                                                                           "bundle-ort-web"]
    verify(package_copy / "ort-web")


# -- 4. unwritable --out, full disk ---------------------------------------------------------------------------

def _no_work(monkeypatch):
    import edgekit.structure

    def work(*args, **kwargs):
        raise AssertionError("--out must be checked before any work")

    monkeypatch.setattr(edgekit.structure.Structure, "load", work)


@pytest.mark.parametrize("where, message", [
    (lambda tmp: Path("/proc/x"), "cannot create files in /proc"),
    (lambda tmp: tmp / "file.txt" / "out", "file.txt is a file, not a directory"),
    (lambda tmp: tmp / "file.txt", "exists and is not a directory"),
])
def test_an_unwritable_out_is_refused_before_any_work(run_cli, default_model, tmp_path, monkeypatch, where, message):
    (tmp_path / "file.txt").write_text("keep")
    _no_work(monkeypatch)
    out = where(tmp_path)
    code, _, err = run_cli("package", "--model", default_model, *TARGET, "--out", out)
    assert code == 2
    line = one_line(err)
    assert message in line and f"--out {out}" in line
    assert (tmp_path / "file.txt").read_text() == "keep"


def _mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.decode().strip() or result.returncode})")


def test_an_out_under_a_read_only_directory_is_refused(run_cli, default_model, tmp_path, monkeypatch):
    readonly = tmp_path / "readonly"
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount it is
        _mount_tmpfs(readonly, "ro,size=1m")
    else:
        readonly.mkdir()
        readonly.chmod(0o555)
    try:
        _no_work(monkeypatch)
        code, _, err = run_cli("package", "--model", default_model, *TARGET, "--out", readonly / "out")
        assert code == 2 and f"cannot create files in {readonly}" in one_line(err)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(readonly)], check=True)
        else:
            readonly.chmod(0o755)


def test_a_full_disk_during_a_stage_names_it_and_leaves_nothing_half_written(run_cli, package_copy, default_model,
                                                                             monkeypatch):
    from edgekit.targets import get_target

    shutil.rmtree(package_copy / "stages" / "export-ort-web")
    stages_before = _files(package_copy / "stages")
    target_class = type(get_target("ort-web"))
    original = target_class.write

    def write_until_full(self, job, stage, profile):
        if job.name == "unet":
            (stage / "unet").mkdir(parents=True, exist_ok=True)
            with open(stage / "unet" / "model.onnx", "wb") as fh:
                fh.write(b"\0" * 4096)  # what a full disk leaves: the start of a file
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, job, stage, profile)

    monkeypatch.setattr(target_class, "write", write_until_full)
    code, _, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", package_copy)
    assert code == 1
    line = one_line(err)
    assert "stage export-ort-web: no space left on device writing" in line
    assert str(package_copy.resolve() / "stages" / "export-ort-web") in line
    assert not (package_copy / "stages" / "export-ort-web").exists()
    assert not _partials(package_copy, package_copy.parent)
    assert not (package_copy / "stages" / "export-ort-web.json").exists()
    assert _files(package_copy / "stages") == {k: v for k, v in stages_before.items() if k != "export-ort-web.json"}


def test_a_full_disk_is_recognised_through_copytree_and_wrapped_errors():
    from edgekit.fsutil import disk_full

    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/out/file")
    assert disk_full(enospc) == (True, "/x/out/file")
    assert disk_full(shutil.Error([("/src/a", "/dst/a", str(enospc))])) == (True, "/dst/a")  # copytree's form
    try:
        try:
            raise enospc
        except OSError as exc:
            raise RuntimeError("converter failed") from exc
    except RuntimeError as wrapped:
        assert disk_full(wrapped) == (True, "/x/out/file")
    assert disk_full(OSError(errno.EACCES, os.strerror(errno.EACCES))) == (False, None)
    assert disk_full(shutil.Error([("/src/a", "/dst/a", "[Errno 13] Permission denied")])) == (False, None)


def test_a_real_full_disk_stops_the_run_with_one_line(run_cli, default_model, tmp_path):
    """A 5 MiB tmpfs: the run fills it; what remains are finished stages only (each with its record)."""
    small = tmp_path / "small"
    _mount_tmpfs(small, "size=5m")
    try:
        out = small / "out"
        code, _, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", out)
        assert code == 1
        line = one_line(err)
        assert "no space left on device writing" in line and "stage " in line
        assert not _partials(small)
        for path in (out / "stages").iterdir():
            if path.is_dir():
                assert (out / "stages" / f"{path.name}.json").is_file(), f"{path} is not a finished stage"
    finally:
        subprocess.run(["umount", str(small)], check=True)


# -- 5. leftovers of killed runs -----------------------------------------------------------------------------

def test_leftovers_of_dead_processes_are_removed_and_a_live_ones_kept(run_cli, package_copy, default_model):
    dead = _dead_pid()
    leftovers = [package_copy / "stages" / f".quant-w1.00.partial-{dead}",
                 package_copy / f".ort-web.partial-{dead}",
                 package_copy.parent / f".{package_copy.name}.partial-{dead}"]
    for path in leftovers:
        (path / "unet").mkdir(parents=True)
        (path / "unet" / "model.onnx").write_bytes(b"\0" * 1024)
    stale_file = package_copy / f".package.json.partial-{dead}.json"
    stale_file.write_text("{")
    live = package_copy / "stages" / ".calib-w1.00.partial-1"  # pid 1 always runs
    live.mkdir()
    unrelated = package_copy.parent / f".other.partial-{dead}"  # not this output's: left alone
    unrelated.mkdir()
    code, out, err = run_cli("package", "--model", default_model, *TARGET, *FAST, "--out", package_copy, "--json")
    assert code == 0, err
    assert not any(r["ran"] for r in json.loads(out)["stages"])
    assert not any(p.exists() for p in [*leftovers, stale_file])
    assert live.is_dir() and unrelated.is_dir()


def test_remove_stale_partials_matches_both_staged_forms(tmp_path):
    from edgekit.fsutil import remove_stale_partials

    dead = _dead_pid()
    names = [f".model.partial-{dead}", f".model.partial-{os.getpid()}", f".report.md.partial-{dead}.md",
             f".model.tar.gz.partial-{dead}.gz", "model.partial-1", f".modelx.partial-{dead}"]
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale_partials(tmp_path, "model")
    assert [p.name for p in removed] == [f".model.partial-{dead}"]
    removed = {p.name for p in remove_stale_partials(tmp_path)}
    assert removed == {f".report.md.partial-{dead}.md", f".model.tar.gz.partial-{dead}.gz", f".modelx.partial-{dead}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f".model.partial-{os.getpid()}", "model.partial-1"])
