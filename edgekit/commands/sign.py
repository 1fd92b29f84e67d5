"""`edgekit keygen` (an Ed25519 key pair) and `edgekit sign BUNDLE` (sign a finished bundle's manifest, e.g. after
`edgekit bench` rewrote it). `edgekit export --sign KEY` signs at export; `edgekit verify --key KEY.pub` checks."""
from __future__ import annotations

from pathlib import Path

from edgekit.commands.common import add_json_flag, emit


def register(sub) -> None:
    k = sub.add_parser("keygen", help="make an Ed25519 key pair for signing bundles (KEY and KEY.pub)")
    k.add_argument("--out", type=Path, required=True, metavar="KEY",
                   help="private key file to write (mode 0600); the public key goes to KEY.pub; never replaced")
    add_json_flag(k)
    k.set_defaults(func=run_keygen)

    s = sub.add_parser("sign", help="sign a finished bundle: manifest.sig over its manifest's integrity record")
    s.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle directory (edgekit export / package)")
    s.add_argument("--key", type=Path, required=True, metavar="KEY", help="Ed25519 private key (edgekit keygen)")
    add_json_flag(s)
    s.set_defaults(func=run_sign)


def run_keygen(args) -> int:
    from edgekit.signing import generate_key_pair

    private, public = generate_key_pair(args.out)
    emit({"private_key": str(private), "public_key": str(public)}, args.json,
         [f"wrote {private} (private: keep it secret) and {public} (give it to whoever runs verify --key)"])
    return 0


def run_sign(args) -> int:
    from edgekit.constants import SIGNATURE
    from edgekit.signing import sign_bundle

    record = sign_bundle(args.bundle, args.key)
    emit({"bundle": str(args.bundle), **record}, args.json,
         [f"signed {args.bundle}: {SIGNATURE} (Ed25519 {record['public_key'][:16]}...) over integrity "
          f"{record['signed'][:16]}..."])
    return 0
