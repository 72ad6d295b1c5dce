"""Accounting: zCDP, opacus' RDP, our PLD, cross-checked against Google's dp_accounting."""

import logging
import math
from fractions import Fraction

import numpy as np
import pytest
from dp_accounting.pld import privacy_loss_distribution as google_pld
from opacus.accountants.analysis import rdp as opacus_rdp

from gramfed.privacy import accountant
from gramfed.privacy.accountant import (
    ORDERS,
    DiscreteGaussianEvent,
    GaussianEvent,
    PureDPEvent,
    event_from_json,
    figures,
    rho_for_epsilon,
    zcdp_epsilon,
)

logging.getLogger().setLevel(logging.ERROR)  # dp_accounting logs a warning per optimistic PLD

GRID = 1e-3

# Compositions of Gaussian mechanisms with mixed noise levels: (noise multiplier, count).
PLANS = [
    [(1.0, 1)],
    [(0.8, 3), (2.0, 5)],
    [(1.5, 10), (3.0, 20), (5.0, 50)],
    [(0.5, 1), (4.0, 100)],
    [(10.0, 1000)],
    [(2.0, 1), (1.2, 2), (7.0, 30)],
]


def _google(plan: list[tuple[float, int]], *, pessimistic: bool = True):
    total = None
    for z, count in plan:
        part = google_pld.from_gaussian_mechanism(
            z,
            value_discretization_interval=GRID,
            pessimistic_estimate=pessimistic,
            use_connect_dots=pessimistic,
        ).self_compose(count)
        total = part if total is None else total.compose(part)
    return total


@pytest.mark.parametrize("delta", [1e-5, 1e-7])
@pytest.mark.parametrize("plan", PLANS, ids=[str(p) for p in PLANS])
def test_gaussian_compositions_agree_with_dp_accounting(plan, delta: float) -> None:
    ours = figures([GaussianEvent(z, 1.0, count) for z, count in plan], delta)
    reference = _google(plan).get_epsilon_for_delta(delta)
    lower = _google(plan, pessimistic=False).get_epsilon_for_delta(delta)
    for reported in (ours.epsilon_rdp, ours.epsilon_fixed_plan):
        assert reported >= reference >= lower
        assert reported <= 1.10 * reference
    assert ours.epsilon_fixed_plan <= 1.001 * reference


def test_discrete_gaussian_counts_agree_with_dp_accounting() -> None:
    delta = 1e-6
    events = [DiscreteGaussianEvent(Fraction(4), Fraction(1), unit_changes=1, count=3)]
    ours = figures(events, delta)
    ref = (
        google_pld.from_discrete_gaussian_mechanism(
            2.0, sensitivity=1, value_discretization_interval=GRID
        )
        .self_compose(3)
        .get_epsilon_for_delta(delta)
    )
    assert ref <= ours.epsilon_fixed_plan <= 1.01 * ref


def test_pure_dp_events_bound_the_laplace_mechanism() -> None:
    # Randomized response is the worst case of every epsilon-DP pair, so its PLD bounds Laplace's.
    delta = 1e-6
    ours = figures([PureDPEvent(Fraction(1, 2), count=20)], delta)
    laplace = (
        google_pld.from_laplace_mechanism(2.0, value_discretization_interval=GRID)
        .self_compose(20)
        .get_epsilon_for_delta(delta)
    )
    assert ours.epsilon_fixed_plan >= laplace
    assert ours.epsilon_fixed_plan <= 10  # and far below the basic composition bound of 20 * 0.5
    assert ours.epsilon_rdp >= ours.epsilon_pld


def test_pure_dp_renyi_curve_dominates_the_laplace_curve() -> None:
    b = 2.0
    a = ORDERS[ORDERS < 200]
    laplace = np.log(a / (2 * a - 1) * np.exp((a - 1) / b) + (a - 1) / (2 * a - 1) * np.exp(-a / b))
    laplace /= a - 1
    assert np.all(PureDPEvent(Fraction(1, 2)).rdp(a) >= laplace - 1e-12)
    assert np.all(PureDPEvent(Fraction(1, 2)).rdp(a) <= 0.5)


