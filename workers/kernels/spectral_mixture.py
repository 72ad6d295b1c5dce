"""Spectral mixture kernel (Wilson & Adams 2013, eq. 12).

Component ``q`` of ``Q`` is a Gaussian in frequency with mean ``mu_q`` and per-dimension
standard deviation ``s_q`` (spectral variance ``v_qp = s_qp^2``); with ``tau = x - x'``::

    k(x, x') = sum_q w_q prod_p exp(-2 pi^2 tau_p^2 v_qp) cos(2 pi tau_p mu_qp)

This is the GSMP formula with free (means, scales) in place of the fixed grid, so the
evaluation is delegated to ``GSMPKernel``.

GPyTorch's ``SpectralMixtureKernel`` (1.15) sums the mixture before the product over
dimensions, ``prod_p sum_q w_q (...)``; the two agree for one-dimensional inputs only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gramfed.workers.kernels.base import Kernel
from gramfed.workers.kernels.gsmp import GSMPGrid, GSMPKernel
from gramfed.workers.kernels.stationary import ParamLike, as_parameter, check_inputs


class SpectralMixtureKernel(Kernel):
    """Weights (Q,), spectral means (Q, P) and spectral standard deviations ``scales`` (Q, P)."""

    def __init__(self, weights: ParamLike, means: ParamLike, scales: ParamLike) -> None:
        self.weights = as_parameter("weights", weights, ndim=1, positive=True)
        self.means = as_parameter("means", means, ndim=2, positive=False)
        self.scales = as_parameter("scales", scales, ndim=2, positive=True)
        q = self.weights.numel()
        if self.means.shape != self.scales.shape or self.means.shape[0] != q:
            raise ValueError(
                f"means {tuple(self.means.shape)} and scales {tuple(self.scales.shape)} must "
                f"both be (Q, P) with Q = {q}, the number of weights"
            )
        self._mixture = GSMPKernel(GSMPGrid(self.means, self.scales), self.weights)

    @property
    def num_mixtures(self) -> int:
        return int(self.weights.numel())

    @property
    def dims(self) -> int:
        return int(self.means.shape[1])

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        check_inputs(x1, x2, self.dims)
        return self._mixture.forward(x1, x2)

    def diag(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), float(self.weights.sum()), dtype=x.dtype, device=x.device)
