"""Damaged and edited bundles: every manifest rewrite (bench, --import-table, write_manifest) refuses a
bundle whose files differ from its manifest, the manifest's own content is covered by its integrity
record, verify checks what the manifest means (schedules, tokenizer ids, geometry, table rows), every
file on disk must be listed (hidden ones too), and serve / policy generate check the files first.

Each case asserts the exit code, one line naming the file or key, and that nothing was rewritten."""
import copy
import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from edgekit.bundle import FORMAT_VERSION, integrity, read_manifest, verify_files, write_manifest
from edgekit.runtime.verify import verify
from edgekit.errors import InputError, VerificationError
from policy_bundles import exported
from cli_checks import one_line

ROW = {"width": 1.0, "steps": 4, "latency_ms": 90.0, "device": "Pixel 8 (test data)",
       "quality": {"value": 0.9, "ci95": [0.8, 1.0], "metric": "test data"}}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, default_model) -> Path:
    """The default model as an fp32 ort-web bundle (shared with the policy tests), never changed here."""
    return exported(tmp_path_factory, default_model)


@pytest.fixture
def bundle(clean, copy_of) -> Path:
    """A private copy a test may damage."""
    return copy_of(clean, "bundle")


@pytest.fixture
def phone_table(tmp_path) -> Path:
    path = tmp_path / "phone.json"
    path.write_text(json.dumps([ROW]))
    return path


def _tree_digest(root: Path) -> str:
    """Every entry below root (hidden ones too) by path and content: proves nothing was written."""
    digest = hashlib.sha256()
    for dirpath, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            digest.update(path.read_bytes() if not path.is_symlink() else os.readlink(path).encode())
    return digest.hexdigest()


