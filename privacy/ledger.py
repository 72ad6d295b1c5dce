"""The privacy ledger: an append-only, hash-chained, Ed25519-signed record in embedded SQLite.

Every decision of the gate is one entry: a pool's creation, a release and its cost, a refusal, a
post-processing step with its parents, an exact (non-DP) release to a trusted recipient, a
mechanism that failed after touching data (charged in full). Budgets are enforced from it.

Schema (format ``gramfed-ledger/1``)::

    meta(key TEXT PRIMARY KEY, value TEXT)           format, ledger uuid, public key, created
    entries(seq INTEGER PRIMARY KEY,                 1, 2, 3, ... without gaps
            kind TEXT, pool TEXT NULL,               copies of fields of `record`, for indexing
            rho TEXT, spent TEXT NULL,               rho charged; pool's running total after it
            record TEXT,                             canonical JSON of the entry (what is hashed)
            prev_hash TEXT, hash TEXT UNIQUE,        hash = SHA-256(prev_hash "\\n" record)
            signature TEXT)                          Ed25519 over DOMAIN || hash
    pools(pool TEXT PRIMARY KEY, dataset, unit, budget_rho, delta, spec, created_seq)

Triggers make all three tables append-only: UPDATE and DELETE abort. That stops mistakes, not a
forger with file access; the chain and the signatures are what make tampering evident, and
``verify`` names the first entry that is edited, missing, out of order or signed by another key.
Rho amounts are exact fractions in text form, so the running total is exact. Dropping entries at
the tail cannot be detected from the file alone; record ``Verification.head`` elsewhere to pin it.

Concurrency and crashes. Every append runs inside ``BEGIN IMMEDIATE``, which takes SQLite's
single write lock across all processes, so "read the pool's running total, check it, append the
new total" is atomic: two processes can never both spend the last part of a budget. The gate
keeps the reservation *inside* that transaction: it checks the budget, draws the noise and
appends the entry while holding the lock, and returns the released value only after ``COMMIT``
has returned. A process killed at any point before that leaves an uncommitted transaction, which
SQLite discards on the next open: nothing spent, and no value ever left the process, so the
noise it drew protects nothing and costs nothing. Killed after the commit, the spend is on disk
and the value is lost: charged but not released, the safe direction. There is no separate
reservation row that a crash could leave behind, at the price that appends to one ledger are
serialized (the hash chain serializes them anyway).

Durability. WAL mode with ``synchronous=NORMAL`` (``durability="normal"``, the default): COMMIT
returns only after the transaction's WAL frames, commit marker included, have been written to
the operating system with ``write()``. From then on the spend belongs to the kernel, not to the
process, so a kill at any later moment cannot lose it; the next connection reads it from the WAL
(rebuilding the WAL index if the killer left it stale). What NORMAL gives up is durability
against an operating-system crash or power cut, which can roll back the last commits while their
values are already out (under-counting spend). ``durability="full"`` (``synchronous=FULL``)
fsyncs the WAL at every commit and closes that gap, at the price of one fsync per release,
which dominates the release latency (bench/privacy_gate.py: median about 4 ms against 0.4 ms on
a 2-core virtual machine). Use it where host crashes are a concern and that latency is fine.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gramfed.privacy import keys
from gramfed.privacy.budget import PoolSpec, fraction_text
from gramfed.privacy.errors import LedgerError

FORMAT = "gramfed-ledger/1"
GENESIS = "0" * 64
DOMAIN = b"gramfed-ledger/1 entry\n"

POOL = "pool"
RELEASE = "release"
REFUSAL = "refusal"
POSTPROCESS = "postprocess"
NON_DP = "non_dp"
FAILED = "failed"
KINDS = frozenset({POOL, RELEASE, REFUSAL, POSTPROCESS, NON_DP, FAILED})
CHARGING = frozenset({RELEASE, FAILED})  # the only kinds that spend budget

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS entries (
        seq INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        pool TEXT,
        rho TEXT NOT NULL,
        spent TEXT,
        record TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        signature TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS entries_by_pool ON entries (pool, seq)",
    """CREATE TABLE IF NOT EXISTS pools (
        pool TEXT PRIMARY KEY,
        dataset TEXT NOT NULL,
        unit TEXT NOT NULL,
        budget_rho TEXT NOT NULL,
        delta REAL NOT NULL,
        spec TEXT NOT NULL,
        created_seq INTEGER NOT NULL
    )""",
] + [
    f"""CREATE TRIGGER IF NOT EXISTS {table}_no_{op} BEFORE {op.upper()} ON {table}
        BEGIN SELECT RAISE(ABORT, 'the gramfed ledger is append-only'); END"""
    for table in ("meta", "entries", "pools")
    for op in ("update", "delete")
]


def canonical_json(value: Any) -> str:
    """The one text form of a JSON value that is hashed: sorted keys, no spaces, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def entry_hash(prev_hash: str, record: str) -> str:
    """SHA-256 of the previous entry's hash and this entry's canonical record."""
    return hashlib.sha256(f"{prev_hash}\n{record}".encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One ledger entry, as read back."""

    seq: int
    kind: str
    pool: str | None
    rho: Fraction
    spent: Fraction | None
    time: str
    body: dict[str, Any]
    hash: str

    @classmethod
    def _from_row(cls, record: str, digest: str) -> Entry:
        r = json.loads(record)
        return cls(
            seq=r["seq"],
            kind=r["kind"],
            pool=r["pool"],
            rho=Fraction(r["rho"]),
            spent=None if r["spent"] is None else Fraction(r["spent"]),
            time=r["time"],
            body=r["body"],
            hash=digest,
        )


@dataclass(frozen=True)
class Verification:
    """The outcome of ``Ledger.verify``: ``ok``, or the first bad entry and why."""

    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str = ""
    head: str = GENESIS

    def __str__(self) -> str:
        if self.ok:
            return f"ledger verifies: {self.entries} entries, head {self.head}"
        return f"ledger does not verify: entry {self.first_bad}: {self.reason}"


Durability = Literal["full", "normal"]


class Ledger:
    """A handle on one ledger file. Safe to use from several threads and processes at once.

    Each thread (and each process after ``fork``) gets its own SQLite connection; SQLite's file
    locks coordinate them. Writing needs the signing key; reading and verifying do not.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        signing_key: Ed25519PrivateKey | str | os.PathLike[str] | None = None,
        *,
        create: bool = False,
        durability: Durability = "normal",
        timeout: float = 60.0,
    ) -> None:
        self.path = Path(path)
        if durability not in ("full", "normal"):
            raise ValueError(f"durability must be 'full' or 'normal', got {durability!r}")
        self._synchronous = durability.upper()
        self._timeout = timeout
        self._local = threading.local()
        self._pools: dict[str, PoolSpec] = {}
        if signing_key is None or isinstance(signing_key, Ed25519PrivateKey):
            self._key = signing_key
        else:
            self._key = keys.load_private(signing_key)
        if not self.path.exists():
            if not create:
                raise LedgerError(f"ledger {self.path} not found")
            if self._key is None:
                raise LedgerError("creating a ledger needs a signing key")
        self._initialise(create)

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, timeout=self._timeout, isolation_level=None, check_same_thread=True
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path} is not a gramfed ledger: {exc}") from None
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        # A connection must not cross fork: the child would share the parent's locks and file
        # offsets. Keyed by pid, a forked child opens its own.
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.conn = self._connect()
            local.pid = os.getpid()
        return local.conn

    def _begin(self, conn: sqlite3.Connection) -> None:
        """``BEGIN IMMEDIATE``, polling for the write lock every millisecond or so.

        SQLite's own busy handler backs off to 100 ms sleeps, so under a steady stream of
        writers a process that has waited a while keeps losing the lock to newer arrivals. Short
        randomized polls share the lock far more evenly. The connection's busy timeout is set to
        zero only for this statement, since other statements may legitimately wait (e.g. behind
        crash recovery of the WAL).
        """
        deadline = time.monotonic() + self._timeout
        pause = 1e-4
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc):
                        raise
                    if time.monotonic() > deadline:
                        raise LedgerError(
                            f"ledger {self.path} stayed locked for {self._timeout:g} s"
                        ) from None
                time.sleep(random.uniform(0.5, 1.5) * pause)
                pause = min(2 * pause, 1e-3)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self._timeout * 1000)}")

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _has_schema(self, conn: sqlite3.Connection) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        return conn.execute(query).fetchone() is not None

    def _initialise(self, create: bool) -> None:
        conn = self._conn
        try:
            # Only a new ledger needs the write lock; opening one that exists must not queue
            # behind busy writers.
            if not self._has_schema(conn):
                if not create:
                    raise LedgerError(f"{self.path} is not a gramfed ledger (no meta table)")
                self._begin(conn)
            if not self._has_schema(conn):
                assert self._key is not None
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [
                        ("format", FORMAT),
                        ("uuid", str(uuid.uuid4())),
                        ("public_key", keys.raw_public(self._key.public_key()).hex()),
                        ("created", _now()),
                    ],
                )
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise LedgerError(f"{self.path} is not a gramfed ledger: {exc}") from None
            raise
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT:
            raise LedgerError(f"{self.path} has format {meta.get('format')!r}, not {FORMAT!r}")
        self.uuid: str = meta["uuid"]
        self.public_key_hex: str = meta["public_key"]
        if self._key is not None:
            mine = keys.raw_public(self._key.public_key()).hex()
            if mine != self.public_key_hex:
                raise LedgerError(
                    f"the signing key does not belong to ledger {self.path} (its entries are"
                    " signed with another key)"
                )

    # ------------------------------------------------------------------ reading

    def pool(self, key: str) -> PoolSpec:
        """The spec of an existing pool."""
        spec = self._pools.get(key)
        if spec is None:
            row = self._conn.execute("SELECT spec FROM pools WHERE pool = ?", (key,)).fetchone()
            if row is None:
                raise LedgerError(f"unknown privacy budget pool {key!r}; create it first")
            spec = self._pools[key] = PoolSpec.from_json(json.loads(row[0]))
        return spec

    def pools(self) -> list[PoolSpec]:
        rows = self._conn.execute("SELECT spec FROM pools ORDER BY created_seq").fetchall()
        return [PoolSpec.from_json(json.loads(r[0])) for r in rows]

    def spent(self, key: str) -> Fraction:
        """The committed rho spent from a pool."""
        self.pool(key)
        return _spent(self._conn, key)

    def remaining(self, key: str) -> Fraction:
        return self.pool(key).budget.value - self.spent(key)

    def entries(
        self, *, pool: str | None = None, kinds: tuple[str, ...] | None = None
    ) -> list[Entry]:
        """Entries in order, optionally those of one pool and of some kinds."""
        sql = "SELECT record, hash FROM entries"
        where, args = [], []
        if pool is not None:
            where.append("pool = ?")
            args.append(pool)
        if kinds is not None:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            args.extend(kinds)
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._conn.execute(sql + " ORDER BY seq", args).fetchall()
        return [Entry._from_row(record, digest) for record, digest in rows]

    def entry(self, seq: int) -> Entry:
        row = self._conn.execute(
            "SELECT record, hash FROM entries WHERE seq = ?", (seq,)
        ).fetchone()
        if row is None:
            raise LedgerError(f"ledger {self.path} has no entry {seq}")
        return Entry._from_row(*row)

    # ------------------------------------------------------------------ writing

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """One atomic group of appends under SQLite's write lock (``BEGIN IMMEDIATE``).

        Everything appended becomes durable together when the block exits normally, or not at
        all if it raises or the process dies first.
        """
        if self._key is None:
            raise LedgerError("this ledger handle was opened without a signing key")
        conn = self._conn
        self._begin(conn)
        writer = Writer(self, conn, self._key)
        try:
            yield writer
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            writer._open = False

    def create_pool(self, spec: PoolSpec) -> PoolSpec:
        """Create a pool, or return it if it exists with the same spec."""
        with self.write() as w:
            row = w.conn.execute("SELECT spec FROM pools WHERE pool = ?", (spec.key,)).fetchone()
            if row is not None:
                existing = PoolSpec.from_json(json.loads(row[0]))
                if existing != spec:
                    raise LedgerError(
                        f"pool {spec.key!r} already exists with another spec"
                        f" (budget rho={float(existing.budget.value):.6g},"
                        f" delta={existing.delta:g})"
                    )
                return existing
            entry = w.append(POOL, pool=spec.key, body=spec.to_json())
            w.conn.execute(
                "INSERT INTO pools (pool, dataset, unit, budget_rho, delta, spec, created_seq)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    spec.key,
                    spec.dataset,
                    spec.unit.name,
                    fraction_text(spec.budget.value),
                    spec.delta,
                    canonical_json(spec.to_json()),
                    entry.seq,
                ),
            )
        self._pools[spec.key] = spec
        return spec

    # ------------------------------------------------------------------ verification

    def verify(self, public_key: Ed25519PublicKey) -> Verification:
        """Check the whole chain against a trusted public key; name the first bad entry."""
        return verify(self.path, public_key)


