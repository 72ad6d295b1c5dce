"""``gramfed audit keygen`` and ``gramfed audit verify``."""

import sqlite3
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gramfed.platform.cli.main import app
from gramfed.privacy.budget import PoolSpec, Rho
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.privacy.mechanisms import DiscreteLaplaceMechanism

runner = CliRunner()


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "ledger.key"
    result = runner.invoke(app, ["audit", "keygen", "--out", str(path)])
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def ledger(tmp_path: Path, key: Path) -> Path:
    path = tmp_path / "ledger.db"
    with Ledger(path, key, create=True) as led:
        gate = Gate(led)
        gate.create_pool(PoolSpec("survey", Rho(1)))
        for answer in range(3):
            gate.release("survey:record", DiscreteLaplaceMechanism(2, 1), answer, requester="cli")
    return path


def test_keygen_writes_an_owner_only_key_pair(key: Path) -> None:
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Path(f"{key}.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")


def test_keygen_refuses_to_overwrite(key: Path) -> None:
    result = runner.invoke(app, ["audit", "keygen", "--out", str(key)])
    assert result.exit_code == 2
    assert "already exists" in result.output and "Traceback" not in result.output
    assert runner.invoke(app, ["audit", "keygen", "--out", str(key), "--force"]).exit_code == 0


def test_verify_accepts_an_intact_ledger(ledger: Path, key: Path) -> None:
    result = runner.invoke(app, ["audit", "verify", str(ledger), "-k", f"{key}.pub"])
    assert result.exit_code == 0, result.output
    assert "ok: 4 entries verify" in result.output


def test_verify_names_the_first_bad_entry(ledger: Path, key: Path) -> None:
    conn = sqlite3.connect(ledger, isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET record = replace(record, 'cli', 'eve') WHERE seq = 3")
    conn.close()
    result = runner.invoke(app, ["audit", "verify", str(ledger), "-k", f"{key}.pub"])
    assert result.exit_code == 1
    assert "entry 3" in result.output and "edited" in result.output


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda led, key, tmp: [str(tmp / "missing.db"), "-k", f"{key}.pub"], "not found"),
        (lambda led, key, tmp: [str(led), "-k", str(tmp / "missing.pub")], "not found"),
        (lambda led, key, tmp: [str(tmp), "-k", f"{key}.pub"], "directory"),
        (lambda led, key, tmp: [str(key), "-k", f"{key}.pub"], "not a"),
    ],
    ids=["missing ledger", "missing key", "directory", "not a database"],
)
def test_verify_user_errors_are_one_line(
    make_args, message: str, ledger: Path, key: Path, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["audit", "verify", *make_args(ledger, key, tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_audit_is_listed_in_help() -> None:
    result = runner.invoke(app, ["audit", "--help"])
    assert result.exit_code == 0
    assert "keygen" in result.output and "verify" in result.output
