"""Random Fourier features for the Gaussian kernel in cos/sin pairs: sums of sensitivity ~sqrt(2).

Bochner: for ``w ~ N(0, I / h^2)``, ``E[cos(w'(x - y))] = exp(-|x - y|^2 / (2 h^2))``. With D / 2
draws ``w_1 .. w_{D/2}``, the features are the pairs ``sqrt(2 / D) (cos w_p'x, sin w_p'x)``, so
``phi(x)' phi(y) = (2 / D) sum_p cos(w_p'(x - y))`` and ``E[phi(x)' phi(y)] = k(x, y)``: then
``phi(y)' S / n`` with ``S = sum_i phi(x_i)`` is an unbiased estimate of the KDE
``(1/n) sum_i k(x_i, y)``. The frequencies come from the spec's public seed; the cosines of all
pairs come first, then their sines.

Sensitivity (privacy unit one record, add/remove neighbours). Adding or removing x changes the
released vector (S, n) by (phi(x), 1). A pair contributes ``(2 / D)(cos^2 + sin^2) = 2 / D`` to
``|phi(x)|_2^2``, so ``|phi(x)|_2 = 1`` for any input and with no clipping; and
``|cos t| + |sin t| <= sqrt(2)`` gives ``|phi(x)|_1 <= (D / 2) sqrt(2) sqrt(2 / D) = sqrt(D)``.
In float32 (u = 2^-24) the cosine and sine of the same argument are each within 4u of the exact
values (``tests/test_sketch.py`` checks the library's), so a pair's squares sum to at most
``1 + 8 sqrt(2) u + 32 u^2``; the scale, applied in float32 or float64, adds at most a factor
``(1 + u)^4``. Hence ``|phi(x)|_2^2 <= 1 + 16 u = 1 + 2^-20`` as computed, and:

* L2 sensitivity of (S, n): sqrt(|phi(x)|_2^2 + 1) <= sqrt(2 + 2^-20)   (Gaussian mechanism);
* L1 sensitivity of (S, n): |phi(x)|_1 + 1 <= sqrt(D) (1 + 8u) + 1     (Laplace mechanism, as
  in the construction of Wagner et al., ICML 2023, kept for comparison).

Single features ``sqrt(2 / D) cos(w'x + b)`` with random phases b only bound ``|phi|_2^2`` by 2,
which costs sqrt(3 / 2) in noise for the same guarantee; pairs are also the lower-variance
estimate of the Gaussian kernel (Sutherland and Schneider, UAI 2015). The L2 bound does not grow
with D while the L1 bound grows like sqrt(D); that is why the Gaussian release is far less noisy
at equal epsilon for any delta > 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gramfed.workers.sketch.projection import project, projection_matrix
from gramfed.workers.sketch.spec import SketchSpec, public_stream

FLOAT32_ROUNDOFF = 2.0**-24
L2_SENSITIVITY = math.sqrt(2.0 + 16.0 * FLOAT32_ROUNDOFF)  # |phi|^2 <= 1 + 16u, plus the count


def l1_sensitivity(features: int) -> float:
    """L1 sensitivity of (S, n): sqrt(D) (1 + 8u) + 1 (see the module docstring)."""
    return math.sqrt(features) * (1.0 + 8.0 * FLOAT32_ROUNDOFF) + 1.0


class RandomFourierFeatures:
    """phi(x) = sqrt(2 / D) [cos(W x), sin(W x)] for a gaussian ``SketchSpec``, on one device;
    W (d, D / 2) holds the frequencies as columns.

    Features are float32 (|phi_j| <= sqrt(2 / D), well inside float32's range and precision);
    callers accumulate their sums in float64.
    """

    def __init__(self, spec: SketchSpec, device: torch.device) -> None:
        if not spec.is_rff:
            raise ValueError(f"random Fourier features need the gaussian kernel, not {spec.kernel}")
        assert spec.bandwidth is not None
        rng = public_stream(spec.seed, "rff")
        w = rng.standard_normal((spec.featurised_dim, spec.features // 2)) / spec.bandwidth
        self.spec = spec
        self.device = device
        self.projection = projection_matrix(spec, device)
        self.weights = torch.as_tensor(w, dtype=torch.float32, device=device)
        self.scale = math.sqrt(2.0 / spec.features)

    def __call__(self, x: Tensor) -> Tensor:
        """Features (n, D) of inputs (n, d)."""
        return self.unscaled(x).mul_(self.scale)

    def unscaled(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """``[cos(W x), sin(W x)]`` (n, D) of float32 inputs (n, d): the features without
        their scale.

        Both halves are taken of the same float32 arguments, so a pair's squares sum to 1 up
        to the functions' own rounding, whatever the argument's size (the sensitivity rests on
        it; computing the sine as a shifted cosine would round the shifted argument anew).
        Sums and products with a fixed vector take the scale afterwards, once, instead of one
        pass over every feature; ``out`` (n, D) reuses a buffer, which spares a fresh
        allocation (and its page faults) per chunk.
        """
        inputs = project(x, self.projection)
        if out is None:
            out = torch.empty(
                inputs.shape[0], self.spec.features, dtype=inputs.dtype, device=inputs.device
            )
        arguments, sines = out[:, : self.weights.shape[1]], out[:, self.weights.shape[1] :]
        torch.mm(inputs, self.weights, out=arguments)
        torch.sin(arguments, out=sines)
        arguments.cos_()
        return out
