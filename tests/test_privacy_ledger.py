"""The ledger: append-only storage, hash chain, signatures, tamper detection, key files."""

import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest

from gramfed.privacy import keys
from gramfed.privacy.budget import PoolSpec, Rho
from gramfed.privacy.errors import KeyFileError, LedgerError
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import DOMAIN, GENESIS, Ledger, canonical_json, entry_hash, verify
from gramfed.privacy.mechanisms import DiscreteGaussianMechanism
from gramfed.privacy.rng import SeededBits

COUNT = DiscreteGaussianMechanism(Fraction(50), unit_changes=1)  # rho = 1/100


@pytest.fixture
def filled(tmp_path: Path, key_path: Path) -> Iterator[Path]:
    """A ledger with a pool and eight entries: pool, 5 releases, a refusal, a post-processing."""
    path = tmp_path / "ledger.db"
    with Ledger(path, key_path, create=True) as ledger:
        gate = Gate(ledger, rng=SeededBits(4), test_rng=True)
        gate.create_pool(PoolSpec("census", Rho("1/20")))
        releases = [gate.release("census:record", COUNT, i, requester="a") for i in range(5)]
        with pytest.raises(Exception, match="budget exceeded"):
            gate.release("census:record", COUNT, 0, requester="a")
        gate.postprocess(lambda *v: sum(v), *releases, description="total")
    yield path


def _public(key_path: Path):
    return keys.load_public(keys.public_path(key_path))


def _raw(path: Path) -> sqlite3.Connection:
    """Open the file directly, as a forger would, and remove the append-only triggers."""
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def _row(conn: sqlite3.Connection, seq: int) -> tuple:
    return conn.execute(
        "SELECT kind, pool, rho, spent, record, prev_hash, hash, signature FROM entries"
        " WHERE seq = ?",
        (seq,),
    ).fetchone()


def _rewrite(conn: sqlite3.Connection, seq: int, record: dict, prev: str, signer) -> str:
    text = canonical_json(record)
    digest = entry_hash(prev, text)
    signature = signer.sign(DOMAIN + digest.encode()).hex()
    conn.execute(
        "UPDATE entries SET record = ?, prev_hash = ?, hash = ?, signature = ?, spent = ?"
        " WHERE seq = ?",
        (text, prev, digest, signature, record["spent"], seq),
    )
    return digest


def _resign_from(conn: sqlite3.Connection, start: int, signer, edit=None) -> None:
    """Recompute the chain from entry ``start`` on, signing with ``signer``."""
    prev = GENESIS if start == 1 else _row(conn, start - 1)[6]
    seqs = [
        r[0] for r in conn.execute("SELECT seq FROM entries WHERE seq >= ? ORDER BY seq", (start,))
    ]
    for seq in seqs:
        record = json.loads(_row(conn, seq)[4])
        if edit is not None and seq == start:
            edit(record)
        prev = _rewrite(conn, seq, record, prev, signer)


def test_a_clean_ledger_verifies(filled: Path, key_path: Path) -> None:
    result = verify(filled, _public(key_path))
    assert result.ok and result.entries == 8 and result.first_bad is None
    assert "8 entries" in str(result)
    with Ledger(filled) as ledger:
        assert result.head == ledger.entries()[-1].hash
        assert ledger.verify(_public(key_path)).ok
        assert [e.kind for e in ledger.entries()] == (
            ["pool"] + ["release"] * 5 + ["refusal", "postprocess"]
        )