class Writer:
    """Appends inside one ``Ledger.write()`` transaction."""

    def __init__(self, ledger: Ledger, conn: sqlite3.Connection, key: Ed25519PrivateKey) -> None:
        self.ledger = ledger
        self.conn = conn
        self._key = key
        self._open = True

    def spent(self, pool: str) -> Fraction:
        """The pool's committed spend as seen inside this transaction (exact, current)."""
        return _spent(self.conn, pool)

    def append(
        self,
        kind: str,
        *,
        pool: str | None = None,
        rho: Fraction = Fraction(0),
        body: dict[str, Any],
    ) -> Entry:
        """Sign and append one entry. Charging kinds add ``rho`` to the pool's running total,
        which may never pass the pool's budget; other kinds must charge nothing."""
        if not self._open:
            raise LedgerError("this writer's transaction has ended")
        if kind not in KINDS:
            raise LedgerError(f"unknown ledger entry kind {kind!r}")
        rho = Fraction(rho)
        if rho < 0 or (rho and kind not in CHARGING):
            raise LedgerError(f"a {kind} entry cannot charge rho={rho}")
        spent: Fraction | None = None
        if pool is not None:
            spent = Fraction(0) if kind == POOL else _spent(self.conn, pool) + rho
            if kind != POOL and spent > self.ledger.pool(pool).budget.value:
                raise LedgerError(f"refusing to record an overspend of pool {pool!r}")
        last = self.conn.execute(
            "SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
        entry = Entry(seq, kind, pool, rho, spent, _now(), body, "")
        record = canonical_json(
            {
                "seq": seq,
                "kind": kind,
                "pool": pool,
                "rho": fraction_text(rho),
                "spent": None if spent is None else fraction_text(spent),
                "time": entry.time,
                "body": body,
            }
        )
        digest = entry_hash(prev, record)
        signature = self._key.sign(DOMAIN + digest.encode()).hex()
        self.conn.execute(
            "INSERT INTO entries (seq, kind, pool, rho, spent, record, prev_hash, hash, signature)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                kind,
                pool,
                fraction_text(rho),
                None if spent is None else fraction_text(spent),
                record,
                prev,
                digest,
                signature,
            ),
        )
        return Entry(seq, kind, pool, rho, spent, entry.time, body, digest)


