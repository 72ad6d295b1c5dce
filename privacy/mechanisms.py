"""Noise mechanisms, each carrying its privacy map.

Common setting for every mechanism here:

* **Privacy unit**: one record of the dataset the pool belongs to.
* **Neighbouring relation**: add/remove one record (``Neighbouring.ADD_REMOVE``).
* **Query**: a function q from datasets to R^dim or Z^dim; its sensitivity is the largest change
  in q (L2 or L1 norm) caused by adding or removing one record. The caller states it; the
  usual way to make it true is to clip each record's contribution to that norm before summing.
* **Privacy map**: a function of the public parameters only (noise scale, sensitivity,
  dimension, grid), giving an exact rho (zCDP) and the events the accountant composes.
* **Noise**: exact integer samplers (``gramfed.privacy.samplers``) driven by the operating
  system's cryptographic generator. Real-valued answers go through a power-of-two fixed-point
  grid (``gramfed.privacy.fixedpoint``), so no floating-point arithmetic touches the noise.

Calibration helpers turn a target (rho, or epsilon and delta) into noise scales whose privacy
map is at most the target.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from gramfed.privacy import fixedpoint
from gramfed.privacy.accountant import (
    DiscreteGaussianEvent,
    Event,
    PureDPEvent,
    rho_for_epsilon,
    zcdp_epsilon,
)
from gramfed.privacy.budget import Neighbouring, fraction_text
from gramfed.privacy.errors import MechanismError
from gramfed.privacy.rng import RandomBits, system_bits
from gramfed.privacy.samplers import discrete_gaussian_array, discrete_laplace_array


@dataclass(frozen=True)
class PrivacyLoss:
    """The output of a privacy map: exact rho, accountant events, and pure epsilon if any."""

    rho: Fraction
    events: tuple[Event, ...]
    pure_epsilon: Fraction | None = None
    derivation: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "rho": fraction_text(self.rho),
            "pure_epsilon": None if self.pure_epsilon is None else fraction_text(self.pure_epsilon),
            "events": [e.to_json() for e in self.events],
        }


class Mechanism(ABC):
    """A randomized map from a query answer to a release, with its privacy map."""

    name: ClassVar[str]
    family: ClassVar[str]  # "gaussian" or "laplace"
    # The relation every sensitivity below is stated for; the gate refuses a pool with another.
    neighbouring: ClassVar[Neighbouring] = Neighbouring.ADD_REMOVE
    dim: int

    @abstractmethod
    def parameters(self) -> dict[str, Any]:
        """Public parameters, recorded in the ledger with every release."""

    @abstractmethod
    def privacy_map(self) -> PrivacyLoss:
        """The privacy loss, computed from public parameters only."""

    @abstractmethod
    def _perturb(self, answer: np.ndarray, rng: RandomBits) -> np.ndarray:
        """Noise every coordinate of a 1-D answer array independently."""

    @abstractmethod
    def _coerce(self, answer: Any) -> np.ndarray:
        """Check the answer's type; return it as an array of the right dtype."""

    @property
    @abstractmethod
    def sensitivity(self) -> float:
        """The stated sensitivity (L2 for the Gaussian family, L1 for the Laplace family)."""

    def apply(self, answer: Any, rng: RandomBits | None = None) -> Any:
        """Release ``answer`` with noise. Scalars in, scalars out; arrays keep their shape."""
        flat = self._coerce(answer).reshape(-1)
        if flat.size != self.dim:
            raise MechanismError(
                f"{self.name} was priced for {self.dim} coordinate(s) but the answer has"
                f" {flat.size}"
            )
        noisy = self._perturb(flat, rng or system_bits())
        if np.ndim(answer) == 0:
            return noisy[0].item()
        noisy.setflags(write=False)
        return noisy.reshape(np.shape(answer))

    def sample(self, answer: float, count: int, rng: RandomBits | None = None) -> np.ndarray:
        """``count`` independent releases of a one-coordinate answer (for statistical tests)."""
        one = self._coerce(answer).reshape(-1)
        if one.size != 1:
            raise MechanismError("sample() takes a single coordinate")
        return self._perturb(np.repeat(one, count), rng or system_bits())

    def neighbouring_answers(self) -> tuple[float, float]:
        """A worst-case pair of one-coordinate answers: 0 and the full sensitivity."""
        return 0.0, float(self.sensitivity)

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.parameters().items())
        return f"{self.name}({params})"


def _positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise MechanismError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _positive_fraction(value: Any, what: str) -> Fraction:
    try:
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError
        q = Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise MechanismError(f"{what} must be a positive finite number, got {value!r}") from None
    if q <= 0:
        raise MechanismError(f"{what} must be positive, got {value!r}")
    return q


