"""The gate: pricing, refusal, release, post-processing, exact releases, and forgery."""

import contextlib
import copy
import dataclasses
import pickle
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from gramfed.privacy.budget import PoolSpec, PrivacyUnit, Rho
from gramfed.privacy.errors import (
    BudgetExceeded,
    ForgedRelease,
    LedgerError,
    MechanismError,
    NonDPReleaseRefused,
)
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.privacy.mechanisms import (
    DiscreteGaussianMechanism,
    DiscreteLaplaceMechanism,
    GaussianMechanism,
)
from gramfed.privacy.release import Release, _issue, is_genuine, require_release, value_digest
from gramfed.privacy.rng import SeededBits

POOL = "census:record"
# rho = 1 / (2 * 50) = 1/100 exactly, so budgets divide without rounding.
COUNT = DiscreteGaussianMechanism(Fraction(50), unit_changes=1)


@pytest.fixture
def ledger(tmp_path: Path, key_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "ledger.db", key_path, create=True) as led:
        yield led


@pytest.fixture
def gate(ledger: Ledger) -> Gate:
    g = Gate(ledger, rng=SeededBits(1), test_rng=True)
    g.create_pool(PoolSpec("census", Rho("1/20"), trusted_recipients=("coordinator",)))
    return g


def _untouchable() -> float:
    raise AssertionError("the data was touched")


def test_a_release_carries_value_cost_unit_and_ledger_entry(gate: Gate, ledger: Ledger) -> None:
    r = gate.release(POOL, COUNT, lambda: 42, requester="alice", description="row count")
    assert is_genuine(r) and require_release(r) is r
    assert isinstance(r.value, int)
    assert r.rho == Fraction(1, 100) and r.cost == COUNT.privacy_map()
    assert r.unit == PrivacyUnit() and r.neighbouring.value == "add/remove one record"
    assert r.pools == (POOL,) and r.dp and r.kind == "release" and r.parents == ()
    entry = ledger.entry(r.ledger_id)
    assert entry.kind == "release" and entry.hash == r.entry_hash
    assert entry.rho == Fraction(1, 100) and entry.spent == Fraction(1, 100)
    assert entry.body["value_sha256"] == value_digest(r.value)
    assert entry.body["requester"] == "alice" and entry.body["unit"] == "record"
    assert entry.body["rng"] == "seeded (test only)"
    assert gate.remaining(POOL) == Fraction(4, 100)
    assert r.provenance()["ledger_id"] == r.ledger_id


def test_over_budget_refuses_before_touching_data_and_logs_it(gate: Gate, ledger: Ledger) -> None:
    for _ in range(5):
        gate.release(POOL, COUNT, 7, requester="alice")
    assert gate.remaining(POOL) == 0  # spending exactly the whole budget is allowed
    before = len(ledger.entries())
    with pytest.raises(BudgetExceeded) as info:
        gate.release(POOL, COUNT, _untouchable, requester="mallory")
    err = info.value
    assert (err.requested, err.remaining, err.shortfall) == (Fraction(1, 100), 0, Fraction(1, 100))
    assert err.delta == 1e-6 and err.requested_epsilon > 0 and err.remaining_epsilon == 0
    assert err.shortfall_epsilon > 0
    assert "nothing was released or spent" in str(err)
    entries = ledger.entries()
    assert len(entries) == before + 1
    refusal = entries[-1]
    assert refusal.kind == "refusal" and refusal.seq == err.ledger_id
    assert refusal.rho == 0 and refusal.spent == Fraction(5, 100)
    assert refusal.body["requester"] == "mallory" and refusal.body["reason"] == "budget exceeded"
    assert gate.remaining(POOL) == 0


def test_partial_refusal_reports_the_gap(gate: Gate) -> None:
    big = DiscreteGaussianMechanism(Fraction(5), unit_changes=1)  # rho = 1/10 > 1/20
    with pytest.raises(BudgetExceeded) as info:
        gate.release(POOL, big, _untouchable, requester="bob")
    assert info.value.remaining == Fraction(1, 20)
    assert info.value.shortfall == Fraction(1, 20)
    assert gate.remaining(POOL) == Fraction(1, 20)


