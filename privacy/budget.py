"""Typed privacy budgets, privacy units and the neighbouring relation.

The gate's currency is **rho-zCDP** (zero-concentrated differential privacy, Bun & Steinke 2016).
A mechanism M is rho-zCDP when, for every pair of neighbouring datasets D, D' and every Renyi
order alpha > 1, ``D_alpha(M(D) || M(D')) <= rho * alpha``. Two facts make it the right ledger
currency:

* Composition adds: rho_1-zCDP then rho_2-zCDP is (rho_1 + rho_2)-zCDP, also when the second
  request is chosen after seeing the first answer, and even when its rho is chosen adaptively
  as long as the running total never exceeds the pool's budget (a Renyi privacy filter, Feldman &
  Zrnic 2021, applied order by order to the linear curve ``rho * alpha``).
* It converts to (epsilon, delta)-DP for every delta > 0 (see ``gramfed.privacy.accountant``).

Amounts of rho are exact ``Fraction`` values: sums and comparisons never round, so "never
overspend by any amount" holds exactly, not up to floating-point error.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

Number = int | float | Fraction | str
DEFAULT_DELTA = 1e-6  # delta at which (epsilon, delta) figures are reported unless a pool says


def exact(value: Number) -> Fraction:
    """Turn a number into an exact, finite, non-negative ``Fraction`` (floats convert exactly)."""
    if isinstance(value, bool):
        raise TypeError("a privacy amount cannot be a bool")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a privacy amount must be finite, got {value!r}")
    try:
        out = Fraction(value)
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"not a number: {value!r}") from exc
    if out < 0:
        raise ValueError(f"a privacy amount cannot be negative, got {value!r}")
    return out


def fraction_text(value: Fraction) -> str:
    """Canonical text of a fraction, as stored in the ledger: ``"n/d"`` or ``"n"``."""
    return str(Fraction(value))


@dataclass(frozen=True, order=True)
class Rho:
    """A rho-zCDP amount (budget or cost). Exact, non-negative, ordered, addable."""

    value: Fraction

    def __init__(self, value: Number) -> None:
        object.__setattr__(self, "value", exact(value))

    def __add__(self, other: Rho) -> Rho:
        return Rho(self.value + _rho(other).value)

    def __sub__(self, other: Rho) -> Rho:
        diff = self.value - _rho(other).value
        if diff < 0:
            raise ValueError("a rho amount cannot become negative")
        return Rho(diff)

    def __float__(self) -> float:
        return float(self.value)

    def to_approx(self, delta: float) -> ApproxDP:
        """The (epsilon, delta) figure implied by this rho (opacus' RDP conversion)."""
        from gramfed.privacy.accountant import zcdp_epsilon

        return ApproxDP(zcdp_epsilon(self.value, delta), delta)

    @classmethod
    def from_approx(cls, budget: ApproxDP) -> Rho:
        """The largest rho whose (epsilon, delta) conversion stays within ``budget``."""
        from gramfed.privacy.accountant import rho_for_epsilon

        return cls(rho_for_epsilon(budget.epsilon, budget.delta))

    @classmethod
    def from_pure(cls, budget: PureDP) -> Rho:
        """epsilon-DP implies (epsilon^2 / 2)-zCDP (Bun & Steinke 2016, Prop. 1.4)."""
        return cls(exact(budget.epsilon) ** 2 / 2)

    def __str__(self) -> str:
        return f"rho={float(self.value):.6g}"


def _rho(value: Rho | Number) -> Rho:
    return value if isinstance(value, Rho) else Rho(value)


@dataclass(frozen=True)
class ApproxDP:
    """An (epsilon, delta)-DP figure.

    For all neighbours D, D' and every event S: P[M(D) in S] <= e^eps P[M(D') in S] + delta.
    """

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ValueError(f"epsilon must be finite and >= 0, got {self.epsilon!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta!r}")

    def __str__(self) -> str:
        return f"(epsilon={self.epsilon:.4g}, delta={self.delta:.3g})"


@dataclass(frozen=True)
class PureDP:
    """A pure epsilon-DP figure (delta = 0)."""

    epsilon: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.epsilon) and self.epsilon >= 0):
            raise ValueError(f"epsilon must be finite and >= 0, got {self.epsilon!r}")

    def __str__(self) -> str:
        return f"(epsilon={self.epsilon:.4g}, delta=0)"


