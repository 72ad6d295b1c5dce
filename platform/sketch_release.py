"""Releasing sketches through the privacy gate: the mechanism for a spec, and one release.

The released vector is, for each group g (one group; or one per class when classes partition
the records), the sums followed by the count: ``[S_1, n_1, S_2, n_2, ...]``. A record belongs to
one group, so adding or removing it changes one group's block only and the sensitivity of the
whole vector is that of one block (``rff`` and ``lsh`` derive it): one release of cost rho
protects every group, where one release per group would be charged rho per group.

Mechanisms (all noise exact and from the gate's cryptographic source):

* RFF, ``gaussian``: Gaussian mechanism (fixed-point discrete Gaussian), L2 sensitivity
  sqrt(2 + 2^-11).
* RFF, ``laplace``: Laplace mechanism, L1 sensitivity sqrt(D) (1 + 2^-12) + 1 (as Wagner et al.,
  ICML 2023).
* LSH, ``gaussian``: discrete Gaussian on the integer counts, R + 1 unit changes.
* LSH, ``laplace``: discrete Laplace on the integer counts, L1 sensitivity R + 1.

Integer noise on integer counts is never rounded or floored, so the counts stay unbiased.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Literal

import numpy as np

from gramfed.privacy.budget import PoolSpec
from gramfed.privacy.gate import Gate
from gramfed.privacy.mechanisms import (
    DiscreteGaussianMechanism,
    DiscreteLaplaceMechanism,
    GaussianMechanism,
    LaplaceMechanism,
    Mechanism,
)
from gramfed.privacy.release import Release
from gramfed.workers.sketch import rff
from gramfed.workers.sketch.accumulate import SketchSums
from gramfed.workers.sketch.sketch import NoiseProfile, Provenance, Sketch
from gramfed.workers.sketch.spec import SketchSpec

NoiseFamily = Literal["gaussian", "laplace"]


def sketch_mechanism(
    spec: SketchSpec,
    groups: int = 1,
    *,
    noise: NoiseFamily = "gaussian",
    rho: float | Fraction | None = None,
    epsilon: float | None = None,
) -> Mechanism:
    """The mechanism releasing ``groups`` blocks of (sums, count) for ``spec``.

    The Gaussian family is calibrated to ``rho`` (zCDP), the Laplace family to a pure
    ``epsilon``.
    """
    if noise not in ("gaussian", "laplace"):
        raise ValueError(f"noise must be 'gaussian' or 'laplace', got {noise!r}")
    if (rho is None) == (epsilon is None) or (noise == "gaussian") != (rho is not None):
        raise ValueError("give rho for gaussian noise, or epsilon for laplace noise")
    dim = groups * (spec.size + 1)
    if spec.is_rff:
        if noise == "gaussian":
            return GaussianMechanism.for_rho(rho, l2_sensitivity=rff.L2_SENSITIVITY, dim=dim)
        return LaplaceMechanism.for_epsilon(
            epsilon, l1_sensitivity=rff.l1_sensitivity(spec.features), dim=dim
        )
    changes = spec.repetitions + 1  # see gramfed.workers.sketch.lsh
    if noise == "gaussian":
        return DiscreteGaussianMechanism.for_rho(rho, unit_changes=changes, dim=dim)
    return DiscreteLaplaceMechanism.for_epsilon(epsilon, l1_sensitivity=changes, dim=dim)


def noise_profile(mechanism: Mechanism) -> NoiseProfile:
    """The per-coordinate noise of one of the four sketch mechanisms."""
    if isinstance(mechanism, GaussianMechanism):
        return NoiseProfile.gaussian(mechanism.noise_sd)
    if isinstance(mechanism, DiscreteGaussianMechanism):
        # N_Z(0, s2) is s2-sub-Gaussian (Canonne, Kamath & Steinke 2020, Cor. 9).
        return NoiseProfile.gaussian(math.sqrt(mechanism.sigma2))
    if isinstance(mechanism, LaplaceMechanism):
        return NoiseProfile.laplace(mechanism.noise_scale)
    if isinstance(mechanism, DiscreteLaplaceMechanism):
        # Its moment generating function is below that of the continuous Laplace of equal scale.
        return NoiseProfile.laplace(float(mechanism.scale))
    raise TypeError(f"not a sketch mechanism: {mechanism!r}")


def release_sketches(
    gate: Gate,
    pool: str | PoolSpec,
    spec: SketchSpec,
    labels: Sequence[str],
    compute: Callable[[], Mapping[str, SketchSums]],
    *,
    noise: NoiseFamily = "gaussian",
    rho: float | Fraction | None = None,
    epsilon: float | None = None,
    requester: str,
    description: str = "",
) -> tuple[Release, dict[str, Sketch]]:
    """One gate release of the sketches of disjoint groups of records (e.g. classes).

    ``labels`` are public and fix the release's size before anything is computed; ``compute``
    runs only after the gate's budget check and must return sums for exactly those labels.
    """
    labels = list(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError("give one or more distinct group labels")
    mechanism = sketch_mechanism(spec, len(labels), noise=noise, rho=rho, epsilon=epsilon)

    def joint_vector() -> np.ndarray:
        sums = compute()
        if set(sums) != set(labels):
            raise ValueError("the sketch sums do not match the announced labels")
        blocks = []
        for label in labels:
            part = sums[label]
            spec.require_compatible(part.spec)
            blocks += [part.values, np.array([part.count], dtype=part.values.dtype)]
        return np.concatenate(blocks)

    what = description or f"{spec.kernel} sketch ({spec.describe()})"
    release = gate.release(pool, mechanism, joint_vector, requester=requester, description=what)
    key = pool.key if isinstance(pool, PoolSpec) else pool
    origin = Provenance(
        ledger_uuid=release.ledger_uuid,
        ledger_id=release.ledger_id,
        entry_hash=release.entry_hash,
        pool=key,
        rho=release.rho,
        delta=gate.ledger.pool(key).delta,
        unit=release.unit.name,
        neighbouring=release.neighbouring.value,
        mechanism=mechanism.describe(),
    )
    profile = noise_profile(mechanism)
    blocks = np.asarray(release.value).reshape(len(labels), spec.size + 1)
    sketches = {
        label: Sketch(spec, block[:-1].copy(), float(block[-1]), profile, (origin,), label)
        for label, block in zip(labels, blocks, strict=True)
    }
    return release, sketches


def release_sketch(
    gate: Gate,
    pool: str | PoolSpec,
    spec: SketchSpec,
    compute: Callable[[], SketchSums],
    **options: object,
) -> tuple[Release, Sketch]:
    """One sketch of one dataset through the gate; see ``release_sketches``."""
    release, sketches = release_sketches(
        gate,
        pool,
        spec,
        [""],
        lambda: {"": compute()},
        **options,  # type: ignore[arg-type]
    )
    return release, sketches[""]
