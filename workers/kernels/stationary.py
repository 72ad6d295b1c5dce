"""Shared pieces of the comparison kernels: parameter checks and ARD-scaled distances."""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar

import torch
from numpy.typing import ArrayLike
from torch import Tensor

from gramfed.workers.kernels.base import Kernel, differences

ParamLike = Tensor | ArrayLike


def as_parameter(name: str, value: ParamLike, *, ndim: int, positive: bool) -> Tensor:
    """``value`` as a float64 tensor of ``ndim`` dimensions, finite (and > 0 if ``positive``).

    A 0-d tensor or a float is accepted where ``ndim`` is 1 and becomes a length-1 vector.
    The result is detached: these kernels are evaluated at fixed parameters.
    """
    t = torch.as_tensor(value, dtype=torch.float64).detach()
    if ndim == 1 and t.ndim == 0:
        t = t.reshape(1)
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    if positive and not bool((t > 0).all()):
        raise ValueError(f"{name} must be > 0, got {t.tolist()}")
    return t


def as_positive_scalar(name: str, value: float) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value}")
    return v


def check_inputs(x1: Tensor, x2: Tensor, dims: int | None = None) -> None:
    """Both inputs (n, P) with the same P, equal to ``dims`` when the kernel fixes it."""
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(
            f"inputs must be (n1, P) and (n2, P), got {tuple(x1.shape)} and {tuple(x2.shape)}"
        )
    if dims is not None and x1.shape[1] != dims:
        raise ValueError(f"kernel has {dims} input dimension(s), inputs have {x1.shape[1]}")


class ARDStationaryKernel(Kernel):
    """``variance * profile(r2)`` with ``r2 = sum_p (tau_p / l_p)^2``.

    One lengthscale is shared by every dimension; P of them give automatic relevance
    determination and fix the input dimension to P.
    """

    # Profiles of r = sqrt(r2) turn a 1e-16 cancellation error in r2 into 1e-8 in r: they get
    # r2 from exact differences instead of the matrix-product form.
    exact_distances: ClassVar[bool] = False

    def __init__(self, lengthscales: ParamLike, variance: float = 1.0) -> None:
        self.lengthscales = as_parameter("lengthscales", lengthscales, ndim=1, positive=True)
        self.variance = as_positive_scalar("variance", variance)

    @property
    def dims(self) -> int | None:
        """Input dimension the lengthscales fix, or None for a single shared lengthscale."""
        n = self.lengthscales.numel()
        return None if n == 1 else n

    def scaled_sq_dist(self, x1: Tensor, x2: Tensor) -> Tensor:
        check_inputs(x1, x2, self.dims)
        ls = self.lengthscales.to(x1)
        if self.exact_distances:
            return differences(x1 / ls, x2 / ls).square().sum(-1)
        # |a|^2 + |b|^2 - 2 a.b as one matrix product of inputs augmented by their squared
        # norms and ones: the (n1, n2, P) tensor of differences would cost P times the tile, and
        # adding the norms afterwards two more passes over it. Centring on x1's mean first keeps
        # the cancellation in the subtraction small.
        shift = x1.mean(0)
        a, b = (x1 - shift) / ls, (x2 - shift) / ls
        a2, b2 = a.square().sum(-1, keepdim=True), b.square().sum(-1, keepdim=True)
        left = torch.cat([a, a2, torch.ones_like(a2)], 1)
        right = torch.cat([-2.0 * b, torch.ones_like(b2), b2], 1)
        return (left @ right.T).clamp_min_(0.0)

    @abstractmethod
    def profile(self, r2: Tensor) -> Tensor:
        """Correlation as a function of the scaled squared distance, 1 at r2 = 0."""

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.variance * self.profile(self.scaled_sq_dist(x1, x2))

    def diag(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), self.variance, dtype=x.dtype, device=x.device)