def _flip(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[min(at, len(data) - 1)] ^= 0xFF
    path.write_bytes(bytes(data))


def _edit_manifest(bundle: Path, edit, reseal: bool) -> None:
    """Edit manifest.json in place; ``reseal`` also renews its integrity record, as a careful forger would,
    so that only verify's checks of meaning stand between the edit and a device."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    if reseal:
        manifest["integrity"] = integrity(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


# -- damage to files: every rewrite refuses, verify refuses, nothing is written --------------------------

def _unet_flip(b):
    _flip(b / "unet/w1.00/model.onnx")


def _vae_append(b):
    with open(b / "vae_decoder/model.onnx", "ab") as fh:
        fh.write(b"\0")


def _hidden(rel):
    def add(b):
        (b / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / rel).write_bytes(b"console.log('evil')")
    return add


def _delete_tokenizer(b):
    (b / "tokenizer/tokenizer.json").unlink()


def _symlink(b):
    (b / "unet/w1.00/extra.onnx").symlink_to(b / "vae_decoder/model.onnx")


def _verification_flip(b):
    _flip(next(p for p in sorted((b / "verification").rglob("*.bin"))), at=0)


FILE_DAMAGE = [
    (_unet_flip, "unet/w1.00/model.onnx: sha256 differs"),
    (_vae_append, "vae_decoder/model.onnx: .* bytes, manifest.json says"),
    (_hidden("unet/evil.js"), "unet/evil.js: not listed in manifest.json"),
    (_hidden(".evil.js"), r"\.evil\.js: not listed in manifest.json \(a hidden file"),
    (_hidden("unet/.cache/blob"), r"unet/\.cache/blob: not listed in manifest.json \(a hidden file"),
    (_delete_tokenizer, "tokenizer/tokenizer.json: missing"),
    (_symlink, "unet/w1.00/extra.onnx: not listed"),
    (_verification_flip, "verification/.*: sha256 differs"),
]
DAMAGE_IDS = ["unet-byte", "vae-appended", "unlisted-js", "hidden-top", "hidden-nested", "tokenizer-deleted",
              "symlink", "verification-data"]


@pytest.mark.parametrize("damage, message", FILE_DAMAGE, ids=DAMAGE_IDS)
def test_import_table_refuses_a_damaged_bundle_and_writes_nothing(bundle, phone_table, run_cli, damage, message):
    damage(bundle)
    before = _tree_digest(bundle)
    code, out, err = run_cli("bench", bundle, "--import-table", phone_table)
    assert code == 1 and out == ""
    assert re.search(message, one_line(err)), err
    assert _tree_digest(bundle) == before
    code, _, err = run_cli("verify", bundle, "--files-only")
    assert code == 1 and re.search(message, one_line(err)), err


def test_bench_refuses_damage_before_measuring(bundle, run_cli):
    _unet_flip(bundle)
    before = _tree_digest(bundle)
    code, out, err = run_cli("bench", bundle, "--steps", "4", "--repeats", "1", "--samples-per-digit", "1")
    assert code == 1 and "unet/w1.00/model.onnx: sha256 differs" in one_line(err)
    assert _tree_digest(bundle) == before


def test_any_later_writer_refuses_damage(bundle):
    manifest = read_manifest(bundle)
    _flip(bundle / "text_encoder/model.onnx")
    before = _tree_digest(bundle)
    with pytest.raises(VerificationError, match="text_encoder/model.onnx: sha256 differs"):
        write_manifest(bundle, {**manifest, "table": [ROW]})
    assert _tree_digest(bundle) == before
    # a manifest with a files listing but no manifest.json to check it against is not a fresh export either
    (bundle / "manifest.json").unlink()
    with pytest.raises(InputError, match="manifest.json missing, so its files cannot be checked"):
        write_manifest(bundle, manifest)
    assert not (bundle / "manifest.json").exists()


def test_a_fresh_listing_refuses_hidden_files(tmp_path):
    root = tmp_path / "fresh"
    (root / "unet").mkdir(parents=True)
    (root / "unet" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(VerificationError, match=r"unet/\.DS_Store: hidden file in the bundle"):
        write_manifest(root, {"files": {}})


def test_a_clean_rewrite_still_works_and_later_damage_is_still_caught(bundle, phone_table, run_cli):
    code, out, err = run_cli("bench", bundle, "--import-table", phone_table, "--json")
    assert code == 0, err
    assert json.loads(out)["table"][0]["device"] == ROW["device"]
    assert run_cli("verify", bundle, "--files-only")[0] == 0
    manifest = read_manifest(bundle)
    assert manifest["table"][0]["device"] == ROW["device"] and manifest["integrity"] == integrity(manifest)
    _flip(bundle / "unet/w1.00/model.onnx")
    code, _, err = run_cli("bench", bundle, "--import-table", phone_table)
    assert code == 1 and "unet/w1.00/model.onnx: sha256 differs" in err


# -- the manifest's own content -------------------------------------------------------------------------

def _negate_coeff(m):
    m["sampling"]["schedules"]["4"]["sample_coeff"][0] *= -1


def _guidance(m):
    m["sampling"]["guidance_scale"] = 9.0


def _eos(m):
    m["tokenizer"]["eos_id"] = 5


def _file_hash(m):
    m["files"]["unet/w1.00/model.onnx"]["sha256"] = "0" * 64


def _tolerance(m):
    m["verification"]["text_encoder"]["tolerance"] = 1e9


def _threshold(m):
    m["scheduler"]["config"]["beta_end"] = 0.02


MANIFEST_EDITS = [
    (_negate_coeff, "'sampling' changed after edgekit wrote the manifest"),
    (_guidance, "'sampling' changed after edgekit wrote the manifest"),
    (_eos, "'tokenizer' changed after edgekit wrote the manifest"),
    (_file_hash, "'files' changed after edgekit wrote the manifest"),
    (_tolerance, "'verification' changed after edgekit wrote the manifest"),
    (_threshold, "'scheduler' changed after edgekit wrote the manifest"),
    (lambda m: m["integrity"].update(sha256="0" * 64), "integrity.sha256 does not match"),
    (lambda m: m.pop("integrity"), "missing key 'integrity'"),
    (lambda m: m.update(format_version=1), "format_version 1 was written by an older edgekit"),
    (lambda m: m["table"].append({**ROW, "width": 0.5}), "table row 0 names width 0.5, which the bundle lacks"),
    (lambda m: m["table"].append({**ROW, "steps": 5}), "table row 0 names 5 steps, which have no schedule"),
]
EDIT_IDS = ["sample-coeff", "guidance", "eos-id", "files-sha", "tolerance", "scheduler-config", "integrity-sha",
            "no-integrity", "old-version", "row-width", "row-steps"]


@pytest.mark.parametrize("edit, message", MANIFEST_EDITS, ids=EDIT_IDS)
def test_an_edited_manifest_is_refused_naming_what_changed(bundle, run_cli, edit, message):
    _edit_manifest(bundle, edit, reseal=False)
    before = _tree_digest(bundle)
    code, out, err = run_cli("verify", bundle, "--files-only")
    assert code in (1, 2) and message in one_line(err), err
    assert code == (1 if "changed after" in message or "integrity.sha256" in message else 2)
    code, _, err = run_cli("bench", bundle, "--import-table", bundle.parent / "absent.json")
    assert code in (1, 2) and message in one_line(err), err
    assert _tree_digest(bundle) == before


# -- meaning: an edit with a renewed integrity record is still caught by verify ------------------------

def _shift_timestep(m):
    m["sampling"]["schedules"]["8"]["timesteps"][3] += 1.0


def _eps(m):
    m["sampling"]["schedules"]["20"]["eps_coeffs"][5][-1] *= 1.001


def _drop_step(m):
    table = m["sampling"]["schedules"]["12"]
    for key in ("input_scale", "sample_coeff"):
        table[key] = table[key][:-1]


def _vocab_size(m):
    m["tokenizer"]["vocab_size"] += 1


def _max_length(m):
    m["tokenizer"]["max_length"] += 1


def _latent(m):
    m["geometry"]["latent_shape"] = [4, 16, 16]


def _image_size(m):
    m["geometry"]["image_size"] = 64


MEANING_EDITS = [
    (_negate_coeff, r"sampling.schedules\['4'\].sample_coeff\[0\] is -"),
    (_shift_timestep, r"sampling.schedules\['8'\].timesteps\[3\] is"),
    (_eps, r"sampling.schedules\['20'\].eps_coeffs\[5\]\[5\] is"),
    (_drop_step, r"sampling.schedules\['12'\].input_scale is '11 entries'"),
    (_threshold, "scheduler.config differs from .*scheduler_config.json"),
    (_eos, "tokenizer.eos_id 5, but tokenizer's own files give"),
    (lambda m: m["tokenizer"].update(bos_id=10 ** 6), "tokenizer.bos_id 1000000 is not a token id of"),
    (_vocab_size, "tokenizer.vocab_size"),
    (_max_length, "tokenizer.max_length .*model_max_length"),
    (_latent, "geometry.latent_shape"),
    (_image_size, "geometry.image_size 64"),
]
MEANING_IDS = ["sample-coeff", "timestep", "eps-coeff", "short-table", "scheduler-config", "eos-id", "bos-id",
               "vocab-size", "max-length", "latent-shape", "image-size"]


@pytest.mark.parametrize("edit, message", MEANING_EDITS, ids=MEANING_IDS)
def test_verify_checks_meaning_even_when_the_integrity_record_is_renewed(bundle, run_cli, edit, message):
    _edit_manifest(bundle, edit, reseal=True)
    read_manifest(bundle)  # the edit passes the schema and the integrity record: only meaning catches it
    code, out, err = run_cli("verify", bundle, "--files-only")
    assert code == 1 and re.search(message, one_line(err)), err


def test_guidance_is_bounded_when_resealed(bundle, run_cli):
    _edit_manifest(bundle, lambda m: m["sampling"].update(guidance_scale=-4.0), reseal=True)
    code, _, err = run_cli("verify", bundle, "--files-only")
    assert code == 2 and "sampling.guidance_scale -4.0 should be a finite number >= 0" in one_line(err)


def test_the_clean_bundle_passes_every_check(clean, run_cli):
    before = _tree_digest(clean)
    result = verify(clean, numeric=True)
    assert result["files"] == len(read_manifest(clean)["files"]) and len(result["checks"]) == 3
    code, _, err = run_cli("verify", clean, "--files-only")
    assert code == 0, err
    assert _tree_digest(clean) == before
    manifest = read_manifest(clean)
    assert manifest["format_version"] == FORMAT_VERSION and manifest["integrity"] == integrity(manifest)
    assert not [p for p in clean.rglob(".*")]  # a bundle holds no hidden files


# -- loaders check the files first ----------------------------------------------------------------------

@pytest.mark.parametrize("damage, message", [FILE_DAMAGE[0], FILE_DAMAGE[3], FILE_DAMAGE[4]],
                         ids=["unet-byte", "hidden-top", "hidden-nested"])
def test_serve_refuses_a_damaged_bundle(bundle, run_cli, damage, message):
    damage(bundle)
    code, out, err = run_cli("serve", bundle, "--port", "0")
    assert code == 1 and out == "" and re.search(message, one_line(err)), err


def test_policy_generate_and_simulate_check_the_bundle_first(bundle, phone_table, run_cli, tmp_path):
    assert run_cli("bench", bundle, "--import-table", phone_table)[0] == 0  # gives the bundle a table and policy
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"battery_level": 0.9, "charging": True, "low_power": False, "thermal": "nominal"}))
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps([{"t": 0, "battery_level": 0.9, "charging": False, "low_power": False,
                                  "thermal": "nominal"}]))
    good = tmp_path / "good.png"
    code, _, err = run_cli("policy", "generate", "--bundle", bundle, "--prompt", "a handwritten digit one",
                           "--state", state, "--out", good)
    assert code == 0 and good.read_bytes()[:4] == b"\x89PNG", err
    _unet_flip(bundle)
    out = tmp_path / "bad.png"
    code, _, err = run_cli("policy", "generate", "--bundle", bundle, "--prompt", "a handwritten digit one",
                           "--state", state, "--out", out)
    assert code == 1 and "unet/w1.00/model.onnx: sha256 differs" in one_line(err) and not out.exists()
    _unet_flip(bundle)  # undone
    _edit_manifest(bundle, lambda m: m["table"][0].update(latency_ms=1.0), reseal=False)
    for argv in (("generate", "--prompt", "x", "--state", state, "--out", out), ("simulate", "--trace", trace)):
        code, _, err = run_cli("policy", argv[0], "--bundle", bundle, *argv[1:])
        assert code == 1 and "'table' changed after edgekit wrote the manifest" in one_line(err), err
    assert not out.exists()


def test_the_bundle_sampler_checks_files_before_loading(bundle):
    from edgekit.runtime.sampler import BundleSampler

    _hidden("unet/w1.00/.model.onnx.swp")(bundle)
    with pytest.raises(VerificationError, match=r"\.model\.onnx\.swp: not listed"):
        BundleSampler(bundle)


def test_manifest_edits_stay_refused_through_a_deep_copy(clean):
    """integrity() is a pure function of the content: a copy of the manifest gives the same record."""
    manifest = read_manifest(clean)
    assert integrity(copy.deepcopy(manifest)) == manifest["integrity"]
    verify_files(clean, manifest)
