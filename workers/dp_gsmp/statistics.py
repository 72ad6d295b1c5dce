"""Sufficient statistics of the random-feature GP and their per-record sensitivity.

With features ``Phi`` (n, D) and targets ``t`` (n,), the marginal likelihood of
``C = Phi diag(w) Phi' + s2 I`` and the posterior at any input depend on the data only through

    S = Phi'Phi (D, D),   b = Phi't (D,),   c = t't,   n,

each a sum of one term per record. ``SufficientStatistics`` holds them; shards' statistics
add up to the pooled ones (``+``).

Targets. ``TargetRange`` is a declared, public interval ``[lo, hi]``: a target is clipped to it
and mapped to ``t = (y - mid) / half`` in [-1, 1] (``mid``, ``half``: the interval's centre and
half-width). Predictions are mapped back.

Sensitivity (privacy unit: one record; neighbours: add/remove one record). Adding or removing a
record (x, y) changes the statistics by ``(phi phi', t phi, t^2, 1)`` with ``|phi|_2 = 1``
exactly (``features``: the spectral, constant and clipped linear blocks scaled by fixed public
shares that sum to 1, for every input whatever its size) and ``|t| <= 1``. The released vector is

    v = [w_S vech(S), w_b b, w_c c, w_n n],

where ``vech`` lists the upper triangle row by row with the off-diagonal entries multiplied by
``sqrt(2)``, so that ``|vech(A)|_2 = |A|_F`` for a symmetric A. One record moves v by

    |dv|^2 = w_S^2 |phi phi'|_F^2 + w_b^2 t^2 |phi|^2 + w_c^2 t^4 + w_n^2
           = w_S^2 |phi|^4 + w_b^2 t^2 |phi|^2 + w_c^2 t^4 + w_n^2
          <= w_S^2 + w_b^2 + w_c^2 + w_n^2 = 1,

with the weights normalised to unit sum of squares; the bound is attained by any record with
``|y - mid| >= half``. So one Gaussian mechanism of L2 sensitivity 1 releases all four, and the
noise standard deviation on statistic k is ``sigma / w_k`` (``sigma / (sqrt(2) w_S)`` on an
off-diagonal entry of S, whose two mirror copies share one draw).

Budget split. The weights decide how the single mechanism's budget is shared: the cost is the
same for every choice with ``sum w_k^2 = 1``, and statistic k (d_k coordinates: D(D+1)/2, D, 1,
1) receives total squared error ``d_k sigma^2 / w_k^2``. Each statistic is a sum of n terms of
norm at most 1, so its size is of order n for all four, and the sum of their *relative* squared
errors, ``sum_k d_k sigma^2 / (w_k^2 n^2)``, is minimised under ``sum_k w_k^2 = 1`` (Lagrange:
``d_k / w_k^4`` equal for all k) by ``w_k^2 proportional to sqrt(d_k)``
(``StatisticsSplit.error_minimising``).
Equal weights (``StatisticsSplit.uniform``, the same noise on every coordinate) would
give n and c about ``D / sqrt(2)`` times less noise than they need and S correspondingly more.

The relative-error criterion counts every coordinate of S alike, but predictions use S and b
only through the posterior mean, ``beta ~ (S + Lambda)^-1 b`` (``solver``; Lambda the prior's
ridge). To first order a release error moves it by ``(S + Lambda)^-1 (db - dS beta)``, and
``E|db - dS beta|^2 ~ D (sigma_b^2 + sigma_S^2 |beta|^2)``: b's noise enters directly, S's
scaled by the coefficients. Minimising ``1 / w_b^2 + |beta|^2 / w_S^2`` under a fixed
``w_S^2 + w_b^2`` gives ``w_S^2 / w_b^2 = |beta|``. The coefficients are private, but their
scale follows from public quantities: by Cauchy-Schwarz a fit ``phi'beta ~ t`` with
``|phi| = 1`` needs ``|beta| >= |t|``, about 1/2 for targets spread over half the declared
range. c and n are scalars that enter only through the noise variance and the count, whose
relative errors are ``sigma / (w n)``: a quarter of S's share keeps them at a few per cent of n
already at n = 500, epsilon = 1. Hence ``StatisticsSplit.predictive``: ``w^2`` proportional to
(1, 2, 1/4, 1/4), whatever D. On 80/20 validation splits of the training sets of
``bench/dp_gsmp.py`` at epsilon = 1 (4 noise draws each) it cut the validation MSE of the
error-minimising split by 14-34%; ratios w_b^2 / w_S^2 of 3 and 4 did as well within the
draws' spread, 1 worse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class TargetRange:
    """A declared public range ``[lo, hi]`` for the target; values outside are clipped."""

    lo: float
    hi: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi) and self.lo < self.hi):
            raise ValueError(f"the target range needs finite lo < hi, got [{self.lo}, {self.hi}]")

    @property
    def mid(self) -> float:
        return 0.5 * (self.lo + self.hi)

    @property
    def half(self) -> float:
        return 0.5 * (self.hi - self.lo)

    def encode(self, y: Tensor) -> Tensor:
        """Clip to the range and map to [-1, 1]."""
        return (y.to(torch.float64).clamp(self.lo, self.hi) - self.mid) / self.half

    def decode(self, t: Tensor) -> Tensor:
        return t * self.half + self.mid


@dataclass(frozen=True)
class SufficientStatistics:
    """``gram = Phi'Phi``, ``cross = Phi't``, ``yy = t't`` and ``count = n`` (float64)."""

    gram: Tensor
    cross: Tensor
    yy: float
    count: float

    @property
    def dim(self) -> int:
        return int(self.cross.shape[0])

    @property
    def device(self) -> torch.device:
        return self.gram.device

    @classmethod
    def compute(cls, phi: Tensor, t: Tensor) -> SufficientStatistics:
        """Statistics of features (n, D) and encoded targets (n,)."""
        if phi.ndim != 2 or t.shape != (phi.shape[0],):
            raise ValueError(f"features {tuple(phi.shape)} and targets {tuple(t.shape)} differ")
        phi, t = phi.to(torch.float64), t.to(phi.device, torch.float64)
        return cls(phi.T @ phi, phi.T @ t, float(t @ t), float(phi.shape[0]))

    def __add__(self, other: SufficientStatistics) -> SufficientStatistics:
        if other.dim != self.dim:
            raise ValueError(f"cannot add statistics of dimensions {self.dim} and {other.dim}")
        return SufficientStatistics(
            self.gram + other.gram.to(self.device),
            self.cross + other.cross.to(self.device),
            self.yy + other.yy,
            self.count + other.count,
        )

    def to(self, device: torch.device) -> SufficientStatistics:
        return SufficientStatistics(
            self.gram.to(device), self.cross.to(device), self.yy, self.count
        )


