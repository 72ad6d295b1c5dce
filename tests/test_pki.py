"""The project CA: certificates, key file modes, allowlist revocation, CLI errors."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from gramfed.platform.cli.main import app
from gramfed.platform.federation import pki


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    pki.init(tmp_path / "pki")
    return tmp_path / "pki"


def _cert(folder: Path, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((folder / "issued" / f"{name}.crt").read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_and_certificates_chain_with_private_keys_0600(folder: Path) -> None:
    pki.issue(folder, "alice")
    pki.issue(folder, "coord", server=True, hosts=["fed.example.org", "10.0.0.7"])
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _mode(folder / "ca.key") == 0o600
    for name in ("alice", "coord"):
        cert = _cert(folder, name)
        assert _mode(folder / "issued" / f"{name}.key") == 0o600
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        cert.verify_directly_issued_by(ca)
        assert pki.identity((folder / "issued" / f"{name}.crt").read_bytes())[0] == name
    client, server = _cert(folder, "alice"), _cert(folder, "coord")
    usage = x509.ExtendedKeyUsage
    assert list(client.extensions.get_extension_for_class(usage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert list(server.extensions.get_extension_for_class(usage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "fed.example.org"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.0.0.7")
    }


def test_participant_certificates_are_short_lived(folder: Path) -> None:
    pki.issue(folder, "alice")
    pki.issue(folder, "bob", hours=2)
    for name, hours in (("alice", pki.PARTICIPANT_HOURS), ("bob", 2)):
        cert = _cert(folder, name)
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert life == dt.timedelta(hours=hours)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    assert pki.issue(folder, "carol", valid_from=old).expired


def test_revocation_is_by_allowlist_and_seen_without_restart(folder: Path) -> None:
    alice = pki.issue(folder, "alice")
    pki.issue(folder, "bob")
    allow = pki.Allowlist(folder / pki.ALLOWLIST)
    assert allow.allows("alice", alice.serial)
    assert not allow.allows("alice", "ff")  # a certificate the CA issued under another serial
    pki.revoke(folder, "alice")
    assert not allow.allows("alice", alice.serial)
    assert [e.name for e in pki.load_allowlist(folder)] == ["bob"]
    reissued = pki.issue(folder, "alice")  # a new certificate; the old serial stays refused
    assert allow.allows("alice", reissued.serial)
    assert not allow.allows("alice", alice.serial)


def test_bad_requests_are_refused(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(pki.PKIError, match="already holds a CA"):
        pki.init(folder)
    with pytest.raises(pki.PKIError, match="certificate name"):
        pki.issue(folder, "../escape")
    with pytest.raises(pki.PKIError, match="only server certificates"):
        pki.issue(folder, "alice", hosts=["x"])
    with pytest.raises(pki.PKIError, match="lifetime must be positive"):
        pki.issue(folder, "alice", hours=0)
    with pytest.raises(pki.PKIError, match="no allowlisted certificate named 'zed'"):
        pki.revoke(folder, "zed")
    with pytest.raises(pki.PKIError, match="holds no CA"):
        pki.issue(tmp_path, "alice")
    pki.issue(folder, "alice")
    key = folder / "issued" / "alice.key"
    os.chmod(key, 0o644)
    with pytest.raises(pki.PKIError, match="accessible by group or others"):
        pki.Credentials.issued(folder, "alice")
    os.chmod(key, 0o600)
    assert pki.Credentials.issued(folder, "alice").ca == (folder / "ca.crt").read_bytes()
    with pytest.raises(pki.PKIError, match="not a PEM certificate"):
        pki.Credentials.load(key, key, folder / "ca.crt")


def test_cli_round_trip_and_one_line_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    folder = str(tmp_path / "p")
    assert runner.invoke(app, ["pki", "init", "-d", folder]).exit_code == 0
    result = runner.invoke(app, ["pki", "issue", "coord", "--server", "--host", "h1", "-d", folder])
    assert result.exit_code == 0 and "server certificate" in result.output
    assert runner.invoke(app, ["pki", "issue", "alice", "-d", folder]).exit_code == 0
    listed = runner.invoke(app, ["pki", "list", "-d", folder])
    assert listed.exit_code == 0 and "alice" in listed.output and "coord" in listed.output
    assert runner.invoke(app, ["pki", "revoke", "alice", "-d", folder]).exit_code == 0
    for args, message in (
        (["pki", "init", "-d", folder], "already holds a CA"),
        (["pki", "revoke", "alice", "-d", folder], "no allowlisted certificate"),
        (["pki", "issue", "a b", "-d", folder], "certificate name"),
        (["pki", "list", "-d", str(tmp_path / "none")], "no allowlist"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
