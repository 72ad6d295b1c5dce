"""One gate release per agent: its statistics, packed into one vector, one Gaussian mechanism.

The mechanism is priced from public parameters only: the dimension D(D+1)/2 + D + 2, the L2
sensitivity 1 (``statistics``: every record's feature vector has unit norm and its encoded
target lies in [-1, 1]) and the rho the caller grants. The statistics themselves are computed
only inside the gate's transaction, after the budget check (``compute`` is called there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from gramfed.privacy.budget import PoolSpec
from gramfed.privacy.gate import Gate
from gramfed.privacy.mechanisms import GaussianMechanism
from gramfed.privacy.release import Release
from gramfed.workers.dp_gsmp.statistics import (
    StatisticsSplit,
    SufficientStatistics,
    pack,
    vector_size,
)

L2_SENSITIVITY = 1.0


@dataclass(frozen=True)
class NoiseScales:
    """Standard deviation of the released noise on each statistic (diagonal entries of S)."""

    gram: float
    cross: float
    yy: float
    count: float


def mechanism_for(rho: float | Fraction, dim: int) -> GaussianMechanism:
    """The least Gaussian noise whose privacy map is at most ``rho`` for D = ``dim``."""
    return GaussianMechanism.for_rho(rho, l2_sensitivity=L2_SENSITIVITY, dim=vector_size(dim))


def noise_scales(mechanism: GaussianMechanism, split: StatisticsSplit) -> NoiseScales:
    sigma = mechanism.noise_sd
    return NoiseScales(
        sigma / split.gram, sigma / split.cross, sigma / split.yy, sigma / split.count
    )


def release_statistics(
    gate: Gate,
    pool: str | PoolSpec,
    compute: Callable[[], SufficientStatistics],
    *,
    mechanism: GaussianMechanism,
    split: StatisticsSplit,
    requester: str,
    description: str,
) -> Release:
    """Release ``pack(compute(), split)`` through ``mechanism``, charged to ``pool``."""
    return gate.release(
        pool,
        mechanism,
        lambda: pack(compute(), split),
        requester=requester,
        description=description,
    )
