"""Random Fourier features for the Gaussian kernel, and why their sums have sensitivity sqrt(3).

Bochner: for ``w ~ N(0, I / h^2)`` and ``b ~ U[0, 2 pi)``, ``E[2 cos(w'x + b) cos(w'y + b)] =
exp(-|x - y|^2 / (2 h^2))``. With D draws, ``phi(x) = sqrt(2 / D) cos(W x + b)`` satisfies
``E[phi(x)' phi(y)] = k(x, y)``, so ``phi(y)' S / n`` with ``S = sum_i phi(x_i)`` is an unbiased
estimate of the KDE ``(1/n) sum_i k(x_i, y)``. W and b come from the spec's public seed.

Sensitivity (privacy unit one record, add/remove neighbours). Adding or removing x changes the
released vector (S, n) by (phi(x), 1). Each coordinate of phi(x) has |phi_j(x)| <= sqrt(2 / D),
so |phi(x)|_2^2 = (2 / D) sum_j cos^2(.) <= 2 and |phi(x)|_1 <= D sqrt(2 / D) = sqrt(2 D).
Hence, with no clipping and for any input:

* L2 sensitivity of (S, n): sqrt(|phi(x)|_2^2 + 1) <= sqrt(3)   (Gaussian mechanism);
* L1 sensitivity of (S, n): |phi(x)|_1 + 1 <= sqrt(2 D) + 1     (Laplace mechanism, the
  construction of Wagner et al., ICML 2023, kept for comparison).

The L2 bound does not grow with D while the L1 bound grows like sqrt(D); that is why the
Gaussian release is far less noisy at equal epsilon for any delta > 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gramfed.workers.sketch.projection import project, projection_matrix
from gramfed.workers.sketch.spec import SketchSpec, public_stream

L2_SENSITIVITY = math.sqrt(3.0)


def l1_sensitivity(features: int) -> float:
    """L1 sensitivity of (S, n): sqrt(2 D) + 1 (see the module docstring)."""
    return math.sqrt(2.0 * features) + 1.0


class RandomFourierFeatures:
    """phi(x) = sqrt(2 / D) cos(W x + b) for a gaussian ``SketchSpec``, on one device.

    Features are float32 (|phi_j| <= sqrt(2 / D), well inside float32's range and precision);
    callers accumulate their sums in float64.
    """

    def __init__(self, spec: SketchSpec, device: torch.device) -> None:
        if not spec.is_rff:
            raise ValueError(f"random Fourier features need the gaussian kernel, not {spec.kernel}")
        assert spec.bandwidth is not None
        rng = public_stream(spec.seed, "rff")
        w = rng.standard_normal((spec.featurised_dim, spec.features)) / spec.bandwidth
        b = rng.uniform(0.0, 2.0 * math.pi, spec.features)
        self.spec = spec
        self.device = device
        self.projection = projection_matrix(spec, device)
        self.weights = torch.as_tensor(w, dtype=torch.float32, device=device)
        self.phases = torch.as_tensor(b, dtype=torch.float32, device=device)
        self.scale = math.sqrt(2.0 / spec.features)

    def __call__(self, x: Tensor) -> Tensor:
        """Features (n, D) of inputs (n, d)."""
        return self.cosines(x).mul_(self.scale)

    def cosines(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """``cos(W x + b)`` (n, D) of float32 inputs (n, d): the features without their scale.

        Sums and products with a fixed vector take the scale afterwards, once, instead of one
        pass over every feature; ``out`` (n, D) reuses a buffer, which spares a fresh
        allocation (and its page faults) per chunk.
        """
        z = torch.addmm(self.phases, project(x, self.projection), self.weights, out=out)
        return torch.cos_(z)