def _spent(conn: sqlite3.Connection, pool: str) -> Fraction:
    row = conn.execute(
        "SELECT spent FROM entries WHERE pool = ? ORDER BY seq DESC LIMIT 1", (pool,)
    ).fetchone()
    return Fraction(row[0]) if row else Fraction(0)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def verify(path: str | os.PathLike[str], public_key: Ed25519PublicKey) -> Verification:
    """Verify the ledger at ``path`` read-only, against a trusted public key.

    Checks, entry by entry: sequence numbers run 1, 2, 3, ... (a gap is a deleted entry); each
    entry links to its predecessor's hash (reordering, removal); its hash matches its record
    (editing); its signature verifies with ``public_key`` (forging, re-signing with another
    key); the indexed columns match the signed record; pools are created once before use; the
    running totals add up exactly and never pass a budget. Then the pools table must match the
    signed pool entries.
    """
    p = Path(path)
    if not p.exists():
        raise LedgerError(f"ledger {p} not found")
    if p.is_dir():
        raise LedgerError(f"{p} is a directory, not a ledger file")
    try:
        conn = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            if not {"meta", "entries", "pools"} <= tables:
                raise LedgerError(f"{p} is not a gramfed ledger")
            return _verify_rows(conn, public_key)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{p} is not a readable gramfed ledger: {exc}") from None