def test_zcdp_conversion_is_opacus_conversion_of_the_linear_curve() -> None:
    for rho in (1e-6, 0.01, 0.5, 3.0, 40.0):
        for delta in (1e-3, 1e-6, 1e-10):
            eps, _ = opacus_rdp.get_privacy_spent(
                orders=list(ORDERS), rdp=rho * ORDERS, delta=delta
            )
            expected = max(float(eps), 0.0)  # opacus can go below zero for tiny rho
            assert zcdp_epsilon(rho, delta) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # Close to the classic bound rho + 2 sqrt(rho log(1/delta)), and below it.
    assert zcdp_epsilon(0.5, 1e-6) <= 0.5 + 2 * math.sqrt(0.5 * math.log(1e6))
    assert zcdp_epsilon(0, 1e-6) == 0.0


@pytest.mark.parametrize(
    ("eps", "delta"), [(0.1, 1e-6), (1.0, 1e-6), (8.0, 1e-6), (1.0, 1e-12), (0.01, 0.1)]
)
def test_rho_for_epsilon_inverts_the_conversion_from_below(eps: float, delta: float) -> None:
    """The largest rho within rounding: its epsilon is at most the target, and 1e-12 more rho
    overshoots it (at delta = 0.1 and small epsilon that rho exceeds epsilon itself)."""
    rho = rho_for_epsilon(eps, delta)
    assert isinstance(rho, Fraction)
    assert zcdp_epsilon(rho, delta) <= eps
    assert zcdp_epsilon(float(rho) * (1 + 1e-12), delta) > eps


def test_gaussian_zcdp_and_rdp_agree_without_sampling() -> None:
    e = GaussianEvent(2.0, count=3)
    assert e.rho == Fraction(3, 8)
    assert np.allclose(e.rdp(ORDERS), 3 * ORDERS / 8)
    fig = figures([e], 1e-6)
    assert fig.epsilon_rdp == pytest.approx(fig.epsilon_zcdp, rel=1e-9)


def test_sampled_gaussian_is_tighter_in_rdp_and_flagged() -> None:
    events = [GaussianEvent(1.0, sampling_rate=0.01, count=1000)]
    fig = figures(events, 1e-5)
    assert fig.epsilon_rdp < fig.epsilon_zcdp
    assert fig.epsilon_pld is None
    assert any("sampled" in w for w in fig.warnings)
    expected, _ = opacus_rdp.get_privacy_spent(
        orders=list(ORDERS[ORDERS <= 256]),
        rdp=opacus_rdp.compute_rdp(
            q=0.01, noise_multiplier=1.0, steps=1000, orders=list(ORDERS[ORDERS <= 256])
        ),
        delta=1e-5,
    )
    assert fig.epsilon_rdp <= expected + 1e-12


def test_events_round_trip_through_json() -> None:
    events = [
        GaussianEvent(1.5, 0.1, 7),
        DiscreteGaussianEvent(Fraction(7, 3), Fraction(2), unit_changes=2, count=2),
        PureDPEvent(Fraction(1, 3), count=4),
    ]
    for e in events:
        assert event_from_json(e.to_json()) == e
    with pytest.raises(ValueError, match="unknown"):
        event_from_json({"kind": "exponential"})


def test_general_discrete_gaussian_has_no_pld_and_says_so() -> None:
    fig = figures([DiscreteGaussianEvent(Fraction(100), Fraction(3))], 1e-6)
    assert fig.epsilon_pld is None
    assert fig.epsilon_fixed_plan == min(fig.epsilon_rdp, fig.epsilon_zcdp)
    assert any("no exact privacy-loss" in w for w in fig.warnings)
    assert accountant.pld_epsilon([], 1e-6) == 0.0


def test_budget_warning_and_json() -> None:
    fig = figures([GaussianEvent(1.0)], 1e-6, budget_rho=Fraction(1, 2))
    assert any("95%" in w for w in fig.warnings)
    data = fig.to_json()
    assert data["rho"] == "1/2" and data["epsilon_fixed_plan"] <= data["epsilon_rdp"]
