"""Signed bundles: an Ed25519 signature over a bundle's ``integrity`` record, so that a forger who edits a
graph and recomputes every sha256 and the integrity digest (which anyone can) is still caught: without the
private key they cannot sign the new digest.

The signature is ``manifest.sig`` beside manifest.json (JSON)::

    {"format": "edgekit-ed25519/1", "signed": "<the manifest's integrity.sha256>",
     "public_key": "<hex of the 32-byte Ed25519 public key>", "signature": "<hex of 64 bytes>"}

over the bytes ``edgekit-bundle-signature/1\\n<integrity.sha256>``. ``integrity.sha256`` covers every key of
the manifest, ``files`` included, which holds the sha256 of every other file: one signature covers the
bundle. A rewrite of the manifest (``edgekit bench``, an imported table) changes the digest, so the old
signature no longer verifies: re-sign with ``edgekit sign``. ``verify --key PUB`` trusts only the public key
it is given, never the one the signature file names.

Keys are PEM files: the private key PKCS#8 (unencrypted, mode 0600), the public key SubjectPublicKeyInfo;
``edgekit keygen --out KEY`` writes KEY and KEY.pub. Needs the ``cryptography`` package (extra ``sign``)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from edgekit.constants import SIGNATURE
from edgekit.errors import InputError, MissingBackendError, VerificationError

SIGNATURE_FORMAT = "edgekit-ed25519/1"
_DOMAIN = b"edgekit-bundle-signature/1\n"
MAX_KEY_BYTES = 64 * 1024


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingBackendError("signing needs the 'cryptography' package: pip install 'edgekit[sign]'") from None
    return ed25519, serialization, InvalidSignature


def _read_key_file(path: Path, param: str) -> bytes:
    path = Path(path)
    try:
        if not path.is_file():
            raise InputError("no such file (expected a PEM key written by `edgekit keygen`)", param=param, value=path)
        if path.stat().st_size > MAX_KEY_BYTES:
            raise InputError(f"larger than {MAX_KEY_BYTES} bytes: not a PEM key", param=param, value=path)
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", param=param, value=path) from None


def load_private_key(path: Path, param: str = "sign"):
    ed25519, serialization, _ = _crypto()
    data = _read_key_file(path, param)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(f"not an unencrypted PEM private key ({reason}); `edgekit keygen` writes one", param=param,
                         value=path) from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InputError(f"a {type(key).__name__.lstrip('_')}, expected an Ed25519 private key (`edgekit keygen`)",
                         param=param, value=path)
    return key


def load_public_key(path: Path, param: str = "key"):
    ed25519, serialization, _ = _crypto()
    data = _read_key_file(path, param)
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:  # ValueError, TypeError, and cryptography's own UnsupportedAlgorithm
        hint = " (this is the private key; give KEY.pub)" if b"PRIVATE KEY" in data else ""
        raise InputError(f"not a PEM public key{hint}", param=param, value=path) from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise InputError(f"a {type(key).__name__.lstrip('_')}, expected an Ed25519 public key (`edgekit keygen`)",
                         param=param, value=path)
    return key


def _raw_public(key) -> str:
    _, serialization, _ = _crypto()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def generate_key_pair(out: Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``out`` (private, mode 0600) and ``out``.pub. Never replaces a file: a
    private key overwritten is a key lost."""
    ed25519, serialization, _ = _crypto()
    from edgekit.fsutil import rename_noreplace

    out = Path(out)
    pub = out.with_name(out.name + ".pub")
    for path in (out, pub):
        if os.path.lexists(path):
            raise InputError("already exists (a key is never replaced; choose a new name)", param="out", value=path)
    if not out.parent.is_dir():
        raise InputError(f"{out.parent} is not a directory", param="out", value=out)
    key = ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    written: list[Path] = []
    try:
        for path, data, mode in ((out, private_pem, 0o600), (pub, public_pem, 0o644)):
            tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            try:
                rename_noreplace(tmp, path)
            except FileExistsError:
                os.unlink(tmp)
                raise InputError("appeared while the key was written; nothing was replaced", param="out",
                                 value=path) from None
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return out, pub


def _message(digest: str) -> bytes:
    return _DOMAIN + digest.encode("ascii")


def signature_record(manifest: dict, private_key) -> dict:
    digest = manifest["integrity"]["sha256"]
    return {"format": SIGNATURE_FORMAT, "signed": digest, "public_key": _raw_public(private_key.public_key()),
            "signature": private_key.sign(_message(digest)).hex()}


def write_signature(bundle_dir: Path, manifest: dict, private_key) -> dict:
    """Write ``manifest.sig`` for ``manifest`` (as written: its integrity record) atomically."""
    from edgekit.fsutil import staged_file

    record = signature_record(manifest, private_key)
    with staged_file(Path(bundle_dir) / SIGNATURE, force=True) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return record


def sign_bundle(bundle_dir: Path, key_path: Path) -> dict:
    """Sign a finished bundle in place (after `edgekit bench` rewrote its manifest, or one exported unsigned):
    the bundle is checked first (schema, integrity, every file's sha256), under its write lock."""
    from edgekit.bundle import read_manifest, verify_files
    from edgekit.locking import output_lock

    key = load_private_key(key_path, "key")
    read_manifest(bundle_dir)
    with output_lock(bundle_dir, "edgekit sign", param="bundle"):
        manifest = read_manifest(bundle_dir)
        verify_files(bundle_dir, manifest)
        return write_signature(bundle_dir, manifest, key)


def check_signature(bundle_dir: Path, manifest: dict, public_key_path: Path) -> dict:
    """Raise VerificationError unless ``manifest.sig`` is a valid signature, by the key at ``public_key_path``,
    of this manifest's integrity digest (read_manifest has already checked the digest against the content and
    verify_files every file against ``files``). Returns {"signed_by": hex public key, "signed": digest}."""
    _, _, invalid_signature = _crypto()
    key = load_public_key(public_key_path)
    path = Path(bundle_dir) / SIGNATURE
    if not path.is_file() or path.is_symlink():
        raise VerificationError(f"{path}: missing (the bundle is not signed; `edgekit sign` or export --sign)")
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise ValueError("too large")
        record = json.loads(path.read_text(encoding="utf-8"))
        ok = (isinstance(record, dict) and record.get("format") == SIGNATURE_FORMAT
              and all(isinstance(record.get(k), str) for k in ("signed", "public_key", "signature")))
        signature = bytes.fromhex(record["signature"]) if ok else b""
    except (OSError, ValueError, RecursionError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise VerificationError(f"{path}: not an edgekit signature (expected format '{SIGNATURE_FORMAT}' with "
                                "signed, public_key, signature)")
    if record["public_key"] != _raw_public(key):
        raise VerificationError(f"{path}: signed by another key ({record['public_key'][:16]}...), not by "
                                f"{public_key_path}")
    try:
        key.verify(signature, _message(record["signed"]))
    except invalid_signature:
        raise VerificationError(f"{path}: the signature is not valid for key {public_key_path} (forged or "
                                "damaged)") from None
    digest = manifest["integrity"]["sha256"]
    if record["signed"] != digest:
        raise VerificationError(f"{path}: signs another manifest (integrity {record['signed'][:16]}..., this one "
                                f"{digest[:16]}...): the manifest was rewritten after signing (bench, an imported "
                                "table) or forged; re-sign with `edgekit sign`")
    return {"signed_by": record["public_key"], "signed": digest}