def _integer_answer(answer: Any) -> np.ndarray:
    x = np.asarray(answer)
    if x.dtype.kind not in "iub":
        if x.dtype.kind == "f" and np.all(np.isfinite(x)) and np.all(x == np.rint(x)):
            x = x.astype(np.int64)
        else:
            raise MechanismError("this mechanism takes integer answers; use the real-valued one")
    return x.astype(np.int64)


# --------------------------------------------------------------------------- Gaussian family


@dataclass(frozen=True, eq=False)
class DiscreteGaussianMechanism(Mechanism):
    """Add N_Z(0, sigma2) noise to each coordinate of an integer-valued query.

    Sensitivity: the L2 norm of q(D) - q(D') over add/remove neighbours, ``l2_sensitivity``;
    or ``unit_changes = k``: one record changes at most k coordinates by at most 1 (counts,
    histograms), which implies L2 sensitivity sqrt(k) and a tighter fixed-plan figure.

    Privacy map: rho = Delta_2^2 / (2 sigma2). Derivation: coordinates are independent, so the
    Renyi divergence of order alpha between outputs on neighbours is the sum over coordinates of
    D_alpha(N_Z(0, s2) || N_Z(v_j, s2)) <= alpha v_j^2 / (2 s2) (Canonne, Kamath & Steinke 2020,
    Prop. 5 / Thm. 14), giving alpha |v|_2^2 / (2 s2) <= alpha Delta_2^2 / (2 s2) for all alpha.
    """

    sigma2: Fraction
    l2_sensitivity: float | None = None
    dim: int = 1
    unit_changes: int | None = None
    sensitivity2: Fraction = field(init=False)

    name: ClassVar[str] = "discrete_gaussian"
    family: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma2", _positive_fraction(self.sigma2, "sigma2"))
        object.__setattr__(self, "dim", _positive_int(self.dim, "dim"))
        if (self.l2_sensitivity is None) == (self.unit_changes is None):
            raise MechanismError("give exactly one of l2_sensitivity and unit_changes")
        if self.unit_changes is not None:
            k = _positive_int(self.unit_changes, "unit_changes")
            object.__setattr__(self, "sensitivity2", Fraction(k))
        else:
            s = _positive_fraction(self.l2_sensitivity, "l2_sensitivity")
            object.__setattr__(self, "sensitivity2", s * s)
        if math.sqrt(self.sigma2) * 60 >= 2**62:
            raise MechanismError("sigma2 is too large for 64-bit integer noise")

    @classmethod
    def for_rho(
        cls,
        rho: float | Fraction,
        *,
        l2_sensitivity: float | None = None,
        dim: int = 1,
        unit_changes: int | None = None,
    ) -> DiscreteGaussianMechanism:
        """Smallest sigma2 on a 1/1024 grid with rho(sigma2) <= ``rho``."""
        target = _positive_fraction(rho, "rho")
        s2 = (
            Fraction(unit_changes)
            if unit_changes is not None
            else _positive_fraction(l2_sensitivity, "l2_sensitivity") ** 2
        )
        sigma2 = Fraction(math.ceil(s2 / (2 * target) * 1024), 1024)
        return cls(sigma2, l2_sensitivity, dim, unit_changes)

    @property
    def sensitivity(self) -> float:
        return math.sqrt(self.sensitivity2)

    def parameters(self) -> dict[str, Any]:
        return {
            "sigma2": fraction_text(self.sigma2),
            "l2_sensitivity": self.sensitivity,
            "unit_changes": self.unit_changes,
            "dim": self.dim,
        }

    def privacy_map(self) -> PrivacyLoss:
        rho = self.sensitivity2 / (2 * self.sigma2)
        event = DiscreteGaussianEvent(self.sigma2, self.sensitivity2, self.unit_changes)
        return PrivacyLoss(rho, (event,), None, "rho = Delta_2^2 / (2 sigma^2), discrete Gaussian")

    def _coerce(self, answer: Any) -> np.ndarray:
        return _integer_answer(answer)

    def _perturb(self, answer: np.ndarray, rng: RandomBits) -> np.ndarray:
        return answer + discrete_gaussian_array(self.sigma2, answer.size, rng)

    def neighbouring_answers(self) -> tuple[float, float]:
        return 0.0, float(max(1, math.floor(self.sensitivity)))


