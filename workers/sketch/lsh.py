"""LSH count sketches (RACE) for the laplacian, l2 and angular kernels.

A repetition r draws one hash g_r = (h_1, ..., h_K) of K concatenated LSH functions and keeps an
array of W integer counts; a record x adds 1 to bucket g_r(x) of every repetition. For a query y,
``C[r, g_r(y)] / n`` has expectation ``(1/n) sum_i P[g_r(x_i) = g_r(y)]``, the KDE of the
collision-probability kernel p(x, y)^K (Coleman & Shrivastava, WWW 2020). Base hashes:

* laplacian: random binning per coordinate, pitch ~ Gamma(2, h), offset ~ U[0, pitch); two
  points share a bin with probability exp(-|x_p - y_p| / h), so a whole-vector hash collides
  with probability exp(-|x - y|_1 / h) (Rahimi & Recht, NeurIPS 2007);
* l2: floor((a'x + b) / h), a ~ N(0, I), b ~ U[0, h) (Datar et al., SoCG 2004);
* angular: sign(a'x), a ~ N(0, I) (Charikar, STOC 2002); K bits index 2^K buckets exactly.

Bin tuples of the first two are hashed to W = 2^m buckets by a seeded multiply-add /
multiply-shift hash; two different tuples then share a bucket with probability about 1/W, which
adds (1 - p^K) / W to the expected count ratio. Queries remove it: p^K = (c - 1/W) / (1 - 1/W).

Sensitivity (privacy unit one record, add/remove neighbours). The released vector is the R * W
counts and the record count n. One record adds exactly 1 to one bucket of each repetition and
1 to n: R + 1 coordinates change by 1. So the L1 sensitivity is R + 1 and the L2 sensitivity
sqrt(R + 1), for any input and with no clipping; the counts stay integers and take exact
discrete Gaussian (``unit_changes = R + 1``) or discrete Laplace noise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from gramfed.workers.kernels.base import Kernel
from gramfed.workers.sketch.products import row_stable_mm
from gramfed.workers.sketch.projection import project, projection_matrix
from gramfed.workers.sketch.spec import SketchSpec, public_stream


class LSHBuckets:
    """The R bucket indices of each input, as flat positions r * W + bucket in the count array.

    Projections run in float64 so that shards on different devices agree on almost every bin
    boundary (a disagreement moves one count; it is not a privacy matter).
    """

    def __init__(self, spec: SketchSpec, device: torch.device) -> None:
        if spec.is_rff:
            raise ValueError("the gaussian kernel is sketched by random Fourier features")
        self.spec = spec
        self.device = device
        rng = public_stream(spec.seed, f"lsh-{spec.kernel}")
        r, k, d = spec.repetitions, spec.hashes, spec.featurised_dim
        h = spec.bandwidth
        self.projection = projection_matrix(spec, device)
        if spec.kernel == "laplacian":
            assert h is not None
            pitch = rng.gamma(2.0, h, (r * k, d))
            self.pitch = _tensor(pitch, device)
            self.offset = _tensor(rng.uniform(0.0, 1.0, (r * k, d)) * pitch, device)
            width = k * d
        else:
            self.directions = _tensor(rng.standard_normal((d, r * k)), device)
            self.directions_t = self.directions.T.contiguous()
            if spec.kernel == "l2":
                assert h is not None
                self.shift = _tensor(rng.uniform(0.0, h, r * k), device)
            width = k
        # Odd 64-bit multipliers for the multiply-add / multiply-shift hash of bin tuples.
        words = rng.integers(0, 2**62, (r, width + 1), dtype=np.int64) * 2 + 1
        self.mix = torch.as_tensor(words[:, :width], device=device)
        self.shift_mix = torch.as_tensor(words[:, width], device=device)
        self.bits = int(math.log2(spec.buckets))
        self.base = torch.arange(r, device=device, dtype=torch.int64) * spec.buckets

    def mean_lookup(self, table: Tensor, y: Tensor, rows: int) -> Tensor:
        """``(1/R) sum_r table[g_r(y)]`` for every query (rows of ``table`` are buckets), in
        blocks of ``rows`` queries; float64 on the CPU."""
        out = [
            table[self(y[s : s + rows])].mean(1).to("cpu", torch.float64)
            for s in range(0, y.shape[0], rows)
        ]
        return torch.cat(out) if out else torch.zeros(0, *table.shape[1:], dtype=torch.float64)

    def __call__(self, x: Tensor) -> Tensor:
        """Flat bucket positions (n, R) of inputs (n, d)."""
        spec = self.spec
        z = project(x.to(self.device, torch.float64), _maybe64(self.projection))
        n, r, k = z.shape[0], spec.repetitions, spec.hashes
        if spec.kernel == "angular":
            # Projections as (R K, n): with few input columns BLAS is several times faster in
            # this layout than as (n, R K). The K sign bits of a repetition are packed by a
            # product with (1, 2, ..., 2^(K-1)) in float32 (exact: K <= 24), one BLAS call where
            # an int64 multiply-and-sum takes several passes over a K times larger array.
            # Unlike the l2 hash's (``products``), these float64 products are shaped by n: a
            # record's sign bit can change with the batch only at a dot product within rounding
            # (about 1e-16 of its terms) of zero.
            signs = (self.directions_t @ z.T > 0).to(torch.float32).reshape(r, k, n)
            weights = 2.0 ** torch.arange(k, device=self.device, dtype=torch.float32)
            return self.base + (weights @ signs).T.to(torch.int64)
        if spec.kernel == "l2":
            assert spec.bandwidth is not None
            bins = torch.floor((row_stable_mm(z, self.directions) + self.shift) / spec.bandwidth)
            bins = bins.to(torch.int64).reshape(n, r, k)
        else:
            bins = torch.floor((z[:, None, :] - self.offset) / self.pitch).to(torch.int64)
            bins = bins.reshape(n, r, -1)
        mixed = (bins * self.mix).sum(-1) * self.shift_mix  # wraps modulo 2^64
        bucket = (mixed >> (64 - self.bits)) & (spec.buckets - 1)
        return self.base + bucket

    @property
    def hashes_collide(self) -> bool:
        """Whether distinct bin tuples can share a bucket (all but angular)."""
        return self.spec.kernel != "angular"


class CollisionKernel(Kernel):
    """The kernel an LSH sketch estimates, p(x, y)^K, evaluated exactly on Gram tiles."""

    def __init__(self, spec: SketchSpec) -> None:
        if spec.is_rff:
            raise ValueError("the gaussian kernel is not an LSH collision kernel")
        self.spec = spec

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        spec = self.spec
        if spec.kernel == "angular":
            cos = _unit(x1) @ _unit(x2).T
            p = 1.0 - torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi
        elif spec.kernel == "laplacian":
            p = torch.exp(-torch.cdist(x1, x2, p=1) / spec.bandwidth)
        else:
            p = l2_collision(torch.cdist(x1, x2) / spec.bandwidth)
        return p**spec.hashes


def l2_collision(c: Tensor) -> Tensor:
    """Collision probability of the p-stable hash at distance c (in bandwidths).

    p(c) = 1 - 2 Phi(-1/c) - 2 c / sqrt(2 pi) (1 - exp(-1 / (2 c^2))), and p(0) = 1.
    """
    r = 1.0 / c.clamp_min(1e-300)
    normal_tail = 0.5 * torch.erfc(r / math.sqrt(2.0))
    spread = 2.0 / (math.sqrt(2.0 * math.pi) * r) * (1.0 - torch.exp(-r * r / 2))
    p = 1.0 - 2.0 * normal_tail - spread
    return torch.where(c > 0, p, torch.ones_like(p))


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)


def _tensor(array: np.ndarray, device: torch.device) -> Tensor:
    return torch.as_tensor(array, dtype=torch.float64, device=device)


def _maybe64(matrix: Tensor | None) -> Tensor | None:
    return None if matrix is None else matrix.to(torch.float64)