def test_refusals_depend_on_public_parameters_only(ledger: Ledger) -> None:
    gate = Gate(ledger, rng=SeededBits(2), test_rng=True)
    small = PoolSpec("small", Rho("3/100"))
    huge = PoolSpec("huge", Rho("3/100"))
    gate.create_pool(small)
    gate.create_pool(huge)
    datasets = {small.key: np.zeros(3), huge.key: np.full(10**5, 10**6)}
    outcomes: dict[str, list[bool]] = {}
    for key, data in datasets.items():
        outcomes[key] = []
        for mech in (COUNT, DiscreteGaussianMechanism(Fraction(25), unit_changes=1), COUNT, COUNT):
            try:
                gate.release(key, mech, lambda d=data: int(d.sum() > 0), requester="r")
                outcomes[key].append(True)
            except BudgetExceeded:
                outcomes[key].append(False)
    assert outcomes[small.key] == outcomes[huge.key] == [True, True, False, False]
    assert gate.price(COUNT) == COUNT.privacy_map()


def test_a_failure_after_the_check_is_charged_and_releases_nothing(
    gate: Gate, ledger: Ledger
) -> None:
    real = GaussianMechanism.for_rho(Fraction(1, 100), l2_sensitivity=1.0)
    with pytest.raises(MechanismError, match="NaN"):
        gate.release(POOL, real, float("nan"), requester="carol")
    with pytest.raises(ZeroDivisionError):
        gate.release(POOL, real, lambda: 1 / 0, requester="carol")
    failed = ledger.entries(kinds=("failed",))
    assert [e.body["error"] for e in failed] == ["MechanismError", "ZeroDivisionError"]
    assert gate.remaining(POOL) == Fraction(1, 20) - 2 * real.privacy_map().rho


def test_postprocessing_is_free_and_records_its_parents(gate: Gate, ledger: Ledger) -> None:
    a = gate.release(POOL, COUNT, 10, requester="alice")
    b = gate.release(POOL, COUNT, 20, requester="alice")
    left = gate.remaining(POOL)
    ratio = gate.postprocess(lambda x, y: x / max(y, 1), a, b, description="ratio of counts")
    assert gate.remaining(POOL) == left
    assert ratio.kind == "postprocess" and ratio.rho == 0 and ratio.dp
    assert ratio.parents == (a.ledger_id, b.ledger_id) and ratio.pools == (POOL,)
    entry = ledger.entry(ratio.ledger_id)
    assert entry.kind == "postprocess" and entry.pool is None
    assert entry.body["parents"] == [a.ledger_id, b.ledger_id]
    assert entry.body["parent_hashes"] == [a.entry_hash, b.entry_hash]
    assert entry.body["description"] == "ratio of counts"
    twice = gate.postprocess(lambda r: 2 * r, ratio, description="double")
    assert ledger.entry(twice.ledger_id).body["parents"] == [ratio.ledger_id]


def test_postprocessing_refuses_foreign_and_forged_parents(
    gate: Gate, tmp_path: Path, key_path: Path
) -> None:
    a = gate.release(POOL, COUNT, 1, requester="alice")
    with Ledger(tmp_path / "other.db", key_path, create=True) as other_ledger:
        other = Gate(other_ledger, rng=SeededBits(3), test_rng=True)
        with pytest.raises(ValueError, match="another ledger"):
            other.postprocess(lambda x: x, a, description="steal")
    fake = object.__new__(Release)
    with pytest.raises(ForgedRelease):
        gate.postprocess(lambda x: x, fake, description="launder")
    with pytest.raises(ValueError, match="at least one parent"):
        gate.postprocess(lambda: 1, description="from nothing")


def test_exact_releases_only_to_trusted_recipients(gate: Gate, ledger: Ledger) -> None:
    with pytest.raises(NonDPReleaseRefused, match="does not allow exact"):
        gate.release_exact(POOL, _untouchable, requester="admm", recipient="stranger")
    assert ledger.entries()[-1].body["reason"] == "exact release to an untrusted recipient"
    exact = gate.release_exact(POOL, np.arange(3.0), requester="admm", recipient="coordinator")
    assert not exact.dp and exact.kind == "non_dp" and "NOT DP" in repr(exact)
    assert ledger.entry(exact.ledger_id).body["recipient"] == "coordinator"
    assert gate.remaining(POOL) == Fraction(1, 20)
    derived = gate.postprocess(np.sum, exact, description="sum")
    assert not derived.dp
    assert ledger.entry(derived.ledger_id).body["dp"] is False


