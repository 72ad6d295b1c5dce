"""The project's public-key infrastructure: one CA, short-lived certificates, an allowlist.

Layout of a PKI folder::

    ca.key  ca.crt          the project CA (ECDSA P-256; the key is mode 0600)
    issued/NAME.crt         a participant's (client) or the coordinator's (server) certificate
    issued/NAME.key         its private key (mode 0600, created so, never chmod-ed later)
    allowlist.json          the certificates currently allowed: name, serial, kind, expiry

Why ECDSA P-256: it is the curve every TLS stack accepts for certificates, including the
BoringSSL inside grpcio; Ed25519 certificates are not accepted by all gRPC builds.

Revocation is by allowlist rather than CRL: the coordinator admits a peer only if the
certificate's (name, serial) pair is listed, and re-reads the file when it changes, so
``gramfed pki revoke NAME`` takes effect on the next call without a restart. Participant
certificates are short-lived (24 hours by default), which bounds the damage of a stolen key
even if nobody revokes it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import stat
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
ALLOWLIST = "allowlist.json"
ISSUED = "issued"
PRIVATE_MODE = 0o600

PARTICIPANT_HOURS = 24.0
SERVER_HOURS = 24.0 * 30
CA_DAYS = 3650

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PKIError(ValueError):
    """A PKI folder, certificate or key that is missing, malformed or not allowed."""


@dataclass(frozen=True)
class Issued:
    """One allowlisted certificate."""

    name: str
    kind: str  # "participant" or "server"
    serial: str  # hexadecimal
    not_after: str  # ISO 8601, UTC
    hosts: tuple[str, ...] = ()

    @property
    def expired(self) -> bool:
        return dt.datetime.fromisoformat(self.not_after) <= _now()


# --------------------------------------------------------------------------- commands


def init(directory: str | os.PathLike[str], *, common_name: str = "gramfed project CA") -> Path:
    """Create a project CA in ``directory``; refuses to replace an existing one."""
    root = Path(directory)
    if (root / CA_KEY).exists() or (root / CA_CERT).exists():
        raise PKIError(f"{root} already holds a CA; refusing to replace it")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(root / CA_KEY, _key_pem(key))
    (root / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _save_allowlist(root, [])
    return root / CA_CERT


def issue(
    directory: str | os.PathLike[str],
    name: str,
    *,
    server: bool = False,
    hosts: Sequence[str] = (),
    hours: float | None = None,
    valid_from: dt.datetime | None = None,
) -> Issued:
    """Issue a certificate for ``name`` and add it to the allowlist.

    A participant certificate is a TLS client certificate whose subject common name is the
    participant's identity. A server certificate covers ``localhost``, 127.0.0.1, ::1 and
    ``hosts`` (DNS names or IP addresses). ``valid_from`` shifts the validity window (tests
    make expired certificates with it). Re-issuing a name replaces its files and its
    allowlist entry, so the old certificate stops being accepted.
    """
    root = Path(directory)
    _check_name(name)
    ca_key, ca_cert = _load_ca(root)
    lifetime = dt.timedelta(hours=hours if hours is not None else _default_hours(server))
    if lifetime <= dt.timedelta(0):
        raise PKIError(f"a certificate's lifetime must be positive, got {hours} hours")
    start = valid_from or _now() - dt.timedelta(minutes=5)
    not_after = min(start + lifetime, ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name)]
    all_hosts: tuple[str, ...] = ()
    if server:
        all_hosts = tuple(dict.fromkeys(("localhost", "127.0.0.1", "::1", *hosts)))
        alt_names = [_general_name(h) for h in all_hosts]
    elif hosts:
        raise PKIError("only server certificates take --host")
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = root / ISSUED
    folder.mkdir(exist_ok=True, mode=0o700)
    _write_private(folder / f"{name}.key", _key_pem(key), overwrite=True)
    (folder / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    entry = Issued(
        name=name,
        kind="server" if server else "participant",
        serial=f"{cert.serial_number:x}",
        not_after=not_after.isoformat(),
        hosts=all_hosts,
    )
    entries = [e for e in load_allowlist(root) if e.name != name]
    _save_allowlist(root, [*entries, entry])
    return entry


def revoke(directory: str | os.PathLike[str], name: str) -> Issued:
    """Remove ``name`` from the allowlist; its certificate is refused from the next call on."""
    root = Path(directory)
    entries = load_allowlist(root)
    gone = [e for e in entries if e.name == name]
    if not gone:
        known = ", ".join(e.name for e in entries) or "none"
        raise PKIError(f"no allowlisted certificate named {name!r}; allowlisted: {known}")
    _save_allowlist(root, [e for e in entries if e.name != name])
    return gone[0]


def load_allowlist(directory: str | os.PathLike[str]) -> list[Issued]:
    """The allowlisted certificates of a PKI folder (or of an allowlist file)."""
    path = Path(directory)
    if path.is_dir():
        path = path / ALLOWLIST
    try:
        data = json.loads(path.read_text())
        return [Issued(**{**e, "hosts": tuple(e.get("hosts", ()))}) for e in data["certificates"]]
    except FileNotFoundError:
        raise PKIError(f"{path}: no allowlist; create the CA with `gramfed pki init`") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PKIError(f"{path}: not a gramfed allowlist ({exc})") from None


# --------------------------------------------------------------------------- runtime checks


class Allowlist:
    """The coordinator's view of an allowlist file, re-read whenever the file changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._allowed: frozenset[tuple[str, str]] = frozenset()
        self._refresh()

    def _refresh(self) -> None:
        info = self.path.stat()
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            if stamp != self._stamp:
                entries = load_allowlist(self.path)
                self._allowed = frozenset((e.name, e.serial) for e in entries)
                self._stamp = stamp

    def allows(self, name: str, serial: str) -> bool:
        self._refresh()
        return (name, serial) in self._allowed