@dataclass(frozen=True, eq=False)
class GaussianMechanism(Mechanism):
    """Gaussian noise of standard deviation about ``sigma`` on a real-valued query, float-safe.

    Implementation: the answer is rounded to the grid 2^e (``grid_exponent``), discrete Gaussian
    noise with sigma_u^2 = ceil((sigma / 2^e)^2) grid units is added, and the result is scaled
    back exactly. The noise is at least as large as asked.

    Sensitivity: L2 norm of q(D) - q(D') over add/remove neighbours, ``l2_sensitivity``. After
    rounding it is at most Delta_u = Delta / 2^e + ceil(sqrt(dim)) grid units.

    Privacy map: rho = Delta_u^2 / (2 sigma_u^2), by the discrete Gaussian's map applied to the
    rounded (integer) query. With the default grid (Delta spans ~2^20 units) the rounding slack
    inflates rho by a factor (1 + sqrt(dim) 2^-20)^2.
    """

    sigma: float
    l2_sensitivity: float
    dim: int = 1
    grid_exponent: int | None = None
    sigma2_units: int = field(init=False)
    sensitivity_units: Fraction = field(init=False)

    name: ClassVar[str] = "gaussian"
    family: ClassVar[str] = "gaussian"

    def __post_init__(self) -> None:
        sigma = _positive_fraction(self.sigma, "sigma")
        sens = _positive_fraction(self.l2_sensitivity, "l2_sensitivity")
        object.__setattr__(self, "dim", _positive_int(self.dim, "dim"))
        e = self.grid_exponent
        if e is None:
            e = fixedpoint.default_exponent(float(sigma), float(sens))
            object.__setattr__(self, "grid_exponent", e)
        unit = fixedpoint.grid(e)
        object.__setattr__(self, "sigma2_units", math.ceil((sigma / unit) ** 2))
        object.__setattr__(self, "sensitivity_units", fixedpoint.l2_units(float(sens), e, self.dim))
        if math.sqrt(self.sigma2_units) * 60 >= 2**51:
            raise MechanismError("sigma is too large relative to the fixed-point grid")

    @classmethod
    def for_rho(
        cls, rho: float | Fraction, *, l2_sensitivity: float, dim: int = 1
    ) -> GaussianMechanism:
        """The least noise on the default grid whose privacy map is at most ``rho``."""
        target = _positive_fraction(rho, "rho")
        e = fixedpoint.default_exponent(l2_sensitivity)
        d_units = fixedpoint.l2_units(l2_sensitivity, e, dim)
        sigma2_units = math.ceil(d_units**2 / (2 * target))
        sigma = math.sqrt(sigma2_units) * 2.0**e  # ceil((sigma/2^e)^2) recovers sigma2_units
        mech = cls(sigma, l2_sensitivity, dim, e)
        while mech.privacy_map().rho > target:  # float sqrt may land one unit short
            sigma = math.nextafter(sigma, math.inf)
            mech = cls(sigma, l2_sensitivity, dim, e)
        return mech

    @classmethod
    def for_epsilon(
        cls, epsilon: float, delta: float, *, l2_sensitivity: float, dim: int = 1
    ) -> GaussianMechanism:
        """Noise for an (epsilon, delta) target through zCDP (the gate's currency)."""
        return cls.for_rho(rho_for_epsilon(epsilon, delta), l2_sensitivity=l2_sensitivity, dim=dim)

    @property
    def sensitivity(self) -> float:
        return float(self.l2_sensitivity)

    @property
    def noise_sd(self) -> float:
        """The parameter sigma actually used, in the query's units (>= ``sigma``)."""
        return math.sqrt(self.sigma2_units) * 2.0**self.grid_exponent

    def parameters(self) -> dict[str, Any]:
        return {
            "sigma": self.noise_sd,
            "l2_sensitivity": float(self.l2_sensitivity),
            "dim": self.dim,
            "grid": f"2^{self.grid_exponent}",
        }

    def privacy_map(self) -> PrivacyLoss:
        s2 = self.sensitivity_units**2
        rho = s2 / (2 * self.sigma2_units)
        event = DiscreteGaussianEvent(Fraction(self.sigma2_units), s2)
        return PrivacyLoss(
            rho, (event,), None, "rho = Delta_u^2 / (2 sigma_u^2) on the fixed-point grid"
        )

    def _coerce(self, answer: Any) -> np.ndarray:
        try:
            return np.asarray(answer, dtype=np.float64)
        except (TypeError, ValueError):
            raise MechanismError(f"{self.name} takes real-valued answers") from None

    def _perturb(self, answer: np.ndarray, rng: RandomBits) -> np.ndarray:
        e = self.grid_exponent
        assert e is not None
        units = fixedpoint.encode(answer, e)
        noise = discrete_gaussian_array(self.sigma2_units, units.size, rng)
        return fixedpoint.decode(units + noise, e)


