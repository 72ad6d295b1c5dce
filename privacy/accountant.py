"""Accounting: from mechanism events to zCDP amounts and (epsilon, delta) figures.

Three figures, each valid under stated conditions:

* **zCDP** (the gate's currency). Each event has an exact rho; a pool's budget ``rho_B`` enforced
  as a filter (the running sum never exceeds ``rho_B``) gives ``rho_B``-zCDP under fully
  adaptive composition, which converts to (epsilon, delta) through ``zcdp_epsilon``.
* **RDP** through opacus (``opacus.accountants.analysis.rdp``): each event contributes its Renyi
  curve, the curves add, and opacus' conversion (Balle et al. 2020, Thm. 21; the same as Canonne,
  Kamath & Steinke 2020, Prop. 12) gives epsilon at delta. Gaussian-type curves come from
  opacus' ``compute_rdp``; pure-DP curves are those of randomized response (the worst case of
  any epsilon-DP mechanism, so a valid upper bound by data processing).
* **Fixed plan**: when the sequence of mechanisms was fixed in advance, numerical composition of
  exact privacy-loss distributions (``gramfed.privacy.pld``) is tighter; the fixed-plan figure
  is the smallest of the zCDP, RDP and PLD ones. Events without a known worst-case pair have no
  PLD, and then the fixed-plan figure is the smaller of the zCDP and RDP ones.

Figures over the events a pool actually spent are valid when the sequence of mechanisms (their
public parameters) was fixed in advance; the queries themselves may be chosen adaptively. Under
fully adaptive choice of the parameters only the pool's budget, enforced as a filter, holds:
``zcdp_epsilon(budget, delta)``.

opacus and the PLD code (scipy) are imported on first use, not at import time: opacus pulls in
torch, which costs seconds in every process that only needs to price and gate releases.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from gramfed.privacy.budget import fraction_text

if TYPE_CHECKING:
    from gramfed.privacy.pld import DiscretePLD

# Renyi orders: opacus' defaults, extended towards 1 and far above 64 so that the optimum is
# interior for every epsilon of practical interest.
_OPACUS_DEFAULT = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
ORDERS = np.unique(
    np.concatenate(
        [
            1 + np.geomspace(1e-3, 0.1, 40),
            np.asarray(_OPACUS_DEFAULT, dtype=float),
            np.arange(64, 257, 4, dtype=float),
            np.geomspace(260, 1e6, 120),
        ]
    )
)
_SAMPLED_MAX_ORDER = 256.0  # above this, a sampled Gaussian is bounded by the unsampled one


@dataclass(frozen=True)
class GaussianEvent:
    """Continuous Gaussian noise, ``noise_multiplier = sigma / L2-sensitivity``, optionally with
    Poisson sampling of records at ``sampling_rate`` (opacus' sampled Gaussian analysis).

    rho = count / (2 z^2): Renyi divergence of N(0, s^2) from N(d, s^2) is alpha d^2 / (2 s^2).
    zCDP does not improve under sampling, so rho ignores ``sampling_rate`` (an upper bound).
    """

    noise_multiplier: float
    sampling_rate: float = 1.0
    count: int = 1
    kind: str = field(default="gaussian", init=False)

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError("noise_multiplier must be positive")
        if not 0 < self.sampling_rate <= 1:
            raise ValueError("sampling_rate must lie in (0, 1]")
        if self.count < 1:
            raise ValueError("count must be >= 1")

    @property
    def rho(self) -> Fraction:
        return self.count / (2 * Fraction(self.noise_multiplier) ** 2)

    def rdp(self, orders: np.ndarray) -> np.ndarray:
        return self.count * _gaussian_rdp(self.noise_multiplier, self.sampling_rate, tuple(orders))

    def pld(self, grid: float) -> DiscretePLD | None:
        if self.sampling_rate != 1.0:
            return None
        from gramfed.privacy import pld as pldlib

        return pldlib.gaussian(math.sqrt(self.count) / self.noise_multiplier, grid)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "noise_multiplier": self.noise_multiplier,
            "sampling_rate": self.sampling_rate,
            "count": self.count,
        }


@dataclass(frozen=True)
class DiscreteGaussianEvent:
    """Discrete Gaussian noise N_Z(0, sigma2) per coordinate on an integer-valued query whose
    L2 sensitivity squared is ``sensitivity2`` (all exact rationals).

    rho = sensitivity2 / (2 sigma2) (Canonne, Kamath & Steinke 2020, Thm. 14): for an integer
    shift v, D_alpha(N_Z(0, s2) || N_Z(v, s2)) <= alpha v^2 / (2 s2), because the theta-function
    sum_y exp(-(y - c)^2 / (2 s2)) is largest at integer c. The Renyi curve is therefore at most
    the continuous Gaussian one with noise multiplier sqrt(sigma2 / sensitivity2).

    ``unit_changes = k`` states the stronger fact that one record changes at most k coordinates
    by at most 1 each (counts, histograms). Then the worst case is k independent unit shifts,
    whose exact PLD is known. Otherwise no PLD is claimed: for general integer shift vectors no
    dominating pair is established (in particular not the continuous Gaussian's), so the RDP and
    zCDP figures are the ones that hold.
    """

    sigma2: Fraction
    sensitivity2: Fraction
    unit_changes: int | None = None
    count: int = 1
    kind: str = field(default="discrete_gaussian", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma2", Fraction(self.sigma2))
        object.__setattr__(self, "sensitivity2", Fraction(self.sensitivity2))
        if self.sigma2 <= 0 or self.sensitivity2 <= 0:
            raise ValueError("sigma2 and sensitivity2 must be positive")
        if self.unit_changes is not None and self.sensitivity2 != self.unit_changes:
            raise ValueError("with unit_changes=k the squared L2 sensitivity is k")

    @property
    def rho(self) -> Fraction:
        return self.count * self.sensitivity2 / (2 * self.sigma2)

    @property
    def noise_multiplier(self) -> float:
        return math.sqrt(self.sigma2 / self.sensitivity2)

    def rdp(self, orders: np.ndarray) -> np.ndarray:
        return self.count * _gaussian_rdp(self.noise_multiplier, 1.0, tuple(orders))

    def pld(self, grid: float) -> DiscretePLD | None:
        from gramfed.privacy import pld as pldlib

        if self.unit_changes is None or math.sqrt(self.sigma2) > pldlib.MAX_DISCRETE_SIGMA:
            return None
        return pldlib.discrete_gaussian_unit(float(self.sigma2), grid).self_compose(
            self.unit_changes * self.count
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "sigma2": fraction_text(self.sigma2),
            "sensitivity2": fraction_text(self.sensitivity2),
            "unit_changes": self.unit_changes,
            "count": self.count,
        }


@dataclass(frozen=True)
class PureDPEvent:
    """An epsilon-DP mechanism (Laplace, discrete Laplace, ...).

    rho = epsilon^2 / 2 (Bun & Steinke 2016, Prop. 1.4). Renyi curve and PLD are those of
    randomized response with the same epsilon, which every epsilon-DP pair post-processes
    (Kairouz, Oh & Viswanath 2015): D_alpha <= log((e^{alpha eps} + e^{(1-alpha) eps}) /
    (1 + e^eps)) / (alpha - 1).
    """

    epsilon: Fraction
    count: int = 1
    kind: str = field(default="pure", init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", Fraction(self.epsilon))
        if self.epsilon < 0:
            raise ValueError("epsilon must be >= 0")

    @property
    def rho(self) -> Fraction:
        return self.count * self.epsilon**2 / 2

    def rdp(self, orders: np.ndarray) -> np.ndarray:
        eps = float(self.epsilon)
        if eps == 0:
            return np.zeros_like(orders)
        a = np.asarray(orders, dtype=float)
        log_num = np.logaddexp(a * eps, (1 - a) * eps) - np.logaddexp(0.0, eps)
        return self.count * np.minimum(log_num / (a - 1), eps)

    def pld(self, grid: float) -> DiscretePLD | None:
        from gramfed.privacy import pld as pldlib

        return pldlib.randomized_response(float(self.epsilon), grid).self_compose(self.count)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "epsilon": fraction_text(self.epsilon), "count": self.count}


Event = GaussianEvent | DiscreteGaussianEvent | PureDPEvent


def event_from_json(data: dict[str, Any]) -> Event:
    kind = data.get("kind")
    if kind == "gaussian":
        return GaussianEvent(
            float(data["noise_multiplier"]), float(data["sampling_rate"]), int(data["count"])
        )
    if kind == "discrete_gaussian":
        return DiscreteGaussianEvent(
            Fraction(data["sigma2"]),
            Fraction(data["sensitivity2"]),
            data.get("unit_changes"),
            int(data["count"]),
        )
    if kind == "pure":
        return PureDPEvent(Fraction(data["epsilon"]), int(data["count"]))
    raise ValueError(f"unknown accounting event kind {kind!r}")


@lru_cache(maxsize=4096)
def _gaussian_rdp(
    noise_multiplier: float, sampling_rate: float, orders: tuple[float, ...]
) -> np.ndarray:
    from opacus.accountants.analysis import rdp as opacus_rdp

    a = np.asarray(orders, dtype=float)
    if sampling_rate == 1.0:
        out = np.asarray(
            opacus_rdp.compute_rdp(
                q=1.0, noise_multiplier=noise_multiplier, steps=1, orders=list(a)
            ),
            dtype=float,
        )
    else:
        out = a / (2 * noise_multiplier**2)
        low = a <= _SAMPLED_MAX_ORDER
        out[low] = opacus_rdp.compute_rdp(
            q=sampling_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(a[low])
        )
    out.setflags(write=False)
    return out


def _opacus_conversion(rdp: np.ndarray, delta: float) -> tuple[float, float, bool]:
    """Opacus' RDP -> (epsilon, delta) conversion; also says if the optimum hit the grid's edge."""
    from opacus.accountants.analysis import rdp as opacus_rdp

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eps, order = opacus_rdp.get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    edge = any("Optimal order" in str(w.message) for w in caught)
    return max(float(eps), 0.0), float(order), edge


_LOG_ORDER_TERMS = np.log((ORDERS - 1) / ORDERS) - np.log(ORDERS) / (ORDERS - 1)


def zcdp_epsilon(rho: Fraction | float, delta: float) -> float:
    """epsilon at ``delta`` for a rho-zCDP guarantee (the linear Renyi curve rho * alpha).

    The conversion is the one opacus applies to any Renyi curve (Balle et al. 2020, Thm. 21;
    Canonne, Kamath & Steinke 2020, Cor. 13): epsilon = min over orders alpha of
    ``rho alpha + log((alpha - 1) / alpha) - (log delta + log alpha) / (alpha - 1)``, taken over
    the same order grid. It is written out here because the gate prices every refusal with it
    and must not load opacus (and torch) to do so; a test checks it against opacus.
    """
    r = float(rho)
    if r == 0:
        return 0.0
    if math.isinf(r):
        return math.inf
    eps = r * ORDERS - math.log(delta) / (ORDERS - 1) + _LOG_ORDER_TERMS
    return max(float(eps.min()), 0.0)


def rho_for_epsilon(epsilon: float, delta: float) -> Fraction:
    """The largest rho (to a few units in the last place) whose ``zcdp_epsilon`` is at most
    ``epsilon``.

    ``zcdp_epsilon`` is the least of one line ``rho alpha + c_alpha`` per order, so it is at most
    epsilon exactly when one line is: the largest such rho is the largest of the
    ``(epsilon - c_alpha) / alpha``, in one pass instead of a search. Rounding can leave the
    figure of that rho a hair above epsilon, so it steps down to the next float until it is not.
    """
    if epsilon <= 0:
        return Fraction(0)
    offsets = _LOG_ORDER_TERMS - math.log(delta) / (ORDERS - 1)  # the c_alpha
    rho = max(float(((epsilon - offsets) / ORDERS).max()), 0.0)
    while rho > 0 and zcdp_epsilon(rho, delta) > epsilon:
        rho = math.nextafter(rho, 0.0)
    return Fraction(rho)


@dataclass(frozen=True)
class Figures:
    """Accountant output for a set of events at one delta.

    ``epsilon_rdp`` is the reported figure (opacus' RDP accountant). ``epsilon_fixed_plan`` is
    the tightest valid figure when the plan was fixed in advance: the smallest of the zCDP,
    RDP and PLD figures.
    """

    rho: Fraction
    delta: float
    epsilon_rdp: float
    rdp_order: float
    epsilon_zcdp: float
    epsilon_pld: float | None
    warnings: tuple[str, ...] = ()

    @property
    def epsilon_fixed_plan(self) -> float:
        candidates = [self.epsilon_rdp, self.epsilon_zcdp]
        if self.epsilon_pld is not None:
            candidates.append(self.epsilon_pld)
        return min(candidates)

    def to_json(self) -> dict[str, Any]:
        return {
            "rho": fraction_text(self.rho),
            "delta": self.delta,
            "epsilon_rdp": _finite(self.epsilon_rdp),
            "rdp_order": self.rdp_order,
            "epsilon_zcdp": _finite(self.epsilon_zcdp),
            "epsilon_pld": None if self.epsilon_pld is None else _finite(self.epsilon_pld),
            "epsilon_fixed_plan": _finite(self.epsilon_fixed_plan),
            "warnings": list(self.warnings),
        }


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else "inf"


def rdp_curve(events: Iterable[Event]) -> np.ndarray:
    """The Renyi curve of the composition, on ``ORDERS``: the events' curves add."""
    total = np.zeros_like(ORDERS)
    for e in events:
        total = total + e.rdp(ORDERS)
    return total


def rdp_epsilon(events: Sequence[Event], delta: float) -> tuple[float, float, bool]:
    """(epsilon, optimal order, optimum-at-grid-edge) through opacus' RDP conversion."""
    if not events:
        return 0.0, math.nan, False
    return _opacus_conversion(rdp_curve(events), delta)


def pld_epsilon(events: Sequence[Event], delta: float, grid: float | None = None) -> float | None:
    """Fixed-plan epsilon by PLD composition, or None when some event has no exact PLD."""
    from gramfed.privacy import pld as pldlib

    if not events:
        return 0.0
    step = pldlib.DEFAULT_GRID if grid is None else grid
    gaussian_mu2 = 0.0
    parts: list[DiscretePLD] = []
    for e in events:
        if isinstance(e, GaussianEvent) and e.sampling_rate == 1.0:
            # Gaussians compose exactly: mu^2 adds, and one PLD is cheaper than many.
            gaussian_mu2 += e.count / e.noise_multiplier**2
            continue
        p = e.pld(step)
        if p is None:
            return None
        parts.append(p)
    if gaussian_mu2 > 0:
        parts.append(pldlib.gaussian(math.sqrt(gaussian_mu2), step))
    total = parts[0]
    for p in parts[1:]:
        total = total.compose(p)
    return total.epsilon(delta)


def figures(
    events: Sequence[Event],
    delta: float,
    *,
    with_pld: bool = True,
    budget_rho: Fraction | None = None,
) -> Figures:
    """All figures for ``events`` at ``delta``, with warnings a privacy officer should read."""
    rho = sum((e.rho for e in events), Fraction(0))
    eps_rdp, order, edge = rdp_epsilon(events, delta)
    notes: list[str] = []
    if edge:
        notes.append(
            f"the RDP conversion's optimal order {order:g} lies at the edge of the order grid;"
            " the RDP epsilon may be loose"
        )
    eps_pld = pld_epsilon(events, delta) if with_pld else None
    if with_pld and eps_pld is None and events:
        notes.append(
            "some releases have no exact privacy-loss distribution (e.g. fixed-point Gaussian"
            " noise with a general L2 sensitivity); the fixed-plan figure omits PLD"
        )
    if any(isinstance(e, GaussianEvent) and e.sampling_rate < 1 for e in events):
        notes.append("sampled Gaussian events are charged in zCDP without sampling amplification")
    if budget_rho is not None and budget_rho > 0 and rho > budget_rho * Fraction(95, 100):
        notes.append("more than 95% of the budget is spent")
    return Figures(rho, delta, eps_rdp, order, zcdp_epsilon(rho, delta), eps_pld, tuple(notes))
