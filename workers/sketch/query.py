"""Batched KDE queries on a sketch, with a stated error bound, and the exact KDE to check them.

Queries only read a released sketch: they are post-processing and cost no privacy.

Estimates of ``f(y) = (1/n) sum_i k(x_i, y)``:

* RFF: ``phi(y)' S~ / n~``.
* LSH: ``c(y) = (1/R) sum_r C~[r, g_r(y)] / n~``, then ``(c - 1/W) / (1 - 1/W)`` where distinct
  bin tuples can share a bucket (see ``lsh``).

Error bound (``error_bound``), pointwise in y, holding with probability ``confidence`` over the
sketch's random features and noise (union bound over three events):

* approximation, failure beta/2. The RFF estimate without noise is the mean over the M = D / 2
  frequencies of ``g_p = mean_i cos(w_p'(y - x_i))``, each in [-1, 1], with mean f(y)
  (``rff``). McDiarmid's inequality over independent variables that change it by at most c_k
  each gives ``|phi(y)'S/n - f(y)| <= sqrt(sum_k c_k^2 log(4/beta) / 2)``. With ``iid``
  frequencies those variables are the frequencies, c = 2 / M each (Hoeffding):
  ``sqrt(4 log(4/beta) / D)``. With ``orthogonal`` ones they are the rotations, one moving its
  block's n_b <= d'' = min(d', M) terms (c = 2 n_b / M, and sum n_b^2 <= d'' M), and the
  strata's uniforms U_p (c = 2 / M), so ``sum c^2 <= 4 (d'' + 1) / M`` and the term is
  ``sqrt(4 (d'' + 1) log(4/beta) / D)``. Each RACE term lies in [0, 1] and the R repetitions
  are independent, so ``|c - E c| <= sqrt(log(4/beta) / (2 R))``;
* numerator noise eta = phi(y)'N (RFF) or (1/R) sum of R count noises (LSH), failure beta/4,
  from the noise profile's tails;
* count noise e, failure beta/4. With A the noise-free ratio (|A| <= 1 for LSH; for RFF
  ``|phi(y)'S| <= |phi(y)| |S| <= (1 + 2^-21)(1 + 2^-12) n < (1 + 2^-11) n``: float32 query
  features, sums of fixed-point features of norm at most sqrt(1 + 2^-11), ``rff``),
  ``|est - A| = |eta - e A| / n~ <= (t_eta + |A| t_e) / (n~ - t_e)``.

The LSH bound is divided by (1 - 1/W) when the bias correction applies.

RFF queries run in float32 (twice the speed of float64; the cosines are most of the cost), so the
RFF bound adds a deterministic term for the query's rounding, which makes it a bound on the
exact-arithmetic estimate's error as well (u = 2^-24, ``gamma_k = k u / (1 - k u)``, any
summation order; Higham, *Accuracy and Stability of Numerical Algorithms*, 3.1):

* arguments ``z_j = w_j'P'y`` (P the optional projection, else I) computed from the float64
  query rounded to float32: ``|dz_j| <= gamma_K omega |y|_2 |P|_F``, with omega the
  largest column norm of W and K = projected dim + input dim + 5 (the query's rounding, the
  projection's and the frequencies' inner products, and the float32 parameters against their
  float64 draws);
* cosines and sines: float32 ``cos`` and ``sin`` are within 2 ulp (<= 4u here) of the exact
  values at their argument, and both are 1-Lipschitz, so ``|dc_j| <= dz + 4u``
  (``tests/test_sketch.py`` checks the library's);
* the dot product with the float32 sums v: ``|d raw| <= |v|_1 (gamma_D + dc + 2u)``, which the
  bound adds after dividing by n~; the cosines' norm used for the noise tail is inflated by
  ``gamma_D`` and ``sqrt(D) dc``.

Since |v|_1 / n~ is at most sqrt(2) plus the noise's share (|phi(x)|_1 <= sqrt(D) and the
scale is sqrt(2 / D)), the term is at most about sqrt(2) (gamma_D + dc), 4e-4 for D = 4,096 near
the data, against an approximation term of 0.065; it grows with |y|, as float32 arguments lose
absolute precision far from the origin.
The build sums its features on a fixed-point grid (``rff``), which moves an estimate by at most
``GRID_ERROR`` (1.7e-4); the RFF bound adds it too. The build's float32 arguments' rounding is
not in the bound: it depends on the private records' norms, which the sketch does not state.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from gramfed.workers.device import resolve_device
from gramfed.workers.kernels.base import Kernel
from gramfed.workers.kernels.rbf import RBFARDKernel
from gramfed.workers.sketch.accumulate import (
    QUERY_CHUNK_BYTES,
    as_inputs,
    chunk_rows,
    featuriser,
    rff_cosines,
)
from gramfed.workers.sketch.lsh import CollisionKernel
from gramfed.workers.sketch.rff import (
    FLOAT32_ROUNDOFF,
    GRID_ERROR,
    RandomFourierFeatures,
    pair_product,
)
from gramfed.workers.sketch.sketch import Sketch
from gramfed.workers.sketch.spec import SketchSpec

DEFAULT_CONFIDENCE = 0.95
UNIT_ROUNDOFF = FLOAT32_ROUNDOFF
COS_ULPS = 4.0  # float32 cos error, in units of UNIT_ROUNDOFF (2 ulp of a value below 1)
RATIO_BOUND = 1.0 + 2.0**-11  # |phi(y)' S| / n for sums of fixed-point features


class SketchQuery:
    """A sketch loaded onto a device for repeated batched queries."""

    def __init__(self, sketch: Sketch, device: str | torch.device | None = "auto") -> None:
        self.sketch = sketch
        self.spec = sketch.spec
        self.device = resolve_device(device)
        self.feature = featuriser(self.spec, self.device)
        if sketch.count <= 0:
            raise ValueError(
                f"the sketch's noisy count is {sketch.count:.3g}: too few records for density"
                " estimates at this noise level"
            )
        if isinstance(self.feature, RandomFourierFeatures):
            # phi(y)' S = [cos, sin](W y)' (scale S): the scale goes into the sums once.
            scaled = sketch.values * self.feature.scale
            self.values = torch.tensor(scaled, dtype=torch.float32, device=self.device)
            self._values_l1 = float(self.values.abs().sum(dtype=torch.float64))
        else:
            self.values = torch.tensor(sketch.values, dtype=torch.float64, device=self.device)

    def density(self, queries: np.ndarray | Tensor) -> Tensor:
        """KDE estimates at ``queries`` (m, d), float64, not clipped (clipping would bias)."""
        y = as_inputs(queries, self.spec)
        if not self.spec.is_rff:
            return self._normalise(self._lsh_scores(y))
        raw, _, _ = self._rff_scan(y, norms=False)
        return self._normalise(raw)

    def error_bound(
        self, queries: np.ndarray | Tensor, confidence: float = DEFAULT_CONFIDENCE
    ) -> Tensor:
        """Per-query bound on |estimate - exact KDE| (see the module docstring)."""
        if not self.spec.is_rff:
            return self._lsh_bound(_failure(confidence), len(queries))
        return self.density_with_bound(queries, confidence)[1]

    def density_with_bound(
        self, queries: np.ndarray | Tensor, confidence: float = DEFAULT_CONFIDENCE
    ) -> tuple[Tensor, Tensor]:
        """``density`` and ``error_bound`` together, from one pass over the queries' features:
        the bound needs the norms of the same cosines whose product with the sums is the
        estimate, and computing them is a few percent of the pass."""
        beta = _failure(confidence)
        if not self.spec.is_rff:
            return self.density(queries), self._lsh_bound(beta, len(queries))
        y = as_inputs(queries, self.spec)
        raw, l2, linf = self._rff_scan(y, norms=True)
        return self._normalise(raw), self._rff_bound(raw, l2, linf, y.norm(dim=1), beta)

    def _rff_scan(self, y: Tensor, *, norms: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``[cos, sin](W y)' (scale S~)`` of every query, float64 on the CPU, and with ``norms``
        the cosines' L2 norms and, when the noise has a sub-exponential part (Laplace; it
        multiplies them), their largest absolute values. Blocks of queries small enough for
        their cosines to stay in cache between the products that write and read them."""
        assert isinstance(self.feature, RandomFourierFeatures)
        m = y.shape[0]
        raw = torch.empty(m, dtype=torch.float32, device=self.device)
        l2 = torch.empty(m, dtype=torch.float32, device=self.device) if norms else None
        need_linf = norms and self.sketch.noise.subexponential > 0
        linf = torch.empty(m, dtype=torch.float32, device=self.device) if need_linf else None
        start = 0
        for _, halves in rff_cosines(self.feature, y, chunk_rows(self.spec, QUERY_CHUNK_BYTES)):
            stop = start + halves.shape[1]
            pair_product(halves, self.values, out=raw[start:stop])
            # Each half's rows reduced, then the halves combined: one reduction over both
            # halves at once (dim=(0, 2)) took 0.42 s against 0.08 s for 100,000 queries.
            if l2 is not None:
                torch.hypot(*torch.linalg.vector_norm(halves, dim=2), out=l2[start:stop])
            if linf is not None:
                torch.maximum(*torch.amax(halves.abs_(), dim=2), out=linf[start:stop])
            start = stop
        return raw.to("cpu", torch.float64), _host(l2), _host(linf)

    def _lsh_scores(self, y: Tensor) -> Tensor:
        """``(1/R) sum_r C~[r, g_r(y)]`` of every validated query, float64 on the CPU."""
        return self.feature.mean_lookup(self.values, y, chunk_rows(self.spec))

    def _normalise(self, raw: Tensor) -> Tensor:
        estimate = raw / self.sketch.count
        if not self.spec.is_rff and self.spec.kernel != "angular":
            w = self.spec.buckets
            estimate = (estimate - 1.0 / w) / (1.0 - 1.0 / w)
        return estimate

    def _count_tail(self, beta: float) -> float:
        return float(self.sketch.noise.tail(1.0, 1.0, beta / 4))

    def _rff_bound(
        self, raw: Tensor, l2: Tensor | None, linf: Tensor | None, y_norm: Tensor, beta: float
    ) -> Tensor:
        """The RFF bound from the cosines' norms and the queries' norms (module docstring)."""
        assert isinstance(self.feature, RandomFourierFeatures) and l2 is not None
        spec, n, scale = self.spec, self.sketch.count, self.feature.scale
        t_count = self._count_tail(beta)
        if t_count >= n:
            return torch.full_like(raw, math.inf)
        dc = self._cosine_error(y_norm)
        gamma_d = _gamma(spec.features)
        l2 = l2 * (1.0 + gamma_d) + math.sqrt(spec.features) * dc
        linf = 0.0 if linf is None else linf + dc
        approx = rff_approximation(spec, beta)
        t_eta = self.sketch.noise.tail(l2 * scale, linf * scale, beta / 4)
        rounding = self._values_l1 * (gamma_d + dc + 2.0 * UNIT_ROUNDOFF) / n
        noise = (t_eta + RATIO_BOUND * t_count) / (n - t_count)
        return approx + GRID_ERROR + noise + rounding

    def _cosine_error(self, y_norm: Tensor) -> Tensor:
        """Bound on the float32 cosines' and sines' error per query, from the norms |y|_2."""
        feature = self.feature
        assert isinstance(feature, RandomFourierFeatures)
        omega = float(torch.linalg.vector_norm(feature.weights.double(), dim=0).max())
        reach = omega * y_norm
        if feature.projection is not None:
            reach = reach * float(torch.linalg.matrix_norm(feature.projection.double()))
        terms = self.spec.featurised_dim + self.spec.input_dim + 5
        return _gamma(terms) * reach + COS_ULPS * UNIT_ROUNDOFF

    def _lsh_bound(self, beta: float, m: int) -> Tensor:
        noise, spec, n = self.sketch.noise, self.spec, self.sketch.count
        t_count = self._count_tail(beta)
        if t_count >= n:
            return torch.full((m,), math.inf, dtype=torch.float64)
        r = spec.repetitions
        approx = math.sqrt(math.log(4.0 / beta) / (2.0 * r))
        t_eta = float(noise.tail(1.0 / math.sqrt(r), 1.0 / r, beta / 4))
        bound = approx + (t_eta + t_count) / (n - t_count)
        if spec.kernel != "angular":
            bound /= 1.0 - 1.0 / spec.buckets
        return torch.full((m,), bound, dtype=torch.float64)