# --------------------------------------------------------------------------- Laplace family


@dataclass(frozen=True, eq=False)
class DiscreteLaplaceMechanism(Mechanism):
    """Add discrete Laplace noise, P[X = x] proportional to exp(-|x| / scale), to an integer query.

    Sensitivity: L1 norm of q(D) - q(D') over add/remove neighbours, ``l1_sensitivity``.

    Privacy map: pure epsilon-DP with epsilon = Delta_1 / scale, hence rho = epsilon^2 / 2.
    Derivation: for each output y, P[q(D) + X = y] / P[q(D') + X = y] =
    prod_j exp((|y_j - q_j(D')| - |y_j - q_j(D)|) / scale) <= exp(|q(D) - q(D')|_1 / scale)
    by the triangle inequality.
    """

    scale: Fraction
    l1_sensitivity: Fraction
    dim: int = 1

    name: ClassVar[str] = "discrete_laplace"
    family: ClassVar[str] = "laplace"

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", _positive_fraction(self.scale, "scale"))
        object.__setattr__(
            self, "l1_sensitivity", _positive_fraction(self.l1_sensitivity, "l1_sensitivity")
        )
        object.__setattr__(self, "dim", _positive_int(self.dim, "dim"))
        if self.scale * 60 >= 2**62:
            raise MechanismError("scale is too large for 64-bit integer noise")

    @classmethod
    def for_epsilon(
        cls, epsilon: float | Fraction, *, l1_sensitivity: float | Fraction = 1, dim: int = 1
    ) -> DiscreteLaplaceMechanism:
        eps = _positive_fraction(epsilon, "epsilon")
        sens = _positive_fraction(l1_sensitivity, "l1_sensitivity")
        return cls(sens / eps, sens, dim)

    @property
    def sensitivity(self) -> float:
        return float(self.l1_sensitivity)

    def parameters(self) -> dict[str, Any]:
        return {
            "scale": fraction_text(self.scale),
            "l1_sensitivity": fraction_text(self.l1_sensitivity),
            "dim": self.dim,
        }

    def privacy_map(self) -> PrivacyLoss:
        eps = self.l1_sensitivity / self.scale
        return PrivacyLoss(eps * eps / 2, (PureDPEvent(eps),), eps, "epsilon = Delta_1 / scale")

    def _coerce(self, answer: Any) -> np.ndarray:
        return _integer_answer(answer)

    def _perturb(self, answer: np.ndarray, rng: RandomBits) -> np.ndarray:
        return answer + discrete_laplace_array(self.scale, answer.size, rng)

    def neighbouring_answers(self) -> tuple[float, float]:
        return 0.0, float(max(1, math.floor(self.l1_sensitivity)))