def test_the_tables_refuse_update_and_delete(filled: Path) -> None:
    conn = sqlite3.connect(filled, isolation_level=None)
    for sql in (
        "UPDATE entries SET rho = '0' WHERE seq = 2",
        "DELETE FROM entries WHERE seq = 8",
        "UPDATE pools SET budget_rho = '100'",
        "DELETE FROM meta",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            conn.execute(sql)
    conn.close()


def test_an_edited_entry_is_named(filled: Path, key_path: Path) -> None:
    conn = _raw(filled)
    record = json.loads(_row(conn, 3)[4])
    record["body"]["requester"] = "someone else"
    conn.execute("UPDATE entries SET record = ? WHERE seq = 3", (canonical_json(record),))
    result = verify(filled, _public(key_path))
    assert not result.ok and result.first_bad == 3 and "edited" in result.reason
    assert result.entries == 2


def test_an_edit_with_a_recomputed_chain_fails_the_signature(filled: Path, key_path: Path) -> None:
    conn = _raw(filled)
    record = json.loads(_row(conn, 4)[4])
    record["rho"] = "0"
    text = canonical_json(record)
    conn.execute(
        "UPDATE entries SET record = ?, rho = '0', hash = ? WHERE seq = 4",
        (text, entry_hash(_row(conn, 3)[6], text)),
    )
    result = verify(filled, _public(key_path))
    assert result.first_bad == 4 and "signature" in result.reason


def test_a_deleted_entry_is_named(filled: Path, key_path: Path) -> None:
    _raw(filled).execute("DELETE FROM entries WHERE seq = 5")
    result = verify(filled, _public(key_path))
    assert not result.ok and result.first_bad == 5 and "missing" in result.reason


def test_reordered_entries_are_named(filled: Path, key_path: Path) -> None:
    conn = _raw(filled)
    three, four = _row(conn, 3), _row(conn, 4)
    update = (
        "UPDATE entries SET kind = ?, pool = ?, rho = ?, spent = ?, record = ?, prev_hash = ?,"
        " hash = ?, signature = ? WHERE seq = ?"
    )
    conn.execute("UPDATE entries SET hash = 'x' WHERE seq = 3")  # keep hash unique meanwhile
    conn.execute(update, (*three, 4))
    conn.execute(update, (*four, 3))
    result = verify(filled, _public(key_path))
    assert not result.ok and result.first_bad == 3


def test_an_entry_resigned_with_another_key_is_named(
    filled: Path, key_path: Path, tmp_path: Path
) -> None:
    other = keys.load_private(_other_key(tmp_path))
    conn = _raw(filled)
    _resign_from(conn, 6, other, edit=lambda r: r["body"].update(requester="forger"))
    result = verify(filled, _public(key_path))
    assert not result.ok and result.first_bad == 6 and "signature" in result.reason
    # The forger's own key verifies the forged chain: trust must come from the key's owner.
    assert verify(filled, keys.load_public(keys.public_path(_other_key(tmp_path)))).first_bad == 1


def test_a_whole_ledger_resigned_with_another_key_fails_at_the_first_entry(
    filled: Path, key_path: Path, tmp_path: Path
) -> None:
    other_path = _other_key(tmp_path)
    conn = _raw(filled)
    _resign_from(conn, 1, keys.load_private(other_path))
    assert verify(filled, _public(key_path)).first_bad == 1
    assert verify(filled, keys.load_public(keys.public_path(other_path))).ok


def test_columns_that_disagree_with_the_record_are_named(filled: Path, key_path: Path) -> None:
    _raw(filled).execute("UPDATE entries SET spent = '0' WHERE seq = 4")
    result = verify(filled, _public(key_path))
    assert result.first_bad == 4 and "disagree" in result.reason


def test_an_edited_pools_table_is_detected(filled: Path, key_path: Path) -> None:
    _raw(filled).execute("UPDATE pools SET spec = '{}'")
    result = verify(filled, _public(key_path))
    assert not result.ok and "pools table" in result.reason


def test_a_resigned_overspend_is_caught_by_the_running_totals(filled: Path, key_path: Path) -> None:
    # Even with the signing key, a ledger that spends past its budget does not verify.
    conn = _raw(filled)
    _resign_from(
        conn,
        2,
        keys.load_private(key_path),
        edit=lambda r: r.update(rho="1", spent="1"),
    )
    conn.execute("UPDATE entries SET rho = '1' WHERE seq = 2")
    result = verify(filled, _public(key_path))
    assert result.first_bad == 2 and "overspends" in result.reason


def _other_key(tmp_path: Path) -> Path:
    path = tmp_path / "forger" / "key"
    if not path.exists():
        keys.generate(path)
    return path


# --------------------------------------------------------------------------- opening


@pytest.mark.parametrize(("durability", "level"), [(None, 1), ("normal", 1), ("full", 2)])
def test_ledger_uses_wal_and_the_chosen_sync_level(
    filled: Path, key_path: Path, durability: str | None, level: int
) -> None:
    options = {} if durability is None else {"durability": durability}
    with Ledger(filled, key_path, **options) as ledger:
        conn = ledger._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
    with pytest.raises(ValueError, match="durability"):
        Ledger(filled, key_path, durability="off")  # type: ignore[arg-type]


def test_opening_errors_are_clear(tmp_path: Path, key_path: Path, filled: Path) -> None:
    with pytest.raises(LedgerError, match="not found"):
        Ledger(tmp_path / "missing.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a gramfed ledger"):
        Ledger(junk)
    with pytest.raises(LedgerError, match="not a"):
        verify(junk, _public(key_path))
    with pytest.raises(LedgerError, match="another key"):
        Ledger(filled, _other_key(tmp_path))
    with pytest.raises(LedgerError, match="without a signing key"), Ledger(filled).write():
        pass


def test_pools_are_created_once(tmp_path: Path, key_path: Path) -> None:
    with Ledger(tmp_path / "l.db", key_path, create=True) as ledger:
        spec = PoolSpec("census", Rho(1))
        assert ledger.create_pool(spec) == spec
        assert ledger.create_pool(spec) == spec  # idempotent
        with pytest.raises(LedgerError, match="another spec"):
            ledger.create_pool(PoolSpec("census", Rho(2)))
        assert ledger.pools() == [spec]
        assert len(ledger.entries()) == 1


def test_the_writer_itself_refuses_an_overspend(tmp_path: Path, key_path: Path) -> None:
    with Ledger(tmp_path / "l.db", key_path, create=True) as ledger:
        ledger.create_pool(PoolSpec("census", Rho(1)))
        with pytest.raises(LedgerError, match="overspend"), ledger.write() as w:
            w.append("release", pool="census:record", rho=Fraction(2), body={})
        with pytest.raises(LedgerError, match="cannot charge"), ledger.write() as w:
            w.append("refusal", pool="census:record", rho=Fraction(1), body={})
        assert ledger.spent("census:record") == 0 and len(ledger.entries()) == 1


# --------------------------------------------------------------------------- key files


def test_generated_private_keys_are_owner_only(key_path: Path) -> None:
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert keys.public_path(key_path).exists()
    private = keys.load_private(key_path)
    assert keys.raw_public(private.public_key()) == keys.raw_public(_public(key_path))
    assert keys.fingerprint(_public(key_path)).startswith("ed25519:")


def test_keys_are_never_overwritten_silently(key_path: Path) -> None:
    with pytest.raises(KeyFileError, match="already exists"):
        keys.generate(key_path)
    old = key_path.read_bytes()
    keys.generate(key_path, overwrite=True)
    assert key_path.read_bytes() != old
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_loose_key_permissions_are_refused(key_path: Path, mode: int) -> None:
    os.chmod(key_path, mode)
    with pytest.raises(KeyFileError, match=f"mode {mode:04o}.*chmod 600"):
        keys.load_private(key_path)


def test_bad_key_files_are_refused(tmp_path: Path, key_path: Path) -> None:
    with pytest.raises(KeyFileError, match="not found"):
        keys.load_private(tmp_path / "none")
    with pytest.raises(KeyFileError, match="not found"):
        keys.load_public(tmp_path / "none.pub")
    garbage = tmp_path / "garbage.pub"
    garbage.write_text("hello")
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        keys.load_public(garbage)
    assert keys.raw_public(keys.load_public(key_path)) == keys.raw_public(_public(key_path))
