"""Hostile sweep, second round (issue 27): writes that race, signals, the server, forged bundles.

Each case replays a reproduction and asserts the exit code, one line on stderr and no traceback, the inputs
unchanged, nothing half-written (no `.X.partial-*`, no lock file) and nothing deleted that edgekit did not
write. One fp32 ort-web bundle of the default model, exported signed, serves every case that reads one."""
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgekit.bundle import integrity, read_manifest, write_manifest
from edgekit.errors import VerificationError
from edgekit.fsutil import OutputConflictError, edgekit_output, staged_dir, staged_file
from edgekit.locking import output_lock
from cli_checks import one_line

REPO = Path(__file__).resolve().parent.parent
FAST = ("--target", "ort-web", "--precision", "fp32")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _tree(path: Path) -> dict:
    """Every file below ``path`` (hidden ones included) with its sha256: what 'unchanged' means here."""
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(path).rglob("*")) if p.is_file()}


def _no_leftovers(parent: Path, name: str) -> None:
    left = [p.name for p in Path(parent).iterdir() if p.name.startswith(f".{name}.")]
    assert left == [], f"left beside {name}: {left}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    from edgekit.cli import main

    key = tmp_path_factory.mktemp("keys") / "signing-key"
    assert main(["keygen", "--out", str(key)]) == 0
    return key, key.with_name(key.name + ".pub")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, keys):
    from edgekit.cli import main

    out = tmp_path_factory.mktemp("hostile_writes") / "bundle"
    assert main(["export", *FAST, "--sign", str(keys[0]), "--out", str(out)]) == 0
    return out


@pytest.fixture
def bundle_copy(bundle, copy_of):
    return copy_of(bundle, "b")


def _spawn(*argv, cwd):
    return subprocess.Popen([sys.executable, "-m", "edgekit.cli", *map(str, argv)], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"ended before the moment this test needs: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- 1. staged writes never delete what edgekit did not write --------------------------------------------

def test_a_directory_that_appears_during_a_staged_write_is_kept(tmp_path):
    out = tmp_path / "X"
    for force in (False, True):  # --force replaces an edgekit output only, never a foreign one
        shutil.rmtree(out, ignore_errors=True)
        with pytest.raises(OutputConflictError) as info:
            with staged_dir(out, force=force) as stage:
                (stage / "model.onnx").write_bytes(b"ours")
                out.mkdir(exist_ok=True)
                (out / "thesis.txt").write_text("data")
        assert "appeared while this command ran" in str(info.value) or "did not write" in str(info.value)
        assert _tree(out) == {"thesis.txt": hashlib.sha256(b"data").hexdigest()}
        _no_leftovers(tmp_path, "X")
    with pytest.raises(OutputConflictError, match="edgekit did not write"):  # foreign before the write began too
        with staged_dir(out, force=True) as stage:
            (stage / "model.onnx").write_bytes(b"ours")
    assert _tree(out) == {"thesis.txt": hashlib.sha256(b"data").hexdigest()}


def test_force_replaces_an_earlier_edgekit_output_in_one_swap(tmp_path):
    out = tmp_path / "X"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"stage": "export"}))
    assert edgekit_output(out) == "export output"
    with staged_dir(out, force=True) as stage:
        (stage / "new.txt").write_text("new")
    assert _tree(out) == {"new.txt": hashlib.sha256(b"new").hexdigest()}
    _no_leftovers(tmp_path, "X")


def test_a_png_that_appears_during_generate_is_kept_unless_force(tmp_path):
    out = tmp_path / "X.png"
    with pytest.raises(OutputConflictError, match="appeared while this command ran"):
        with staged_file(out) as tmp:
            tmp.write_bytes(b"ours")
            out.write_bytes(b"a picture of my cat")
    assert out.read_bytes() == b"a picture of my cat"
    _no_leftovers(tmp_path, "X.png")
    with staged_file(out, force=True) as tmp:  # --force: the user asked for this path to be replaced
        tmp.write_bytes(b"ours")
    assert out.read_bytes() == b"ours"


def test_a_png_made_at_out_during_generate_survives(run_cli, tmp_path, monkeypatch):
    import edgekit.loader

    out = tmp_path / "X.png"
    original = edgekit.loader.open_model

    def meanwhile(*args, **kwargs):  # after --out was checked, before the image is written
        out.write_bytes(b"a picture of my cat")
        return original(*args, **kwargs)

    monkeypatch.setattr(edgekit.loader, "open_model", meanwhile)
    code, _, err = run_cli("generate", "--prompt", "a handwritten digit one", "--steps", "2", "--out", out)
    line = one_line(err)
    assert code == 1 and f"--out {out}: appeared while this command ran" in line, line
    assert out.read_bytes() == b"a picture of my cat"
    _no_leftovers(tmp_path, "X.png")


