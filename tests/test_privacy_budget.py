"""Typed budgets, privacy units and pools."""

from fractions import Fraction

import pytest

from gramfed.privacy.accountant import zcdp_epsilon
from gramfed.privacy.budget import (
    RECORD,
    ApproxDP,
    Neighbouring,
    PoolSpec,
    PrivacyUnit,
    PureDP,
    Rho,
    as_rho_budget,
    exact,
    pool_key,
)


def test_rho_amounts_are_exact_fractions() -> None:
    total = Rho(0)
    for _ in range(10):
        total = total + Rho(0.1)
    assert total.value == 10 * Fraction(0.1)  # floats convert exactly, sums never round
    assert Rho("1/3") + Rho("2/3") == Rho(1)
    assert Rho(1) - Rho("1/4") == Rho("3/4")
    assert Rho("1/3") < Rho("1/2")
    with pytest.raises(ValueError, match="negative"):
        Rho("1/4") - Rho("1/3")


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "x", True])
def test_invalid_amounts_are_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        exact(bad)  # type: ignore[arg-type]


def test_typed_budgets_validate_their_figures() -> None:
    with pytest.raises(ValueError, match="delta"):
        ApproxDP(1.0, 0.0)
    with pytest.raises(ValueError, match="epsilon"):
        ApproxDP(-1.0, 1e-6)
    with pytest.raises(ValueError, match="epsilon"):
        PureDP(float("inf"))


def test_pure_dp_converts_to_half_epsilon_squared() -> None:
    assert Rho.from_pure(PureDP(1.0)) == Rho("1/2")
    assert as_rho_budget(PureDP(0.5), None) == (Rho("1/8"), 1e-6)


def test_approx_budget_converts_to_the_largest_rho_within_it() -> None:
    budget = ApproxDP(2.0, 1e-6)
    rho = Rho.from_approx(budget)
    assert zcdp_epsilon(rho.value, 1e-6) <= 2.0
    assert zcdp_epsilon(rho.value * (1 + 1e-9), 1e-6) == pytest.approx(2.0, rel=1e-6)
    assert rho.to_approx(1e-6).epsilon <= 2.0
    with pytest.raises(ValueError, match="delta once"):
        as_rho_budget(budget, 1e-5)


def test_pool_spec_round_trips_and_names_its_pool() -> None:
    unit = PrivacyUnit("patient", "all rows of one patient")
    spec = PoolSpec("clinic", Rho("1/2"), unit, delta=1e-7, trusted_recipients=("coord",))
    assert spec.key == "clinic:patient" == pool_key("clinic", unit)
    assert spec.neighbouring is Neighbouring.ADD_REMOVE
    assert PoolSpec.from_json(spec.to_json()) == spec
    assert PoolSpec.of("clinic", ApproxDP(1.0, 1e-7), unit=unit).delta == 1e-7


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"dataset": "a:b", "budget": Rho(1)}, ValueError),
        ({"dataset": "", "budget": Rho(1)}, ValueError),
        ({"dataset": "a", "budget": Rho(1), "delta": 1.0}, ValueError),
        ({"dataset": "a", "budget": ApproxDP(1.0, 1e-6)}, TypeError),
    ],
)
def test_pool_spec_rejects_bad_fields(kwargs: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        PoolSpec(**kwargs)


def test_privacy_unit_names_are_checked() -> None:
    assert RECORD.name == "record"
    with pytest.raises(ValueError, match="unit name"):
        PrivacyUnit("a/b")
