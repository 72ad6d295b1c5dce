"""Matérn kernels of half-integer smoothness with ARD lengthscales.

With ``r = sqrt(sum_p (tau_p / l_p)^2)``:

- nu = 1/2: ``variance * exp(-r)``
- nu = 3/2: ``variance * (1 + sqrt(3) r) exp(-sqrt(3) r)``
- nu = 5/2: ``variance * (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)``
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gramfed.workers.kernels.stationary import ARDStationaryKernel, ParamLike

MATERN_NUS: tuple[float, ...] = (0.5, 1.5, 2.5)


class MaternKernel(ARDStationaryKernel):
    """Matérn-``nu`` kernel; ``lengthscales`` is one value (isotropic) or one per dimension."""

    exact_distances = True

    def __init__(self, nu: float, lengthscales: ParamLike, variance: float = 1.0) -> None:
        if nu not in MATERN_NUS:
            raise ValueError(f"nu must be one of {MATERN_NUS}, got {nu}")
        super().__init__(lengthscales, variance)
        self.nu = float(nu)

    def profile(self, r2: Tensor) -> Tensor:
        # sqrt has an infinite derivative at 0; the floor keeps gradients finite on the
        # diagonal while changing r there by 1e-15 only.
        r = r2.clamp_min(1e-30).sqrt()
        if self.nu == 0.5:
            return torch.exp(-r)
        if self.nu == 1.5:
            s = math.sqrt(3.0) * r
            return (1.0 + s) * torch.exp(-s)
        s = math.sqrt(5.0) * r
        return (1.0 + s + s.square() / 3.0) * torch.exp(-s)