@dataclass(frozen=True)
class StatisticsSplit:
    """Weights ``(w_S, w_b, w_c, w_n)`` with unit sum of squares (see the module docstring)."""

    gram: float
    cross: float
    yy: float
    count: float

    def __post_init__(self) -> None:
        w = np.array([self.gram, self.cross, self.yy, self.count])
        if not (np.all(w > 0) and abs(float(w @ w) - 1.0) < 1e-9):
            raise ValueError(f"split weights must be positive with unit sum of squares, got {w}")

    @classmethod
    def error_minimising(cls, dim: int) -> StatisticsSplit:
        """``w_k^2`` proportional to ``sqrt(d_k)``: least total relative squared error."""
        return cls.from_shares([math.sqrt(dim * (dim + 1) / 2), math.sqrt(dim), 1.0, 1.0])

    @classmethod
    def predictive(cls) -> StatisticsSplit:
        """``w^2`` proportional to (1, 2, 1/4, 1/4): least posterior-mean error (module doc)."""
        return cls.from_shares([1.0, 2.0, 0.25, 0.25])

    @classmethod
    def uniform(cls, dim: int) -> StatisticsSplit:
        """Every coordinate the same noise: ``w_k^2`` proportional to ``d_k``."""
        return cls.from_shares([dim * (dim + 1) / 2, dim, 1.0, 1.0])

    @classmethod
    def from_shares(cls, shares: list[float]) -> StatisticsSplit:
        total = sum(shares)
        return cls(*(math.sqrt(s / total) for s in shares))


def vector_size(dim: int) -> int:
    """Coordinates of the released vector: D(D+1)/2 + D + 2."""
    return dim * (dim + 1) // 2 + dim + 2


def pack(stats: SufficientStatistics, split: StatisticsSplit) -> np.ndarray:
    """The released vector ``[w_S vech(S), w_b b, w_c c, w_n n]`` (float64, 1-D)."""
    rows, cols = _upper(stats.dim)
    scale = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(torch.float64)
    gram = stats.gram.cpu()[rows, cols] * scale
    parts = [
        split.gram * gram,
        split.cross * stats.cross.cpu(),
        torch.tensor([split.yy * stats.yy, split.count * stats.count], dtype=torch.float64),
    ]
    return torch.cat(parts).numpy()


def unpack(vector: np.ndarray, dim: int, split: StatisticsSplit) -> SufficientStatistics:
    """Inverse of ``pack`` (for a noisy vector: the noisy statistics, still symmetric)."""
    v = torch.tensor(np.asarray(vector, dtype=np.float64))
    if v.shape != (vector_size(dim),):
        raise ValueError(f"a released vector for D = {dim} has {vector_size(dim)} entries")
    rows, cols = _upper(dim)
    tri = len(rows)
    scale = torch.where(rows == cols, 1.0, math.sqrt(2.0)).to(torch.float64)
    gram = torch.zeros(dim, dim, dtype=torch.float64)
    gram[rows, cols] = v[:tri] / (split.gram * scale)
    gram[cols, rows] = gram[rows, cols]
    cross = v[tri : tri + dim] / split.cross
    return SufficientStatistics(gram, cross, float(v[-2]) / split.yy, float(v[-1]) / split.count)


def repair(stats: SufficientStatistics, floor: float) -> SufficientStatistics:
    """Post-processing that makes noisy statistics consistent with some dataset's.

    * ``S``: symmetric eigenvalue clipping at ``floor`` (> 0). Directions whose eigenvalue
      is below the release noise's scale carry noise only; raising them to the floor keeps
      ``S`` positive definite and bounds ``b'S^-1 b``.
    * ``n >= 1``.
    * ``c >= b'S^-1 b``: true statistics satisfy ``t't >= t'P t`` for the projection P onto
      the features' span; with it ``t'C^-1 t >= 0`` for every weight and noise variance
      (``W^1/2 (s2 I + W^1/2 S W^1/2)^-1 W^1/2 <= S^-1``), so the objective is bounded below.
    """
    if not floor > 0:
        raise ValueError(f"the eigenvalue floor must be positive, got {floor}")
    gram = 0.5 * (stats.gram + stats.gram.T)
    values, vectors = torch.linalg.eigh(gram)
    values = values.clamp_min(floor)
    gram = (vectors * values) @ vectors.T
    proj = vectors.T @ stats.cross
    explained = float((proj.square() / values).sum())
    return SufficientStatistics(gram, stats.cross, max(stats.yy, explained), max(stats.count, 1.0))


def _upper(dim: int) -> tuple[Tensor, Tensor]:
    index = torch.triu_indices(dim, dim)
    return index[0], index[1]
