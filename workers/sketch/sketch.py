"""A released sketch: noisy sums, the public spec, the noise it carries, and its provenance.

A ``Sketch`` is what leaves a job (through the privacy gate, see ``release``) and what is
merged, saved and queried. Merging adds values, counts and noise; it needs equal specs and the
same privacy unit. What a merged sketch costs one record: parts released from different pools
cover different datasets, so a record is in one of them (parallel composition) and the cost is
the largest per-pool total; parts from the same pool compose sequentially and their rho adds
(each ledger entry counted once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from gramfed.privacy.accountant import zcdp_epsilon
from gramfed.workers.sketch.spec import SketchMismatch, SketchSpec


@dataclass(frozen=True)
class NoiseProfile:
    """Per-coordinate noise as tail parameters: sub-Gaussian variance proxy and sub-exponential
    scale.

    Gaussian noise of sd s: (s^2, 0). Laplace noise of scale b: E e^{tX} = 1 / (1 - t^2 b^2)
    <= e^{2 t^2 b^2} for |t| <= 1 / (2 b), i.e. (4 b^2, 2 b). Independent sums add the first
    and take the larger second. ``variance`` is the plain variance (2 b^2 for Laplace).
    """

    family: str
    subgaussian: float
    subexponential: float
    variance: float

    @classmethod
    def gaussian(cls, sd: float) -> NoiseProfile:
        return cls("gaussian", sd * sd, 0.0, sd * sd)

    @classmethod
    def laplace(cls, scale: float) -> NoiseProfile:
        return cls("laplace", 4 * scale * scale, 2 * scale, 2 * scale * scale)

    @classmethod
    def none(cls) -> NoiseProfile:
        return cls("none", 0.0, 0.0, 0.0)

    def __add__(self, other: NoiseProfile) -> NoiseProfile:
        families = {self.family, other.family} - {"none"}
        return NoiseProfile(
            families.pop() if len(families) == 1 else ("mixed" if families else "none"),
            self.subgaussian + other.subgaussian,
            max(self.subexponential, other.subexponential),
            self.variance + other.variance,
        )

    def tail(self, l2: Tensor | float, linf: Tensor | float, failure: float) -> Tensor:
        """t with P(|sum_j a_j X_j| > t) <= ``failure`` for weights of norms ``l2``, ``linf``.

        Bernstein's inequality for sub-exponential sums: t = max(nu |a|_2 sqrt(2 L),
        2 alpha |a|_inf L) with L = log(2 / failure).
        """
        log_term = math.log(2.0 / failure)
        return torch.maximum(
            math.sqrt(self.subgaussian) * math.sqrt(2.0 * log_term) * torch.as_tensor(l2),
            2.0 * self.subexponential * log_term * torch.as_tensor(linf),
        ).to(torch.float64)


@dataclass(frozen=True)
class Provenance:
    """The ledger entry one released part of a sketch comes from."""

    ledger_uuid: str
    ledger_id: int
    entry_hash: str
    pool: str
    rho: Fraction
    delta: float
    unit: str
    neighbouring: str
    mechanism: str


@dataclass(frozen=True)
class Sketch:
    """Noisy sums ``values`` (float64 for RFF, int64 counts for LSH) and noisy ``count``.

    ``provenance`` is empty only for a sketch that was never released (tests build noise-free
    ones to check merging); such a sketch cannot be saved.
    """

    spec: SketchSpec
    values: np.ndarray
    count: float
    noise: NoiseProfile = field(default_factory=NoiseProfile.none)
    provenance: tuple[Provenance, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        want = np.float64 if self.spec.is_rff else np.int64
        if values.shape != (self.spec.size,):
            raise ValueError(
                f"a {self.spec.kernel} sketch of this spec has {self.spec.size} values,"
                f" got shape {values.shape}"
            )
        if values.dtype != want:
            raise ValueError(f"a {self.spec.kernel} sketch holds {np.dtype(want)} values")
        if not (np.all(np.isfinite(values)) and math.isfinite(self.count)):
            raise ValueError("a sketch's values and count must be finite")
        values = values.copy()
        values.setflags(write=False)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "count", float(self.count))
        units = {(p.unit, p.neighbouring) for p in self.provenance}
        if len(units) > 1:
            raise SketchMismatch(
                "the sketch's parts are protected for different privacy units; they cannot be"
                " merged"
            )

    @property
    def released(self) -> bool:
        return bool(self.provenance)

    @property
    def rho(self) -> Fraction:
        """zCDP cost to one record (see the module docstring for merged sketches)."""
        per_pool: dict[tuple[str, str], Fraction] = {}
        for entry in {(p.ledger_uuid, p.ledger_id): p for p in self.provenance}.values():
            key = (entry.ledger_uuid, entry.pool)
            per_pool[key] = per_pool.get(key, Fraction(0)) + entry.rho
        return max(per_pool.values(), default=Fraction(0))

    @property
    def delta(self) -> float:
        """The smallest delta among the parts' pools: (epsilon(delta), delta) holds for each."""
        return min((p.delta for p in self.provenance), default=1e-6)

    @property
    def epsilon(self) -> float:
        return zcdp_epsilon(self.rho, self.delta) if self.rho > 0 else 0.0

    @property
    def unit(self) -> str:
        return self.provenance[0].unit if self.provenance else "none (not released)"

    def privacy_statement(self) -> str:
        if not self.released:
            return "not released: exact sums, no privacy guarantee"
        return (
            f"rho={float(self.rho):.6g}-zCDP (epsilon={self.epsilon:.4g} at delta="
            f"{self.delta:.3g}) per {self.unit}, {self.provenance[0].neighbouring};"
            f" {self.noise.family} noise, variance {self.noise.variance:.4g} per coordinate"
        )

    def merge(self, other: Sketch) -> Sketch:
        """The sketch of the union of both datasets: values, counts and noise add."""
        self.spec.require_compatible(other.spec)
        if self.released != other.released:
            raise SketchMismatch("cannot merge a released sketch with an unreleased one")
        if self.label != other.label:
            raise SketchMismatch(
                f"cannot merge sketches of different labels {self.label!r} and {other.label!r}"
            )
        return Sketch(
            self.spec,
            self.values + other.values,
            self.count + other.count,
            self.noise + other.noise,
            self.provenance + other.provenance,
            self.label,
        )


def merge_all(sketches: list[Sketch]) -> Sketch:
    """Merge a non-empty list of compatible sketches."""
    if not sketches:
        raise ValueError("nothing to merge")
    merged = sketches[0]
    for sketch in sketches[1:]:
        merged = merged.merge(sketch)
    return merged
