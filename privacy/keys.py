"""Ed25519 signing keys for the ledger.

The private key signs every ledger entry; the public key verifies them. Whoever holds the private
key can rewrite history and re-sign it, so it lives in a file only its owner can read (mode 0600)
and loading a more widely readable file is refused. Verification needs only the public key, which
an auditor should obtain from the key's owner, not from the ledger being checked (a forger who
re-signs a ledger would also swap any key stored inside it).

Files: the private key as unencrypted PKCS#8 PEM at ``path``, the public key as
SubjectPublicKeyInfo PEM at ``path.pub`` (``public_path``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gramfed.privacy.errors import KeyFileError

PRIVATE_MODE = 0o600


def public_path(path: str | os.PathLike[str]) -> Path:
    """Where the public key of the private key at ``path`` lives: ``path`` + ``.pub``."""
    p = Path(path)
    return p.with_name(p.name + ".pub")


def generate(path: str | os.PathLike[str], *, overwrite: bool = False) -> Ed25519PublicKey:
    """Create a key pair: the private key at ``path`` (mode 0600), the public one beside it.

    The private file is created with mode 0600 from the start (never written and chmod-ed later),
    and an existing key is never replaced unless ``overwrite`` is given: losing it makes the
    ledger unverifiable against the published public key.
    """
    target = Path(path)
    pub = public_path(target)
    if not overwrite:
        for existing in (target, pub):
            if existing.exists():
                raise KeyFileError(f"{existing} already exists; refusing to overwrite a key")
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if overwrite else os.O_EXCL)
    fd = os.open(target, flags, PRIVATE_MODE)
    try:
        # An existing file keeps its old mode under O_CREAT, so set it explicitly.
        os.fchmod(fd, PRIVATE_MODE)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    public = key.public_key()
    pub.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def load_private(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load a signing key, refusing a file that group or others may read or write."""
    p = Path(path)
    try:
        info = p.stat()
    except FileNotFoundError:
        raise KeyFileError(
            f"signing key {p} not found; create one with `gramfed audit keygen`"
        ) from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"signing key {p} is accessible by group or others (mode {mode:04o});"
            f" restrict it with `chmod 600 {p}`"
        )
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{p} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Load a verification key (PEM public key, or the private key file it belongs to)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"public key {p} not found") from None
    except IsADirectoryError:
        raise KeyFileError(f"{p} is a directory, not a public key file") from None
    if b"PRIVATE KEY" in data:
        return load_private(p).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{p} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{p} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """A short, stable name for a public key: ``ed25519:`` + 16 hex digits of its SHA-256."""
    return "ed25519:" + hashlib.sha256(raw_public(key)).hexdigest()[:16]