def test_export_force_refuses_a_foreign_directory_before_any_work(run_cli, tmp_path):
    out = tmp_path / "X"
    out.mkdir()
    (out / "thesis.txt").write_text("data")
    code, _, err = run_cli("export", *FAST, "--force", "--out", out)
    line = one_line(err)
    assert code == 2 and f"--out {out}" in line and "edgekit did not write" in line, line
    assert (out / "thesis.txt").read_text() == "data"
    _no_leftovers(tmp_path, "X")


def test_a_directory_made_at_out_during_export_survives(run_cli, tmp_path, monkeypatch):
    """The issue's reproduction: export, then `mkdir X; echo data > X/thesis.txt` while it runs (here at the
    moment the export writes its first verification array into its staging directory)."""
    import edgekit.targets.base as base

    out = tmp_path / "X"
    save_array = base.save_array

    def meanwhile(*args, **kwargs):
        if not out.exists():
            out.mkdir()
            (out / "thesis.txt").write_text("data")
        return save_array(*args, **kwargs)

    monkeypatch.setattr(base, "save_array", meanwhile)
    for force in ((), ("--force",)):  # --force replaces an earlier edgekit output only
        code, _, err = run_cli("export", *FAST, *force, "--out", out)
        line = one_line(err)
        assert code == 1 and f"--out {out}" in line, line
        assert ("appeared while this command ran" if not force else "edgekit did not write") in line, line
        assert _tree(out) == {"thesis.txt": hashlib.sha256(b"data").hexdigest()}
        _no_leftovers(tmp_path, "X")
        if not force:
            shutil.rmtree(out)


# --- 2. one writer per bundle or package --out ------------------------------------------------------------

def test_two_concurrent_exports_into_one_out_one_wins_the_other_says_so(tmp_path):
    out = tmp_path / "Y"
    procs = [_spawn("export", *FAST, "--out", out, cwd=tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read(), p.stdout.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err, _ in results if code == 1)
    line = one_line(loser)
    assert f"{out}" in line and ("is being written by PID" in line or "appeared while this command ran" in line), line
    read_manifest(out)  # the winner's bundle, whole
    _no_leftovers(tmp_path, "Y")


HOLD = """
import sys, time
from edgekit.locking import output_lock
with output_lock(sys.argv[1], "edgekit bench"), output_lock(sys.argv[2], "edgekit package"):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_a_second_writer_is_refused_naming_the_holder(run_cli, bundle_copy):
    """`bench B --repeats 400 & export --force --out B`: the export is refused at once, naming bench's PID."""
    before = _tree(bundle_copy)
    package = bundle_copy.parent / "pkg"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(bundle_copy), str(package)], stdout=subprocess.PIPE,
                              text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "holding"
        named = f"PID {holder.pid} (edgekit bench)"
        code, _, err = run_cli("export", *FAST, "--force", "--out", bundle_copy)
        line = one_line(err)
        assert code == 1 and named in line and f"--out {bundle_copy}: is being written by" in line, line
        code, _, err = run_cli("bench", bundle_copy, "--steps", "4", "--repeats", "1")
        line = one_line(err)
        assert code == 1 and named in line, line
        code, _, err = run_cli("sign", bundle_copy, "--key", bundle_copy.parent / "no-key")
        assert code == 2  # a bad key is named before the lock is even tried
        code, _, err = run_cli("package", "--targets", "ort-web", "--out", package)  # a second package run
        line = one_line(err)
        assert code == 1 and f"PID {holder.pid} (edgekit package)" in line, line
        assert not package.exists()
    finally:
        holder.kill()
        holder.wait()
    assert _tree(bundle_copy) == before
    with output_lock(bundle_copy):  # a holder killed outright leaves its file, never its lock
        pass
    _no_leftovers(bundle_copy.parent, bundle_copy.name)


