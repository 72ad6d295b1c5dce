"""Grid spectral mixture product (GSMP) kernel.

Sub-kernel ``i`` of ``A``, inputs of ``P`` dimensions, ``tau = x - x'``::

    k_i(x, x') = prod_p exp(-2 pi^2 tau_p^2 v_ip^2) cos(2 pi mu_ip tau_p)
    k(x, x')   = sum_i alpha_i k_i(x, x'),   alpha >= 0

The grid (mu, v) is fixed; only the non-negative weights alpha are learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from gramfed.workers.kernels.base import Kernel, differences

TWO_PI = 2.0 * math.pi
# Up to 2^P = 16 cos/sin features a sub-kernel, products of features beat forming sub-kernels.
PRODUCT_FORM_MAX_DIMS = 4


@dataclass(frozen=True)
class GSMPGrid:
    """Frequencies ``means`` (A, P) and spectral scales ``scales`` (A, P) of the sub-kernels."""

    means: Tensor
    scales: Tensor

    def __post_init__(self) -> None:
        if self.means.shape != self.scales.shape or self.means.ndim != 2:
            raise ValueError(
                f"grid means {tuple(self.means.shape)} and scales {tuple(self.scales.shape)} "
                "must both be (A, P)"
            )

    @property
    def num_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def dims(self) -> int:
        return int(self.means.shape[1])

    @property
    def shared_scales(self) -> bool:
        """True when every sub-kernel has the same scales, so the exp factor is shared."""
        return bool((self.scales == self.scales[:1]).all())

    @classmethod
    def default(
        cls,
        dims: int,
        per_dim: int | None = None,
        *,
        freq_bounds: tuple[float, float] = (0.0, 0.5),
        scale: float = 1e-3,
        sampling: Literal["uniform", "random"] = "uniform",
        seed: int = 0,
    ) -> GSMPGrid:
        """The SLIM-KL grid: ``A = P * Q`` components (Q = 500 for P = 1, else 100).

        ``uniform`` puts ``linspace(lb, ub, A)`` in every dimension; ``random`` draws each
        dimension's frequencies independently and uniformly in the bounds (seeded).
        """
        if dims < 1:
            raise ValueError(f"dims must be >= 1, got {dims}")
        q = per_dim if per_dim is not None else (500 if dims == 1 else 100)
        if q < 1:
            raise ValueError(f"components per dimension must be >= 1, got {q}")
        lb, ub = freq_bounds
        if not 0.0 <= lb <= ub:
            raise ValueError(f"frequency bounds must satisfy 0 <= lb <= ub, got {freq_bounds}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        a = dims * q
        if sampling == "uniform":
            means = torch.linspace(lb, ub, a, dtype=torch.float64)[:, None].repeat(1, dims)
        elif sampling == "random":
            gen = torch.Generator().manual_seed(seed)
            means = lb + (ub - lb) * torch.rand(a, dims, generator=gen, dtype=torch.float64)
        else:
            raise ValueError(f"sampling must be 'uniform' or 'random', got {sampling!r}")
        return cls(means=means, scales=torch.full((a, dims), scale, dtype=torch.float64))

    def to(self, device: torch.device, dtype: torch.dtype = torch.float64) -> GSMPGrid:
        return GSMPGrid(self.means.to(device, dtype), self.scales.to(device, dtype))


class GSMPKernel(Kernel):
    """The weighted GSMP kernel; ``sub_kernels`` gives the per-component stack of a tile."""

    def __init__(self, grid: GSMPGrid, weights: Tensor | None = None) -> None:
        self.grid = grid
        self.weights = (
            weights if weights is not None else torch.ones(grid.num_components, dtype=torch.float64)
        )

    def sub_kernels(
        self, x1: Tensor, x2: Tensor, components: slice | Tensor = slice(None)
    ) -> Tensor:
        """Stack (A_sel, n1, n2) of the selected sub-kernels on one tile.

        The exp factor is a matrix product of squared differences with squared scales, and
        is computed once for all components when they share their scales.
        """
        means = self.grid.means[components].to(x1)
        scales = self.grid.scales[components].to(x1)
        tau = differences(x1, x2)  # (n1, n2, P)
        if self.grid.shared_scales:
            log_env = (-2.0 * math.pi**2) * (tau.square() @ scales[0].square())[None]
        else:
            log_env = (-2.0 * math.pi**2) * torch.einsum(
                "abp,ip->iab", tau.square(), scales.square()
            )
        cos_part = torch.cos(TWO_PI * means[:, None, None, 0] * tau[None, :, :, 0])
        for p in range(1, tau.shape[-1]):
            cos_part = cos_part * torch.cos(TWO_PI * means[:, None, None, p] * tau[None, :, :, p])
        return cos_part * torch.exp(log_env)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        w = self.weights.to(x1)
        active = torch.nonzero(w).ravel()  # sparse weights: only active components are formed
        if self.grid.shared_scales and self.grid.dims <= PRODUCT_FORM_MAX_DIMS:
            # E o (F1 diag(w) F2'): the active sub-kernels' cos/sin features, one envelope
            active_grid = GSMPGrid(self.grid.means[active], self.grid.scales[active])
            f1 = product_features(x1, active_grid.to(x1.device, x1.dtype))
            f2 = product_features(x2, active_grid.to(x2.device, x2.dtype))
            scaled = (f1 * w[active][None, :, None]).reshape(x1.shape[0], -1)
            out = scaled @ f2.reshape(x2.shape[0], -1).T
            return out.mul_(shared_envelope(x1, x2, self.grid.scales[0].to(x1)))
        out = torch.zeros(x1.shape[0], x2.shape[0], dtype=x1.dtype, device=x1.device)
        for chunk in active.split(64):
            out += torch.tensordot(w[chunk], self.sub_kernels(x1, x2, chunk), dims=1)
        return out

    def diag(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), float(self.weights.sum()), dtype=x.dtype, device=x.device)


def product_features(x: Tensor, grid: GSMPGrid) -> Tensor:
    """``(n, A, 2^P)``: for sub-kernel i, every product over p of cos or sin(2 pi mu_ip x_p).

    Then ``prod_p cos(2 pi mu_ip (x_p - x'_p)) = f_i(x)' f_i(x')``, one cos/sin identity a
    dimension. Feature ``b`` takes sin in dimension p where bit p of b is set.
    """
    angles = TWO_PI * x[:, None, :] * grid.means[None, :, :]  # (n, A, P)
    cos, sin = torch.cos(angles), torch.sin(angles)
    features = torch.stack([cos[..., 0], sin[..., 0]], dim=-1)
    for p in range(1, grid.dims):
        pair = torch.stack([cos[..., p], sin[..., p]], dim=-1)
        features = (pair[..., :, None] * features[..., None, :]).reshape(*cos.shape[:2], -1)
    return features


def shared_envelope(x1: Tensor, x2: Tensor, scales: Tensor) -> Tensor:
    """``prod_p exp(-2 pi^2 tau_p^2 v_p^2)`` for scales ``v`` (P,) shared by all sub-kernels,
    over all pairs (n1, n2), one dimension at a time (never the (n1, n2, P) differences)."""
    exponent = torch.zeros(x1.shape[0], x2.shape[0], dtype=x1.dtype, device=x1.device)
    for p in range(x1.shape[1]):
        exponent.add_((x1[:, None, p] - x2[None, :, p]).square_(), alpha=float(scales[p]) ** 2)
    return exponent.mul_(-2.0 * math.pi**2).exp_()