def test_a_seeded_rng_needs_an_explicit_test_flag(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="cryptographic"):
        Gate(ledger, rng=SeededBits(1))
    assert Gate(ledger)._rng.cryptographic


def test_unknown_pools_and_mismatched_specs_are_refused(gate: Gate) -> None:
    with pytest.raises(LedgerError, match="unknown privacy budget pool"):
        gate.release("nope:record", COUNT, 1, requester="x")
    with pytest.raises(ValueError, match="another spec"):
        gate.release(PoolSpec("census", Rho(5)), COUNT, 1, requester="x")
    with pytest.raises(TypeError, match="not a privacy mechanism"):
        gate.release(POOL, "gaussian", 1, requester="x")  # type: ignore[arg-type]


def test_figures_cover_what_the_pool_spent(gate: Gate) -> None:
    for _ in range(3):
        gate.release(POOL, COUNT, 1, requester="alice")
    gate.release(POOL, DiscreteLaplaceMechanism(10, 1), 1, requester="alice")
    fig = gate.figures(POOL)
    assert fig.rho == Fraction(3, 100) + Fraction(1, 200)
    assert fig.epsilon_pld is not None
    assert fig.epsilon_fixed_plan <= fig.epsilon_rdp


# --------------------------------------------------------------------------- forgery


def test_releases_cannot_be_forged(gate: Gate) -> None:
    real = gate.release(POOL, COUNT, 5, requester="alice")
    fields = {name: getattr(real, name) for name in ("value", "ledger_id", "kind", "dp")}
    # 1. Direct construction, with or without arguments.
    with pytest.raises(ForgedRelease):
        Release()
    with pytest.raises(ForgedRelease):
        Release(**fields)
    # 2. Calling __new__ directly.
    with pytest.raises(ForgedRelease):
        Release.__new__(Release)
    # 3. Bypassing __new__: the object exists but is not genuine and has no state.
    blank = object.__new__(Release)
    assert not is_genuine(blank)
    with pytest.raises(ForgedRelease):
        require_release(blank)
    with pytest.raises(ForgedRelease):
        _ = blank.value
    # ... and filling its slots by hand does not make it genuine.
    object.__setattr__(blank, "_value", 1e9)
    assert not is_genuine(blank)
    # 4. The minting function without the gate's capability.
    with pytest.raises(ForgedRelease):
        _issue(object(), **fields)
    # 5. dataclasses.replace: a Release is not a dataclass.
    with pytest.raises(TypeError):
        dataclasses.replace(real, value=1e9)
    # 6. Mutation.
    with pytest.raises(AttributeError):
        real.value = 1e9
    with pytest.raises(AttributeError):
        del real.value
    # 7. Copies are the same object: no second release comes into being.
    assert copy.copy(real) is real and copy.deepcopy([real])[0] is real
    # 8. Pickling (and so unpickling forged bytes) is refused.
    with pytest.raises(ForgedRelease):
        pickle.dumps(real)
    # 9. Subclasses cannot even be defined.
    with pytest.raises(TypeError):
        type("Fake", (Release,), {})
    # 10. Look-alikes with the same attributes are not releases.
    look_alike = type("Release", (), fields)()
    with pytest.raises(ForgedRelease):
        require_release(look_alike)
    assert is_genuine(real)


def test_released_arrays_are_read_only(gate: Gate) -> None:
    mech = GaussianMechanism.for_rho(Fraction(1, 100), l2_sensitivity=1.0, dim=3)
    r = gate.release(POOL, mech, np.array([1.0, 2.0, 3.0]), requester="alice")
    with pytest.raises(ValueError):
        r.value[0] = 0.0


def test_threads_sharing_one_gate_never_overspend(gate: Gate, ledger: Ledger) -> None:
    granted: list[Release] = []

    def spend() -> None:
        for _ in range(20):
            with contextlib.suppress(BudgetExceeded):
                granted.append(gate.release(POOL, COUNT, 1, requester="thread"))

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 5 and gate.remaining(POOL) == 0
    assert len(ledger.entries(kinds=("refusal",))) == 75