@dataclass(frozen=True, eq=False)
class LaplaceMechanism(Mechanism):
    """Laplace-type noise of scale about ``scale`` on a real-valued query, float-safe.

    Implementation: round the answer to the grid 2^e, add discrete Laplace noise of scale
    t_u = ceil(scale / 2^e) grid units, scale back exactly. (A discrete Laplace on a fine grid,
    in place of textbook float Laplace noise, whose low-order bits leak the input.)

    Sensitivity: L1 norm of q(D) - q(D') over add/remove neighbours, ``l1_sensitivity``. After
    rounding it is at most Delta_u = Delta / 2^e + dim grid units.

    Privacy map: epsilon = Delta_u / t_u (the discrete Laplace map on the rounded query),
    rho = epsilon^2 / 2.
    """

    scale: float
    l1_sensitivity: float
    dim: int = 1
    grid_exponent: int | None = None
    scale_units: int = field(init=False)
    sensitivity_units: Fraction = field(init=False)

    name: ClassVar[str] = "laplace"
    family: ClassVar[str] = "laplace"

    def __post_init__(self) -> None:
        scale = _positive_fraction(self.scale, "scale")
        sens = _positive_fraction(self.l1_sensitivity, "l1_sensitivity")
        object.__setattr__(self, "dim", _positive_int(self.dim, "dim"))
        e = self.grid_exponent
        if e is None:
            e = fixedpoint.default_exponent(float(scale), float(sens))
            object.__setattr__(self, "grid_exponent", e)
        unit = fixedpoint.grid(e)
        object.__setattr__(self, "scale_units", math.ceil(scale / unit))
        object.__setattr__(self, "sensitivity_units", fixedpoint.l1_units(float(sens), e, self.dim))
        if self.scale_units * 60 >= 2**51:
            raise MechanismError("scale is too large relative to the fixed-point grid")

    @classmethod
    def for_epsilon(
        cls, epsilon: float, *, l1_sensitivity: float, dim: int = 1
    ) -> LaplaceMechanism:
        """The least noise on the default grid with epsilon(map) <= ``epsilon``."""
        eps = _positive_fraction(epsilon, "epsilon")
        e = fixedpoint.default_exponent(l1_sensitivity)
        d_units = fixedpoint.l1_units(l1_sensitivity, e, dim)
        scale_units = math.ceil(d_units / eps)
        return cls(scale_units * 2.0**e, l1_sensitivity, dim, e)

    @property
    def sensitivity(self) -> float:
        return float(self.l1_sensitivity)

    @property
    def noise_scale(self) -> float:
        return self.scale_units * 2.0**self.grid_exponent

    def parameters(self) -> dict[str, Any]:
        return {
            "scale": self.noise_scale,
            "l1_sensitivity": float(self.l1_sensitivity),
            "dim": self.dim,
            "grid": f"2^{self.grid_exponent}",
        }

    def privacy_map(self) -> PrivacyLoss:
        eps = self.sensitivity_units / self.scale_units
        return PrivacyLoss(
            eps * eps / 2,
            (PureDPEvent(eps),),
            eps,
            "epsilon = Delta_u / t_u on the fixed-point grid",
        )

    def _coerce(self, answer: Any) -> np.ndarray:
        try:
            return np.asarray(answer, dtype=np.float64)
        except (TypeError, ValueError):
            raise MechanismError(f"{self.name} takes real-valued answers") from None

    def _perturb(self, answer: np.ndarray, rng: RandomBits) -> np.ndarray:
        e = self.grid_exponent
        assert e is not None
        units = fixedpoint.encode(answer, e)
        noise = discrete_laplace_array(self.scale_units, units.size, rng)
        return fixedpoint.decode(units + noise, e)


# --------------------------------------------------------------------------- calibration


def gaussian_sigma_for_rho(rho: float, l2_sensitivity: float) -> float:
    """sigma with Delta^2 / (2 sigma^2) = rho (before fixed-point rounding, which adds noise)."""
    if not (rho > 0 and l2_sensitivity > 0):
        raise MechanismError("rho and the sensitivity must be positive")
    return l2_sensitivity / math.sqrt(2 * rho)


def gaussian_sigma_for(epsilon: float, delta: float, l2_sensitivity: float) -> float:
    """sigma for an (epsilon, delta) target through the zCDP conversion the gate uses."""
    return gaussian_sigma_for_rho(float(rho_for_epsilon(epsilon, delta)), l2_sensitivity)


def laplace_scale_for(epsilon: float, l1_sensitivity: float) -> float:
    """Laplace scale b = Delta_1 / epsilon."""
    if not (epsilon > 0 and l1_sensitivity > 0):
        raise MechanismError("epsilon and the sensitivity must be positive")
    return l1_sensitivity / epsilon


def claimed_epsilon(mechanism: Mechanism, delta: float) -> float:
    """The epsilon at ``delta`` that the mechanism's privacy map claims (pure or via zCDP)."""
    loss = mechanism.privacy_map()
    if loss.pure_epsilon is not None:
        return float(loss.pure_epsilon)
    return zcdp_epsilon(loss.rho, delta)


SHIPPED: dict[str, type[Mechanism]] = {
    cls.name: cls
    for cls in (
        GaussianMechanism,
        DiscreteGaussianMechanism,
        LaplaceMechanism,
        DiscreteLaplaceMechanism,
    )
}


def calibrated(
    name: str, epsilon: float, delta: float = 1e-5, *, sensitivity: float = 1.0
) -> Mechanism:
    """A shipped mechanism, by name, calibrated to (epsilon, delta); delta is ignored by the
    pure-DP Laplace family. Used by ``gramfed audit test-mechanism``."""
    if name not in SHIPPED:
        raise MechanismError(f"unknown mechanism {name!r}; choose from {', '.join(SHIPPED)}")
    if name == "gaussian":
        return GaussianMechanism.for_epsilon(epsilon, delta, l2_sensitivity=sensitivity)
    if name == "discrete_gaussian":
        rho = rho_for_epsilon(epsilon, delta)
        return DiscreteGaussianMechanism.for_rho(rho, l2_sensitivity=sensitivity)
    if name == "laplace":
        return LaplaceMechanism.for_epsilon(epsilon, l1_sensitivity=sensitivity)
    return DiscreteLaplaceMechanism.for_epsilon(epsilon, l1_sensitivity=sensitivity)
