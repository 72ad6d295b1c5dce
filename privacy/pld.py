"""A small, pessimistic privacy-loss-distribution (PLD) accountant for plans fixed in advance.

For a pair of output distributions (P, Q) of a mechanism on neighbouring inputs, the privacy
loss is L = log(P(o)/Q(o)) with o ~ P, and the tightest delta at a given epsilon is the hockey-stick
divergence ``delta(eps) = E_P[(1 - exp(eps - L))_+]``. Losses of independent mechanisms add, so
the PLD of a composition is the convolution of the parts' PLDs (Koskela et al. 2020; Meiser &
Mohammadi 2018; Doroshenko et al. 2022).

Here every loss is rounded *up* to the grid ``h * Z``; losses beyond a truncation point are moved
to +infinity (counted in delta in full) or, in the lower tail, up to the lowest kept grid point.
Each step can only increase ``delta(eps)`` (the integrand is non-decreasing in L) and rounding is
applied per mechanism before convolution, so the composed figure is an upper bound on the true
one, up to float round-off in the probability masses (relative 1e-12).

Only pairs with a known worst case get a PLD (see ``gramfed.privacy.accountant``): the continuous
Gaussian (any L2 sensitivity, by rotation invariance), randomized response (the worst case of
every pure epsilon-DP mechanism, Kairouz, Oh & Viswanath 2015) and the discrete Gaussian with unit
integer shifts. All three are symmetric, so the (Q, P) direction gives the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import signal, special, stats

DEFAULT_GRID = 1e-3
_TAIL_SIGMAS = 12.0  # Gaussian tails beyond 12 sd carry < 2e-33 of the mass
_NEGLIGIBLE = 1e-30


@dataclass(frozen=True)
class DiscretePLD:
    """Mass ``pmf[i]`` at loss ``(offset + i) * grid``, plus ``infinity`` mass at loss +inf."""

    grid: float
    offset: int
    pmf: np.ndarray
    infinity: float = 0.0

    def compose(self, other: DiscretePLD) -> DiscretePLD:
        if other.grid != self.grid:
            raise ValueError("PLDs on different grids cannot be composed")
        if len(self.pmf) * len(other.pmf) < 4096:
            pmf = np.convolve(self.pmf, other.pmf)
        else:
            pmf = signal.fftconvolve(self.pmf, other.pmf)
        np.clip(pmf, 0.0, None, out=pmf)
        infinity = 1.0 - (1.0 - self.infinity) * (1.0 - other.infinity)
        return _trimmed(DiscretePLD(self.grid, self.offset + other.offset, pmf, infinity))

    def self_compose(self, count: int) -> DiscretePLD:
        """The k-fold composition, by repeated squaring."""
        if count < 1:
            raise ValueError("count must be >= 1")
        result: DiscretePLD | None = None
        base = self
        while count:
            if count & 1:
                result = base if result is None else result.compose(base)
            count >>= 1
            if count:
                base = base.compose(base)
        assert result is not None
        return result

    def delta(self, epsilon: float) -> float:
        """Upper bound on the hockey-stick divergence at ``epsilon``."""
        losses = (self.offset + np.arange(len(self.pmf))) * self.grid
        mask = losses > epsilon
        tail = self.pmf[mask] * -np.expm1(epsilon - losses[mask])
        return float(self.infinity + tail.sum())

    def epsilon(self, delta: float) -> float:
        """Smallest epsilon (to 1e-9) with ``self.delta(epsilon) <= delta``; inf if none."""
        if self.infinity >= delta:
            return math.inf
        top = (self.offset + len(self.pmf)) * self.grid
        if self.delta(0.0) <= delta:
            return 0.0
        lo, hi = 0.0, max(top, 0.0)
        for _ in range(200):
            if hi - lo <= 1e-9 * max(1.0, hi):
                break
            mid = 0.5 * (lo + hi)
            if self.delta(mid) <= delta:
                hi = mid
            else:
                lo = mid
        return hi


def _trimmed(pld: DiscretePLD) -> DiscretePLD:
    """Drop negligible mass at both ends, pessimistically (low end moves up, high end to inf)."""
    pmf = pld.pmf
    cum = np.cumsum(pmf)
    low = int(np.searchsorted(cum, _NEGLIGIBLE, side="right"))
    rcum = np.cumsum(pmf[::-1])
    high = len(pmf) - int(np.searchsorted(rcum, _NEGLIGIBLE, side="right"))
    if low == 0 and high == len(pmf):
        return pld
    low = min(low, high - 1)
    kept = pmf[low:high].copy()
    kept[0] += cum[low - 1] if low > 0 else 0.0
    infinity = pld.infinity + (float(rcum[len(pmf) - high - 1]) if high < len(pmf) else 0.0)
    return DiscretePLD(pld.grid, pld.offset + low, kept, min(infinity, 1.0))


def _from_samples(
    losses: np.ndarray, masses: np.ndarray, grid: float, infinity: float
) -> DiscretePLD:
    idx = np.ceil(losses / grid).astype(np.int64)
    offset = int(idx.min())
    pmf = np.bincount(idx - offset, weights=masses)
    return _trimmed(DiscretePLD(grid, offset, pmf, infinity))


def gaussian(mu: float, grid: float = DEFAULT_GRID) -> DiscretePLD:
    """Continuous Gaussian with sensitivity/sigma = mu: L ~ N(mu^2/2, mu^2) under P."""
    if mu <= 0:
        raise ValueError("mu must be positive")
    mean, sd = mu * mu / 2, mu
    lo = math.floor((mean - _TAIL_SIGMAS * sd) / grid)
    hi = math.ceil((mean + _TAIL_SIGMAS * sd) / grid)
    edges = np.arange(lo, hi + 1) * grid  # bucket k collects L in (edges[k-1], edges[k]]
    cdf = stats.norm.cdf(edges, loc=mean, scale=sd)
    masses = np.diff(cdf)
    masses[0] += cdf[0]  # the lower tail moves up to the first kept point
    infinity = float(stats.norm.sf(edges[-1], loc=mean, scale=sd))
    return _trimmed(DiscretePLD(grid, lo + 1, masses, infinity))


def randomized_response(epsilon: float, grid: float = DEFAULT_GRID) -> DiscretePLD:
    """Loss +eps with probability e^eps/(1+e^eps), -eps otherwise (the epsilon-DP worst case)."""
    if epsilon <= 0:
        return DiscretePLD(grid, 0, np.array([1.0]))
    p_high = special.expit(epsilon)
    return _from_samples(np.array([epsilon, -epsilon]), np.array([p_high, 1 - p_high]), grid, 0.0)


MAX_DISCRETE_SIGMA = 1e5


def discrete_gaussian_unit(sigma2: float, grid: float = DEFAULT_GRID) -> DiscretePLD:
    """Discrete Gaussian N_Z(0, sigma2) against N_Z(1, sigma2): L(y) = (1 - 2y) / (2 sigma2).

    Both normalising constants are equal (a unit shift maps Z onto itself), so the loss is affine
    in y. Masses are summed exactly over |y| <= 12 sigma + 2; the rest (< 1e-30) goes to +inf.
    """
    sigma = math.sqrt(sigma2)
    if not 0 < sigma <= MAX_DISCRETE_SIGMA:
        raise ValueError(f"sigma must lie in (0, {MAX_DISCRETE_SIGMA:g}]")
    span = math.ceil(_TAIL_SIGMAS * sigma) + 2
    y = np.arange(-span, span + 1, dtype=np.float64)
    logw = -(y * y) / (2 * sigma2)
    masses = np.exp(logw - special.logsumexp(logw))
    losses = (1 - 2 * y) / (2 * sigma2)
    # Mass outside the window, bounded by a geometric series on each side.
    outside = 2 * math.exp(-(span * span) / (2 * sigma2)) / (1 - math.exp(-span / sigma2))
    return _from_samples(losses, masses, grid, min(outside, 1.0))