def identity(cert_pem: bytes) -> tuple[str, str]:
    """(common name, hexadecimal serial) of a PEM certificate presented in a TLS session."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise PKIError("a peer certificate must carry exactly one common name")
    return str(names[0].value), f"{cert.serial_number:x}"


@dataclass(frozen=True)
class Credentials:
    """PEM bytes for one TLS endpoint: its certificate chain, private key and the CA."""

    certificate: bytes
    private_key: bytes
    ca: bytes

    @classmethod
    def load(
        cls,
        cert: str | os.PathLike[str],
        key: str | os.PathLike[str],
        ca: str | os.PathLike[str],
    ) -> Credentials:
        """Read and check the files: PEM certificates, and a key only its owner can read."""
        cert_pem = _read(cert, "certificate")
        ca_pem = _read(ca, "CA certificate")
        for path, data in ((cert, cert_pem), (ca, ca_pem)):
            try:
                x509.load_pem_x509_certificate(data)
            except ValueError:
                raise PKIError(f"{path}: not a PEM certificate") from None
        mode = stat.S_IMODE(Path(key).stat().st_mode) if Path(key).exists() else 0
        if mode & 0o077:
            raise PKIError(
                f"private key {key} is accessible by group or others (mode {mode:04o});"
                f" restrict it with `chmod 600 {key}`"
            )
        key_pem = _read(key, "private key")
        try:
            serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            raise PKIError(f"{key}: not an unencrypted PEM private key") from None
        return cls(cert_pem, key_pem, ca_pem)

    @classmethod
    def issued(cls, directory: str | os.PathLike[str], name: str) -> Credentials:
        """The credentials of ``name`` as laid out by ``issue`` in a PKI folder."""
        issued = Path(directory) / ISSUED
        return cls.load(issued / f"{name}.crt", issued / f"{name}.key", Path(directory) / CA_CERT)


# --------------------------------------------------------------------------- helpers


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _default_hours(server: bool) -> float:
    return SERVER_HOURS if server else PARTICIPANT_HOURS


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise PKIError(
            f"certificate name {name!r} must be 1-64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        _check_name(host)
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write a private key with mode 0600 from the moment the file exists."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if overwrite else os.O_EXCL)
    fd = os.open(path, flags, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)  # an existing file keeps its old mode under O_CREAT
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PKIError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise PKIError(f"{what} {path} is a directory") from None


def _load_ca(root: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if not (root / CA_KEY).exists():
        raise PKIError(f"{root} holds no CA; create one with `gramfed pki init`")
    mode = stat.S_IMODE((root / CA_KEY).stat().st_mode)
    if mode & 0o077:
        raise PKIError(f"CA key {root / CA_KEY} is readable by others (mode {mode:04o})")
    key = serialization.load_pem_private_key((root / CA_KEY).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{root / CA_KEY} is not an ECDSA key")
    return key, x509.load_pem_x509_certificate((root / CA_CERT).read_bytes())


def _save_allowlist(root: Path, entries: list[Issued]) -> None:
    """Replace the allowlist atomically, so a reading coordinator never sees half a file."""
    body = {"certificates": [{**asdict(e), "hosts": list(e.hosts)} for e in entries]}
    tmp = root / (ALLOWLIST + ".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, root / ALLOWLIST)
