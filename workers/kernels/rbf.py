"""Squared-exponential kernel with one lengthscale per input dimension (RBF-ARD).

``k(x, x') = variance * exp(-1/2 sum_p (tau_p / l_p)^2)``, ``tau = x - x'``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gramfed.workers.kernels.stationary import ARDStationaryKernel


class RBFARDKernel(ARDStationaryKernel):
    """RBF-ARD kernel; ``lengthscales`` is one value (isotropic) or one per dimension."""

    def profile(self, r2: Tensor) -> Tensor:
        return torch.exp(-0.5 * r2)