def rff_approximation(spec: SketchSpec, beta: float) -> float:
    """The RFF bound's approximation term at failure probability beta / 2 (module docstring)."""
    # sum_k c_k^2 = 4 spread / M: spread 1 for iid frequencies, d'' + 1 for orthogonal blocks.
    spread = 1 if spec.frequencies == "iid" else min(spec.featurised_dim, spec.features // 2) + 1
    return math.sqrt(4.0 * spread * math.log(4.0 / beta) / spec.features)


def _gamma(k: int) -> float:
    """Higham's gamma_k for float32: relative error bound of k chained roundings."""
    return k * UNIT_ROUNDOFF / (1.0 - k * UNIT_ROUNDOFF)


def _failure(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return 1.0 - confidence


def _host(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.to("cpu", torch.float64)


def estimate_density(
    sketch: Sketch, queries: np.ndarray | Tensor, device: str | torch.device | None = "auto"
) -> Tensor:
    """KDE estimates of ``sketch`` at ``queries``; see ``SketchQuery`` for repeated use."""
    return SketchQuery(sketch, device).density(queries)


def exact_kernel(spec: SketchSpec) -> Kernel:
    """The kernel a sketch of ``spec`` estimates, on the original (unprojected) inputs."""
    if spec.is_rff:
        assert spec.bandwidth is not None
        return RBFARDKernel(spec.bandwidth)
    return CollisionKernel(spec)


def exact_kde(
    kernel: Kernel,
    x: np.ndarray | Tensor,
    queries: np.ndarray | Tensor,
    *,
    device: str | torch.device | None = "auto",
    tile_elements: int = 1 << 24,
) -> Tensor:
    """(1/n) sum_i k(x_i, y) for every query, from Gram tiles (rows of x) reduced on the spot."""
    dev = resolve_device(device)
    xs = torch.as_tensor(x, dtype=torch.float64)
    ys = torch.as_tensor(queries, dtype=torch.float64, device=dev)
    width = ys.shape[0] * max(1, ys.shape[1])
    rows = max(1, tile_elements // width)
    total = torch.zeros(ys.shape[0], dtype=torch.float64, device=dev)
    for start in range(0, xs.shape[0], rows):
        total += kernel(xs[start : start + rows].to(dev), ys).sum(0)
    return (total / xs.shape[0]).cpu()