def test_a_stale_manifest_is_never_combined_with_another_writers_files(bundle_copy):
    """bench read the manifest, an export (or another bench) rewrote it meanwhile: bench's write is refused."""
    stale = read_manifest(bundle_copy)
    write_manifest(bundle_copy, {**stale, "created_with": {**stale["created_with"], "rewritten_by": "another"}})
    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(VerificationError, match="rewritten by another process since this command read it"):
        write_manifest(bundle_copy, {**stale, "precision": "fp16"})
    assert (bundle_copy / "manifest.json").read_bytes() == before


# --- 8. bench without --reference-model ----------------------------------------------------------------

def test_bench_without_reference_model_measures_latency_and_hashes_nothing(run_cli, bundle_copy, tmp_path,
                                                                           monkeypatch):
    import edgekit.fsutil

    def no_hashing(path):
        raise AssertionError(f"sha256_tree({path}) called")

    monkeypatch.setattr(edgekit.fsutil, "sha256_tree", no_hashing)
    monkeypatch.chdir(tmp_path)  # the README's chain, from wherever the user is
    before = _tree(bundle_copy)
    code, out, err = run_cli("bench", bundle_copy, "--steps", "4", "--repeats", "1")
    assert code == 0 and "Traceback" not in err, err
    assert "quality needs --reference-model" in out and "manifest.json left unchanged" in out, out
    assert " 4 " in out and "ms" in out
    assert _tree(bundle_copy) == before


def test_bench_reference_model_must_be_a_model_before_anything_is_hashed(run_cli, bundle_copy, tmp_path):
    (tmp_path / "big").mkdir()
    code, _, err = run_cli("bench", bundle_copy, "--steps", "4", "--repeats", "1", "--reference-model",
                           tmp_path / "big")
    line = one_line(err)
    assert code == 2 and f"--reference-model {tmp_path / 'big'}" in line and "model_index.json" in line, line


# --- 10. serve -----------------------------------------------------------------------------------------

@pytest.fixture
def server(bundle_copy):
    from http.server import ThreadingHTTPServer

    from edgekit.commands.serve import HOST, check_bundle_for_serving, make_handler

    roots, expected = check_bundle_for_serving(bundle_copy)
    httpd = ThreadingHTTPServer((HOST, 0), make_handler(roots, expected))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], bundle_copy
    httpd.shutdown()
    httpd.server_close()


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", path, skip_accept_encoding=True)
    conn.endheaders()
    status = conn.getresponse().status
    conn.close()
    return status


def test_serve_answers_every_bad_path_with_a_status_not_a_traceback(server, capsys):
    port, bundle = server
    cases = {
        "/bundle/manifest.json%00.png": 400, "/bundle/" + "a" * 300: 400, "/bundle/../manifest.json": 400,
        "/bundle/%2e%2e/%2e%2e/etc/passwd": 400, "/bundle/%ff%fe": 400, "/bundle/a%1b[31mred": 400,
        "/bundle/x/" + "b" * 5000: 400, "/nope.js": 404, "/bundle/missing.onnx": 404, "/ort/../../etc/passwd": 400,
        "/bundle/manifest.json": 200, "/bundle/text_encoder/model.onnx": 200, "/": 200,
    }
    got = {path: _get(port, path) for path in cases}
    assert got == cases
    err = capsys.readouterr().err
    assert "Traceback" not in err and "\x1b" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == sum(1 for c in cases.values() if c != 200)


def test_serve_refuses_a_file_edited_after_start_up(server, capsys):
    port, bundle = server
    graph = bundle / "text_encoder" / "model.onnx"
    original = graph.read_bytes()
    assert _get(port, "/bundle/text_encoder/model.onnx") == 200
    graph.write_bytes(original + b"x")
    assert _get(port, "/bundle/text_encoder/model.onnx") == 409
    manifest = bundle / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"fp32"', '"fp16"', 1))
    assert _get(port, "/bundle/manifest.json") == 409
    err = capsys.readouterr().err
    assert "text_encoder/model.onnx changed since the server started" in err and "Traceback" not in err, err


# --- 11. SIGTERM ---------------------------------------------------------------------------------------

def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    import psutil

    out = tmp_path / "Z"
    proc = _spawn("export", *FAST, "--out", out, cwd=tmp_path)
    parent = psutil.Process(proc.pid)

    def node_children():
        try:
            return [c for c in parent.children(recursive=True) if c.name() == "node"]
        except psutil.Error:
            return []

    _wait_for(node_children, proc)  # mid-export, while onnxruntime-web checks a graph under Node
    children = parent.children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    line = one_line(err)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in line, (proc.returncode, err)
    assert not out.exists()
    _no_leftovers(tmp_path, "Z")
    psutil.wait_procs(children, timeout=10)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