def _verify_rows(conn: sqlite3.Connection, public_key: Ed25519PublicKey) -> Verification:
    prev = GENESIS
    count = 0
    budgets: dict[str, Fraction] = {}
    spent: dict[str, Fraction] = {}
    specs: dict[str, str] = {}

    def bad(seq: int, reason: str) -> Verification:
        return Verification(False, count, seq, reason, prev)

    rows = conn.execute(
        "SELECT seq, kind, pool, rho, spent, record, prev_hash, hash, signature"
        " FROM entries ORDER BY seq"
    )
    for seq, kind, pool, rho, total, record, prev_hash, digest, signature in rows:
        expected = count + 1
        if seq != expected:
            return bad(expected, f"entry {expected} is missing (deleted)")
        if prev_hash != prev:
            return bad(seq, "does not link to the previous entry (edited, reordered or removed)")
        if entry_hash(prev, record) != digest:
            return bad(seq, "its content does not match its hash (edited)")
        try:
            public_key.verify(bytes.fromhex(signature), DOMAIN + digest.encode())
        except (InvalidSignature, ValueError):
            return bad(seq, "its signature does not verify with the given public key")
        try:
            r = json.loads(record)
            fields = (r["seq"], r["kind"], r["pool"], r["rho"], r["spent"])
            charged = Fraction(r["rho"])
            budget = Fraction(r["body"]["budget_rho"]) if kind == POOL else None
        except (ValueError, KeyError, TypeError, ZeroDivisionError):
            return bad(seq, "its record is malformed")
        if fields != (seq, kind, pool, rho, total) or kind not in KINDS:
            return bad(seq, "its indexed columns disagree with its signed record")
        if kind == POOL:
            if pool in budgets:
                return bad(seq, f"pool {pool!r} is created twice")
            budgets[pool] = budget
            specs[pool] = canonical_json(r["body"])
            running = Fraction(0)
        elif pool is not None:
            if pool not in budgets:
                return bad(seq, f"it uses pool {pool!r} before the pool is created")
            running = spent[pool] + charged
            if charged and kind not in CHARGING:
                return bad(seq, f"a {kind} entry charges budget")
            if running > budgets[pool]:
                return bad(seq, f"it overspends pool {pool!r}")
        if pool is not None:
            if total is None or Fraction(total) != running:
                return bad(seq, f"pool {pool!r}'s running total does not add up")
            spent[pool] = running
        prev = digest
        count += 1
    table = {pool: spec for pool, spec in conn.execute("SELECT pool, spec FROM pools").fetchall()}
    if table != specs:
        return Verification(
            False, count, None, "the pools table disagrees with the signed pool entries", prev
        )
    return Verification(True, count, None, "", prev)
