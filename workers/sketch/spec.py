"""What a sketch is: its kernel, bandwidth, public seed and size.

Everything here is public. Two sketches merge by addition only when their specs are equal, since
only then were the same random features (or hash functions) applied to both datasets.

Kernels (all with k(x, x) = 1, so a KDE value lies in [0, 1]):

* ``gaussian``: ``exp(-|x - y|_2^2 / (2 h^2))``, estimated by random Fourier features (RFF).
* ``laplacian``: ``exp(-hashes * |x - y|_1 / h)``, by random binning (Rahimi & Recht 2007).
* ``l2``: ``p(|x - y|_2 / h)^hashes``, the collision probability of the p-stable hash of width h
  (Datar et al. 2004), by LSH counts (RACE, Coleman & Shrivastava 2020).
* ``angular``: ``(1 - angle(x, y) / pi)^hashes``, by sign random projections (SimHash); no
  bandwidth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

Kernel = Literal["gaussian", "laplacian", "l2", "angular"]
KERNELS: tuple[str, ...] = ("gaussian", "laplacian", "l2", "angular")
Frequencies = Literal["orthogonal", "iid"]
FREQUENCY_DESIGNS: tuple[str, ...] = ("orthogonal", "iid")
LSH_KERNELS: tuple[str, ...] = ("laplacian", "l2", "angular")
MAX_SEED = 2**63 - 1


class SketchMismatch(ValueError):
    """Two sketches that cannot be merged or compared (different kernel, seed, sizes, ...)."""


@dataclass(frozen=True)
class SketchSpec:
    """The public description of a sketch.

    ``features`` is the number of random Fourier features D (``gaussian``; even: D / 2
    frequencies, each a cos/sin pair); ``repetitions`` R,
    ``hashes`` K per repetition and ``buckets`` W per repetition describe an LSH sketch (the
    other kernels). ``projection_dim`` k, if set, maps inputs by a seeded Gaussian random
    projection R^d -> R^k before featurisation. ``frequencies`` is how a gaussian sketch draws
    its frequencies (``gramfed.workers.sketch.rff``): ``orthogonal`` (the default) or ``iid``;
    the LSH kernels have none and leave it unset.
    """

    kernel: Kernel
    input_dim: int
    seed: int
    bandwidth: float | None = None
    features: int = 0
    repetitions: int = 0
    hashes: int = 0
    buckets: int = 0
    projection_dim: int | None = None
    frequencies: Frequencies | None = None

    def __post_init__(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; choose from {', '.join(KERNELS)}")
        _positive("input_dim", self.input_dim)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not 0 <= self.seed <= MAX_SEED:
            raise ValueError(f"seed must lie in [0, 2^63 - 1], got {self.seed}")
        if self.kernel == "angular":
            if self.bandwidth is not None:
                raise ValueError("the angular kernel has no bandwidth; leave it unset")
        elif self.bandwidth is None or not (math.isfinite(self.bandwidth) and self.bandwidth > 0):
            raise ValueError(
                f"the {self.kernel} kernel needs a finite bandwidth > 0, got {self.bandwidth!r}"
            )
        if self.projection_dim is not None:
            _positive("projection_dim", self.projection_dim)
        if self.is_rff:
            if self.frequencies is None:
                object.__setattr__(self, "frequencies", "orthogonal")
            elif self.frequencies not in FREQUENCY_DESIGNS:
                raise ValueError(
                    f"unknown frequencies {self.frequencies!r}; choose from"
                    f" {', '.join(FREQUENCY_DESIGNS)}"
                )
            _positive("features", self.features)
            if self.features % 2:
                raise ValueError(
                    f"features must be even (cos/sin pairs of frequencies), got {self.features}"
                )
            if self.repetitions or self.hashes or self.buckets:
                raise ValueError(
                    "repetitions, hashes and buckets describe LSH sketches; a gaussian (RFF)"
                    " sketch takes only features"
                )
            return
        if self.features or self.frequencies is not None:
            raise ValueError(
                f"features and frequencies describe RFF sketches; a {self.kernel} sketch is LSH"
            )
        _positive("repetitions", self.repetitions)
        _positive("hashes", self.hashes)
        if self.kernel == "angular":
            if self.hashes > 24:
                raise ValueError(f"an angular sketch takes at most 24 hashes, got {self.hashes}")
            if self.buckets not in (0, 2**self.hashes):
                raise ValueError(
                    f"an angular sketch with {self.hashes} hashes has 2^{self.hashes} buckets,"
                    f" got {self.buckets}"
                )
            object.__setattr__(self, "buckets", 2**self.hashes)
        elif self.buckets < 2 or self.buckets & (self.buckets - 1) or self.buckets > 2**24:
            raise ValueError(f"buckets must be a power of two in [2, 2^24], got {self.buckets}")

    @property
    def is_rff(self) -> bool:
        return self.kernel == "gaussian"

    @property
    def featurised_dim(self) -> int:
        """The input dimension after the optional projection."""
        return self.projection_dim or self.input_dim

    @property
    def size(self) -> int:
        """Number of summed coordinates (the count excluded): D, or R * W."""
        return self.features if self.is_rff else self.repetitions * self.buckets

    def describe(self) -> str:
        parts = [self.kernel]
        if self.bandwidth is not None:
            parts.append(f"bandwidth={self.bandwidth:g}")
        if self.is_rff:
            parts.append(f"features={self.features} ({self.frequencies})")
        else:
            parts.append(f"R={self.repetitions} K={self.hashes} W={self.buckets}")
        if self.projection_dim:
            parts.append(f"projection {self.input_dim}->{self.projection_dim}")
        parts.append(f"seed={self.seed}")
        return ", ".join(parts)

    def require_compatible(self, other: SketchSpec, what: str = "merge") -> None:
        """Raise ``SketchMismatch`` naming every field in which ``other`` differs."""
        if other is self or other == self:
            return
        diffs = [
            f"{f.name} {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]
        if diffs:
            raise SketchMismatch(f"cannot {what} incompatible sketches: {'; '.join(diffs)}")


def _positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def public_stream(seed: int, tag: str) -> np.random.Generator:
    """A NumPy generator for one named family of public random parameters of a sketch.

    PCG64 from a ``SeedSequence`` is the same on every platform and device, so every shard and
    every party derives identical frequencies and hashes from the spec alone.
    """
    words = [seed & 0xFFFFFFFF, seed >> 32, *tag.encode()]
    return np.random.default_rng(np.random.SeedSequence(words))
