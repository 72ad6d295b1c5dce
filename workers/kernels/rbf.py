"""Squared-exponential kernel with one lengthscale per input dimension (RBF-ARD).

``k(x, x') = variance * exp(-1/2 sum_p (tau_p / l_p)^2)``, ``tau = x - x'``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gramfed.workers.kernels.stationary import ARDStationaryKernel


class RBFARDKernel(ARDStationaryKernel):
    """RBF-ARD kernel; ``lengthscales`` is one value (isotropic) or one per dimension."""

    def profile(self, r2: Tensor) -> Tensor:
        return torch.exp(-0.5 * r2)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        # variance * exp(-r2 / 2) as exp(log variance - r2 / 2), in place on the fresh tile:
        # each pass over a tile costs about as much as the exp itself.
        r2 = self.scaled_sq_dist(x1, x2)
        return r2.mul_(-0.5).add_(math.log(self.variance)).exp_()
