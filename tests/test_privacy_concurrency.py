"""Budgets under real concurrency and real crashes.

Children are separate processes started with ``spawn`` (no state shared with the test), each
with its own ledger handle, as independent services on one machine would be.
"""

import multiprocessing as mp
import os
import random
import signal
import time
from fractions import Fraction
from pathlib import Path

from gramfed.privacy import keys
from gramfed.privacy.budget import PoolSpec, Rho
from gramfed.privacy.errors import BudgetExceeded
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger, verify
from gramfed.privacy.mechanisms import DiscreteGaussianMechanism
from gramfed.privacy.release import value_digest

POOL = "shared:record"
COST = Fraction(1, 300)
MECHANISM = DiscreteGaussianMechanism(Fraction(150), unit_changes=1)  # rho = 1/300 exactly
BUDGET = Fraction(1)
WORKERS = 8
ATTEMPTS = 1000


def _spend(ledger_path: str, key_path: str, worker: int, attempts: int, start, results) -> None:
    with Ledger(ledger_path, key_path) as ledger:
        gate = Gate(ledger)
        start.wait()
        granted = refused = 0
        for i in range(attempts):
            try:
                gate.release(POOL, MECHANISM, i, requester=f"worker-{worker}")
                granted += 1
            except BudgetExceeded:
                refused += 1
    results.put((granted, refused))


def _make_ledger(tmp_path: Path, budget: Fraction) -> tuple[Path, Path]:
    key_path = tmp_path / "ledger.key"
    keys.generate(key_path)
    ledger_path = tmp_path / "ledger.db"
    with Ledger(ledger_path, key_path, create=True) as ledger:
        ledger.create_pool(PoolSpec("shared", Rho(budget)))
    return ledger_path, key_path


def test_concurrent_processes_never_overspend(tmp_path: Path) -> None:
    assert MECHANISM.privacy_map().rho == COST
    ledger_path, key_path = _make_ledger(tmp_path, BUDGET)
    ctx = mp.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_spend,
            args=(str(ledger_path), str(key_path), w, ATTEMPTS // WORKERS, start, results),
        )
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    granted = sum(g for g, _ in outcomes)
    refused = sum(r for _, r in outcomes)
    assert granted + refused == ATTEMPTS
    assert granted == BUDGET // COST == 300

    with Ledger(ledger_path) as ledger:
        releases = ledger.entries(kinds=("release",))
        committed = sum((e.rho for e in releases), Fraction(0))
        assert committed <= BUDGET  # exact: Fractions, no tolerance
        assert committed == granted * COST
        assert ledger.spent(POOL) == committed
        assert len(ledger.entries(kinds=("refusal",))) == refused
        assert len({e.body["requester"] for e in releases}) > 1  # they really interleaved
    assert verify(ledger_path, keys.load_public(keys.public_path(key_path))).ok


def _release_until_killed(ledger_path: str, key_path: str, worker: int, log_dir: str) -> None:
    """Release forever. Before touching data, log the attempt; after a release returns, log it.

    The value function sleeps so that a kill often lands inside the write transaction, between
    the budget check and the commit.
    """
    touched = os.open(f"{log_dir}/touched-{worker}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    released = os.open(f"{log_dir}/released-{worker}", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with Ledger(ledger_path, key_path) as ledger:
        gate = Gate(ledger)
        os.write(released, b"ready\n")
        i = 0
        while True:
            tag = f"w{worker}-{i}"

            def answer(tag: str = tag, i: int = i) -> int:
                os.write(touched, f"{tag}\n".encode())
                time.sleep(random.uniform(0.001, 0.004))
                return i

            r = gate.release(POOL, MECHANISM, answer, requester="killable", description=tag)
            os.write(released, f"{tag} {r.ledger_id} {value_digest(r.value)}\n".encode())
            i += 1


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _wait_until_inside(log_dir: Path, worker: int) -> None:
    """Until the worker has touched data for an attempt that has not returned yet."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        returned = len(_lines(log_dir / f"released-{worker}")) - 1  # minus the "ready" line
        if len(_lines(log_dir / f"touched-{worker}")) > returned:
            return
        time.sleep(0.0002)


def test_processes_killed_mid_release_leave_a_consistent_ledger(tmp_path: Path) -> None:
    ledger_path, key_path = _make_ledger(tmp_path, Fraction(10**6))
    ctx = mp.get_context("spawn")
    chance = random.Random(20240607)
    workers = 0
    for _ in range(3):  # rounds of 4 children, each killed at a random moment
        procs = []
        for _ in range(4):
            p = ctx.Process(
                target=_release_until_killed,
                args=(str(ledger_path), str(key_path), workers, str(tmp_path)),
            )
            p.start()
            procs.append((workers, p))
            workers += 1
        for worker, p in procs:
            deadline = time.monotonic() + 60
            while not _lines(tmp_path / f"released-{worker}"):
                assert time.monotonic() < deadline and p.is_alive(), "child did not start"
                time.sleep(0.01)
        for n, (worker, p) in enumerate(procs):
            time.sleep(chance.uniform(0.02, 0.25))
            if n % 2:
                # Every other child is killed as soon as it is seen inside a transaction, between
                # its budget check and its commit, so that case is certain to be exercised.
                _wait_until_inside(tmp_path, worker)
            os.kill(p.pid, signal.SIGKILL)
        for _, p in procs:
            p.join(timeout=30)
            assert p.exitcode == -signal.SIGKILL

    assert verify(ledger_path, keys.load_public(keys.public_path(key_path))).ok
    with Ledger(ledger_path, key_path) as ledger:
        entries = {e.body["description"]: e for e in ledger.entries(kinds=("release",))}
        spent = ledger.spent(POOL)
        # Spending is exactly the committed releases: nothing for transactions cut short.
        assert spent == sum((e.rho for e in entries.values()), Fraction(0))
        assert len(ledger.entries(kinds=("failed",))) == 0
        returned = touched = 0
        uncommitted: list[str] = []
        for worker in range(workers):
            # Every release a child received is in the ledger, with the same value.
            for line in _lines(tmp_path / f"released-{worker}")[1:]:
                tag, seq, digest = line.split()
                assert entries[tag].seq == int(seq)
                assert entries[tag].body["value_sha256"] == digest
                returned += 1
            for tag in _lines(tmp_path / f"touched-{worker}"):
                touched += 1
                if tag not in entries:
                    uncommitted.append(tag)
        # Killed after touching data but before committing: no entry, hence no spend.
        assert uncommitted, "no kill landed inside a transaction; the test proved nothing"
        assert len(uncommitted) <= workers  # at most one open transaction per killed child
        assert returned <= len(entries) <= touched
        assert all(tag not in entries for tag in uncommitted)
        # The ledger is not wedged: a new writer commits at once and spends from the same total.
        gate = Gate(ledger)
        r = gate.release(POOL, MECHANISM, 1, requester="after")
        assert ledger.spent(POOL) == spent + COST
        assert ledger.entry(r.ledger_id).spent == spent + COST
