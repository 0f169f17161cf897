"""Ed25519 signatures of bundles: who produced a model, not only that it is intact.

A bundle's ``MANIFEST.json`` lists the SHA-256 of every file, so it proves integrity; anyone can
edit a file and reseal the manifest, though. A signature over the manifest's bytes, made with the
producer's private key (``MANIFEST.sig``), lets a downstream team that holds the producer's public
key check the origin too: ``load_bundle(path, public_key="producer.pub")``.

Keys are PEM files (PKCS#8 private key, SubjectPublicKeyInfo public key)::

    python -m trainables.signing keygen --out keys/fusetune     # keys/fusetune (0600) + keys/fusetune.pub
    python -m search.export --name NAME --dest exports/ --sign-key keys/fusetune

or with ``cryptography`` directly::

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from trainables.data.errors import DataError

ALGORITHM = "ed25519"
PASSPHRASE_ENV = "FUSETUNE_SIGN_KEY_PASSPHRASE"
"""Environment variable holding the private key's passphrase, if it has one."""


class SigningError(DataError):
    """A key that cannot be read, or a signature that does not verify; one line."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - cryptography is a dependency
        raise SigningError("signing", "needs the cryptography package (pip install cryptography)") from None
    return serialization, ed25519


def load_private_key(path: str | Path) -> Any:
    serialization, ed25519 = _crypto()
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"--sign-key {path}", f"cannot read it ({exc.strerror or exc})") from None
    password = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(data, password=password.encode() if password else None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"--sign-key {path}", f"not a PEM private key ({' '.join(str(exc).split())[:120]}); "
                           f"a passphrase goes in {PASSPHRASE_ENV}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError(f"--sign-key {path}", f"is a {type(key).__name__}; bundles are signed with Ed25519 keys")
    return key


def load_public_key(key: Any) -> Any:
    """An ``Ed25519PublicKey``, PEM bytes, or the path of a PEM file."""
    serialization, ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    where = "public_key"
    if isinstance(key, (str, Path)) and not str(key).lstrip().startswith("-----BEGIN"):
        where = f"public key {key}"
        try:
            key = Path(key).expanduser().read_bytes()
        except OSError as exc:
            raise SigningError(where, f"cannot read it ({exc.strerror or exc})") from None
    data = key.encode() if isinstance(key, str) else key
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningError(where, f"not a PEM public key ({' '.join(str(exc).split())[:120]})") from None
    if not isinstance(loaded, ed25519.Ed25519PublicKey):
        raise SigningError(where, f"is a {type(loaded).__name__}; bundles are signed with Ed25519 keys")
    return loaded


def key_id(public_key: Any) -> str:
    """A short fingerprint of a public key (SHA-256 of its raw bytes, 16 hex digits)."""
    serialization, _ = _crypto()
    raw = load_public_key(public_key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(message: bytes, private_key: Any) -> dict[str, str]:
    """The signature record of ``message``: algorithm, the signer's key id, the signature (hex)."""
    return {"algorithm": ALGORITHM, "key_id": key_id(private_key.public_key()),
            "signature": private_key.sign(message).hex()}


def verify(message: bytes, record: Any, public_key: Any, where: str) -> None:
    """:class:`SigningError` unless ``record`` is a valid signature of ``message`` by ``public_key``."""
    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key)
    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM or not isinstance(record.get("signature"), str):
        raise SigningError(where, f"the signature file is not an {ALGORITHM} signature record")
    try:
        key.verify(bytes.fromhex(record["signature"]), message)
    except (InvalidSignature, ValueError):
        raise SigningError(where, f"the signature does not verify with public key {key_id(key)} (signed by "
                           f"{record.get('key_id')}, or its files changed and the manifest was resealed)") from None


def keygen(out: str | Path) -> tuple[Path, Path]:
    """Write a new key pair: ``out`` (private, mode 0600) and ``out.pub``; never overwrites."""
    serialization, ed25519 = _crypto()
    out = Path(out).expanduser()
    pub = out.with_name(out.name + ".pub")
    for p in (out, pub):
        if p.exists():
            raise SigningError(str(p), "already exists; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return out, pub


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainables.signing", description="Ed25519 keys for signing bundles.")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("keygen", help="write a new key pair: OUT (private, 0600) and OUT.pub")
    gen.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        private, public = keygen(args.out)
    except SigningError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"private_key": str(private), "public_key": str(public), "key_id": key_id(public.read_bytes())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
