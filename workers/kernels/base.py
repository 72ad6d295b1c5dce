"""Kernel interface: one ``forward`` producing a Gram tile for two sets of inputs."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Kernel(ABC):
    """A positive-definite kernel evaluated tile by tile.

    ``forward(x1, x2)`` returns the (n1, n2) Gram tile; callers decide the tiling so that
    no more than one tile need exist at a time.
    """

    @abstractmethod
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor: ...

    def __call__(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.forward(x1, x2)

    def diag(self, x: Tensor) -> Tensor:
        """Diagonal of the Gram matrix of ``x`` with itself (stationary kernels: constant)."""
        return torch.stack([self.forward(xi[None], xi[None])[0, 0] for xi in x])


def differences(x1: Tensor, x2: Tensor) -> Tensor:
    """Pairwise differences tau = x1 - x2 of shape (n1, n2, P)."""
    return x1[:, None, :] - x2[None, :, :]