Budget = Rho | ApproxDP | PureDP


class Neighbouring(enum.Enum):
    """Which datasets count as neighbours. Sensitivities in this package are stated for it."""

    ADD_REMOVE = "add/remove one record"

    @property
    def description(self) -> str:
        return (
            "D and D' are neighbours when one is the other with one privacy unit added or removed"
        )


@dataclass(frozen=True)
class PrivacyUnit:
    """What one 'record' is: the entity whose presence or absence the guarantee hides."""

    name: str = "record"
    description: str = "one row of the dataset"

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/:\n"):
            raise ValueError(
                f"a privacy unit name must be non-empty, without '/', ':' or newlines;"
                f" got {self.name!r}"
            )


RECORD = PrivacyUnit()


@dataclass(frozen=True)
class PoolSpec:
    """A budget pool: one per (dataset, privacy unit).

    ``trusted_recipients`` lists the parties to which this pool's owner allows *exact* (non-DP)
    releases (DESIGN.md: exact ADMM messages leave only towards a trusted coordinator). They are
    recorded as non-DP releases and flagged in every report.
    """

    dataset: str
    budget: Rho
    unit: PrivacyUnit = RECORD
    neighbouring: Neighbouring = Neighbouring.ADD_REMOVE
    delta: float = DEFAULT_DELTA
    trusted_recipients: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.dataset or any(c in self.dataset for c in ":\n"):
            raise ValueError(
                f"a dataset name must be non-empty, without ':' or newlines; got {self.dataset!r}"
            )
        if not isinstance(self.budget, Rho):
            raise TypeError(
                f"a pool's budget is a Rho amount, got {self.budget!r}; use PoolSpec.of() to"
                " convert an (epsilon, delta) or pure epsilon budget"
            )
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must lie in (0, 1), got {self.delta!r}")
        object.__setattr__(self, "trusted_recipients", tuple(self.trusted_recipients))

    @classmethod
    def of(
        cls,
        dataset: str,
        budget: Budget,
        *,
        delta: float | None = None,
        unit: PrivacyUnit = RECORD,
        trusted_recipients: tuple[str, ...] = (),
    ) -> PoolSpec:
        """A pool from any typed budget, converted to rho-zCDP (see ``as_rho_budget``)."""
        rho, pool_delta = as_rho_budget(budget, delta)
        return cls(dataset, rho, unit, delta=pool_delta, trusted_recipients=trusted_recipients)

    @property
    def key(self) -> str:
        return pool_key(self.dataset, self.unit)

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.key,
            "dataset": self.dataset,
            "unit": self.unit.name,
            "unit_description": self.unit.description,
            "neighbouring": self.neighbouring.value,
            "budget_rho": fraction_text(self.budget.value),
            "delta": self.delta,
            "trusted_recipients": list(self.trusted_recipients),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PoolSpec:
        return cls(
            dataset=data["dataset"],
            budget=Rho(data["budget_rho"]),
            unit=PrivacyUnit(data["unit"], data.get("unit_description", "")),
            neighbouring=Neighbouring(data["neighbouring"]),
            delta=float(data["delta"]),
            trusted_recipients=tuple(data.get("trusted_recipients", ())),
        )


def pool_key(dataset: str, unit: PrivacyUnit | str = RECORD) -> str:
    """The identifier of the pool for ``dataset`` and ``unit``: ``"dataset:unit"``."""
    name = unit.name if isinstance(unit, PrivacyUnit) else unit
    return f"{dataset}:{name}"


def as_rho_budget(budget: Budget, delta: float | None) -> tuple[Rho, float]:
    """Turn any typed budget into the gate's currency and the delta used for reporting.

    An (epsilon, delta) budget becomes the largest rho whose conversion stays within it; a pure
    epsilon budget becomes epsilon^2 / 2, which is exact for the zCDP it implies.
    """
    if isinstance(budget, Rho):
        return budget, DEFAULT_DELTA if delta is None else delta
    if isinstance(budget, ApproxDP):
        if delta is not None and delta != budget.delta:
            raise ValueError("give delta once: inside ApproxDP or as delta=, not both")
        return Rho.from_approx(budget), budget.delta
    if isinstance(budget, PureDP):
        return Rho.from_pure(budget), DEFAULT_DELTA if delta is None else delta
    raise TypeError(f"not a budget: {budget!r}")
