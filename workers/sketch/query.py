"""Batched KDE queries on a sketch, with a stated error bound, and the exact KDE to check them.

Queries only read a released sketch: they are post-processing and cost no privacy.

Estimates of ``f(y) = (1/n) sum_i k(x_i, y)``:

* RFF: ``phi(y)' S~ / n~``.
* LSH: ``c(y) = (1/R) sum_r C~[r, g_r(y)] / n~``, then ``(c - 1/W) / (1 - 1/W)`` where distinct
  bin tuples can share a bucket (see ``lsh``).

Error bound (``error_bound``), pointwise in y, holding with probability ``confidence`` over the
sketch's random features and noise (union bound over three events):

* approximation, failure beta/2 (Hoeffding over the D features or R repetitions, which are
  independent): each RFF term ``2 cos(w'y + b) mean_i cos(w'x_i + b)`` lies in [-2, 2], so
  ``|phi(y)'S/n - f(y)| <= sqrt(8 log(4/beta) / D)``; each RACE term lies in [0, 1], so
  ``|c - E c| <= sqrt(log(4/beta) / (2 R))``;
* numerator noise eta = phi(y)'N (RFF) or (1/R) sum of R count noises (LSH), failure beta/4,
  from the noise profile's tails;
* count noise e, failure beta/4. With A the noise-free ratio (|A| <= 2 for RFF, <= 1 for LSH),
  ``|est - A| = |eta - e A| / n~ <= (t_eta + |A|max t_e) / (n~ - t_e)``.

The LSH bound is divided by (1 - 1/W) when the bias correction applies.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from gramfed.workers.device import resolve_device
from gramfed.workers.kernels.base import Kernel
from gramfed.workers.kernels.rbf import RBFARDKernel
from gramfed.workers.sketch.accumulate import as_inputs, chunk_rows, featuriser, rff_cosines
from gramfed.workers.sketch.lsh import CollisionKernel
from gramfed.workers.sketch.rff import RandomFourierFeatures
from gramfed.workers.sketch.sketch import Sketch
from gramfed.workers.sketch.spec import SketchSpec

DEFAULT_CONFIDENCE = 0.95


class SketchQuery:
    """A sketch loaded onto a device for repeated batched queries."""

    def __init__(self, sketch: Sketch, device: str | torch.device | None = "auto") -> None:
        self.sketch = sketch
        self.spec = sketch.spec
        self.device = resolve_device(device)
        self.feature = featuriser(self.spec, self.device)
        if isinstance(self.feature, RandomFourierFeatures):
            # phi(y)' S = cos(W y + b)' (scale S): the scale goes into the sums once.
            scaled = sketch.values * self.feature.scale
            self.values = torch.tensor(scaled, dtype=torch.float32, device=self.device)
        else:
            self.values = torch.tensor(sketch.values, dtype=torch.float64, device=self.device)
        if sketch.count <= 0:
            raise ValueError(
                f"the sketch's noisy count is {sketch.count:.3g}: too few records for density"
                " estimates at this noise level"
            )

    def _cosines(self, queries: np.ndarray | Tensor) -> Iterator[Tensor]:
        """``cos(W y + b)`` of successive chunks of the queries (RFF), in a reused buffer."""
        assert isinstance(self.feature, RandomFourierFeatures)
        y = as_inputs(queries, self.spec)
        for _, cosines in rff_cosines(self.feature, y, chunk_rows(self.spec)):
            yield cosines

    def raw_scores(self, queries: np.ndarray | Tensor) -> Tensor:
        """``phi(y)' S~`` (RFF) or ``(1/R) sum_r C~[r, g_r(y)]`` (LSH), float64 on the CPU."""
        if self.spec.is_rff:
            out = [(c @ self.values).to(torch.float64).cpu() for c in self._cosines(queries)]
        else:
            y = as_inputs(queries, self.spec)
            rows = chunk_rows(self.spec)
            out = [
                self.values[self.feature(y[s : s + rows].to(self.device))]
                .mean(1)
                .to(torch.float64)
                .cpu()
                for s in range(0, y.shape[0], rows)
            ]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    def density(self, queries: np.ndarray | Tensor) -> Tensor:
        """KDE estimates at ``queries`` (m, d), float64, not clipped (clipping would bias)."""
        return self._normalise(self.raw_scores(queries))

    def error_bound(
        self, queries: np.ndarray | Tensor, confidence: float = DEFAULT_CONFIDENCE
    ) -> Tensor:
        """Per-query bound on |estimate - exact KDE| (see the module docstring)."""
        beta = _failure(confidence)
        if not self.spec.is_rff:
            return self._bound(None, None, beta, len(queries))
        l2, linf = [], []
        for c in self._cosines(queries):
            l2.append(c.norm(dim=1).to("cpu", torch.float64))
            linf.append(c.abs().amax(dim=1).to("cpu", torch.float64))
        return self._bound(_cat(l2), _cat(linf), beta, len(queries))

    def density_with_bound(
        self, queries: np.ndarray | Tensor, confidence: float = DEFAULT_CONFIDENCE
    ) -> tuple[Tensor, Tensor]:
        """``density`` and ``error_bound`` together, from one pass over the queries' features
        (each costs about as much as the other, so this halves the work of asking both)."""
        beta = _failure(confidence)
        if not self.spec.is_rff:
            return self.density(queries), self._bound(None, None, beta, len(queries))
        raw, l2, linf = [], [], []
        for c in self._cosines(queries):
            raw.append((c @ self.values).to("cpu", torch.float64))
            l2.append(c.norm(dim=1).to("cpu", torch.float64))
            linf.append(c.abs().amax(dim=1).to("cpu", torch.float64))
        return self._normalise(_cat(raw)), self._bound(_cat(l2), _cat(linf), beta, len(queries))

    def _normalise(self, raw: Tensor) -> Tensor:
        estimate = raw / self.sketch.count
        if not self.spec.is_rff and self.spec.kernel != "angular":
            w = self.spec.buckets
            estimate = (estimate - 1.0 / w) / (1.0 - 1.0 / w)
        return estimate

    def _bound(self, l2: Tensor | None, linf: Tensor | None, beta: float, m: int) -> Tensor:
        """The bound from the queries' norms of ``cos(W y + b)`` (RFF; None for LSH)."""
        noise, spec, n = self.sketch.noise, self.spec, self.sketch.count
        t_count = float(noise.tail(1.0, 1.0, beta / 4))
        if t_count >= n:
            return torch.full((m,), math.inf, dtype=torch.float64)
        if l2 is not None and linf is not None:
            scale = self.feature.scale  # type: ignore[union-attr]
            approx = math.sqrt(8.0 * math.log(4.0 / beta) / spec.features)
            t_eta = noise.tail(l2 * scale, linf * scale, beta / 4)
            return approx + (t_eta + 2.0 * t_count) / (n - t_count)
        r = spec.repetitions
        approx = math.sqrt(math.log(4.0 / beta) / (2.0 * r))
        t_eta_lsh = float(noise.tail(1.0 / math.sqrt(r), 1.0 / r, beta / 4))
        bound = approx + (t_eta_lsh + t_count) / (n - t_count)
        if spec.kernel != "angular":
            bound /= 1.0 - 1.0 / spec.buckets
        return torch.full((m,), bound, dtype=torch.float64)


def _failure(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return 1.0 - confidence


def _cat(parts: list[Tensor]) -> Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


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