# --- 13. a failed generate leaves no log beside --out -------------------------------------------------

FAILING = r"""
import os, sys
import edgekit.runtime.sampler as sampler
from edgekit.errors import InputError
def failing(self, *args, **kwargs):  # a library talks, then the run fails
    os.write(2, b"native stderr line\n")
    print("library print")
    raise InputError("the sampler refused this prompt")
sampler.BundleSampler.generate = failing
from edgekit.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_failed_generate_leaves_no_log_beside_out_and_prints_one_line(bundle, tmp_path):
    out = tmp_path / "X.png"
    proc = subprocess.run([sys.executable, "-c", FAILING, "generate", "--bundle", str(bundle), "--prompt", "a digit",
                           "--steps", "4", "--out", str(out)], capture_output=True, text=True, cwd=tmp_path, env=ENV,
                          timeout=300)
    line = one_line(proc.stderr)
    assert proc.returncode == 2 and "the sampler refused this prompt" in line, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no X.png, no X.png.log, no partial
    log = Path(line.split("other libraries' output: ")[1].rstrip(")"))  # kept in the temp dir, named once
    assert "native stderr line" in log.read_text()
    log.unlink()


# --- 14. signed bundles --------------------------------------------------------------------------------

def _forge(bundle: Path) -> None:
    """What the issue's forger did: change a file, recompute its sha256 and the manifest's integrity."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    rel = manifest["verification"]["vae_decoder"]["data"]["expected"]["file"]
    data = bytearray((bundle / rel).read_bytes())
    data[:16] = bytes(16)
    (bundle / rel).write_bytes(bytes(data))
    manifest["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    manifest["integrity"] = integrity(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_a_forged_bundle_passes_the_checksums_but_not_the_signature(run_cli, bundle_copy, keys, tmp_path):
    key, pub = keys
    code, out, err = run_cli("verify", bundle_copy, "--files-only", "--key", pub)
    assert code == 0 and "signed by" in out, err
    _forge(bundle_copy)
    code, _, err = run_cli("verify", bundle_copy, "--files-only")
    assert code == 0, err  # the known limit: checksums alone are recomputed by the forger
    code, _, err = run_cli("verify", bundle_copy, "--files-only", "--key", pub)
    line = one_line(err)
    assert code == 1 and "manifest.sig: signs another manifest" in line, line
    sig = json.loads((bundle_copy / "manifest.sig").read_text())
    sig["signed"] = read_manifest(bundle_copy)["integrity"]["sha256"]  # the forger edits the signature file too
    (bundle_copy / "manifest.sig").write_text(json.dumps(sig))
    code, _, err = run_cli("verify", bundle_copy, "--files-only", "--key", pub)
    line = one_line(err)
    assert code == 1 and "signature is not valid" in line, line
    other = tmp_path / "other-key"
    assert run_cli("keygen", "--out", other)[0] == 0
    code, _, err = run_cli("sign", bundle_copy, "--key", other)  # signed by the forger's own key
    assert code == 0, err
    code, _, err = run_cli("verify", bundle_copy, "--files-only", "--key", pub)
    line = one_line(err)
    assert code == 1 and "signed by another key" in line, line


def test_signing_refuses_bad_keys_in_one_line_before_any_work(run_cli, bundle_copy, keys, tmp_path):
    key, pub = keys
    before = _tree(bundle_copy)
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    for argv, needle in ((("export", *FAST, "--sign", junk, "--out", tmp_path / "o"), f"--sign {junk}"),
                         (("export", *FAST, "--sign", tmp_path / "none", "--out", tmp_path / "o"), "no such file"),
                         (("verify", bundle_copy, "--files-only", "--key", key), "give KEY.pub"),
                         (("sign", bundle_copy, "--key", pub), "not an unencrypted PEM private key"),
                         (("keygen", "--out", key), "a key is never replaced")):
        code, _, err = run_cli(*argv)
        line = one_line(err)
        assert code == 2 and needle in line, (argv, line)
    assert not (tmp_path / "o").exists() and _tree(bundle_copy) == before
    unsigned = tmp_path / "unsigned"
    shutil.copytree(bundle_copy, unsigned)
    (unsigned / "manifest.sig").unlink()
    code, _, err = run_cli("verify", unsigned, "--files-only", "--key", pub)
    line = one_line(err)
    assert code == 1 and "the bundle is not signed" in line, line
