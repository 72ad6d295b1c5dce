"""Gram blocks: the (A, n, n) sub-kernel stack of one data shard, reduced on the spot.

The solver never needs the stack itself, only three reductions of it:

* ``weighted_sum(w)``  ->  sum_i w_i K_i                        (n, n)
* ``inner(W)``         ->  <W, K_i> = sum_ab W_ab (K_i)_ab       (A,)
* ``matvec(u)``        ->  K_i u for every i                     (A, n)

``GramOptions`` picks how they run, Falkon-style, from one memory budget:

* ``spectral`` (P = 1, shared scales): cos(a - b) = cos a cos b + sin a sin b makes every
  reduction two matrix products with the (n, A) cos/sin feature matrices and the shared
  exp envelope; nothing of size A n^2 is ever formed.
* ``cached``: the stack fits the budget, so it is built once, tile by tile, and each
  reduction is a matrix-vector product over it.
* ``streamed``: row tiles of the stack are recomputed for every reduction and reduced
  at once, so memory stays at one tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from gramfed.workers.device import resolve_device
from gramfed.workers.kernels.base import differences
from gramfed.workers.kernels.gsmp import TWO_PI, GSMPKernel

Strategy = Literal["auto", "spectral", "cached", "streamed"]


@dataclass(frozen=True)
class GramOptions:
    """How Gram-block reductions are computed.

    ``memory_budget`` bounds the bytes of the cached stack; ``tile_bytes`` bounds one
    streamed tile. ``dtype`` is the stack's precision (float64 by default; float32 halves
    memory and bandwidth, accumulation stays float64 in the solver).
    """

    device: str = "auto"
    strategy: Strategy = "auto"
    dtype: torch.dtype = torch.float64
    memory_budget: int = 4 << 30
    tile_bytes: int = 256 << 20

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


class SubKernelGram:
    """Lazy stack of GSMP sub-kernels over one set of inputs ``x`` (n, P)."""

    def __init__(self, kernel: GSMPKernel, x: Tensor, options: GramOptions | None = None) -> None:
        self.options = options or GramOptions()
        self.device = self.options.torch_device()
        self.kernel = kernel
        self.x = x.to(self.device, torch.float64)
        self.grid = kernel.grid.to(self.device)
        self.n = int(self.x.shape[0])
        self.num_components = self.grid.num_components
        self.strategy = self._choose_strategy()
        self._stack: Tensor | None = None
        if self.strategy == "spectral":
            angles = TWO_PI * self.x[:, :1] * self.grid.means[:, 0][None, :]  # (n, A)
            self._cos, self._sin = torch.cos(angles), torch.sin(angles)
            tau = differences(self.x, self.x)[..., 0]
            self._envelope = torch.exp(
                -2.0 * math.pi**2 * tau.square() * self.grid.scales[0, 0] ** 2
            )
        elif self.strategy == "cached":
            self._stack = self._build_stack()

    # -- strategy ---------------------------------------------------------------------------
    def _stack_bytes(self) -> int:
        return self.num_components * self.n * self.n * torch.finfo(self.options.dtype).bits // 8

    def _choose_strategy(self) -> Strategy:
        wanted = self.options.strategy
        spectral_ok = self.grid.dims == 1 and self.grid.shared_scales
        if wanted == "spectral" and not spectral_ok:
            raise ValueError("the spectral strategy needs 1-D inputs and shared scales")
        if wanted != "auto":
            return wanted
        if spectral_ok:
            return "spectral"
        return "cached" if self._stack_bytes() <= self.options.memory_budget else "streamed"

    def _row_tiles(self, components: slice) -> list[slice]:
        count = len(range(*components.indices(self.num_components)))
        per_row = max(1, count * self.n * 8 * (self.grid.dims + 2))
        rows = max(1, min(self.n, self.options.tile_bytes // per_row))
        return [slice(r, min(r + rows, self.n)) for r in range(0, self.n, rows)]

    def _tile(self, rows: slice, components: slice) -> Tensor:
        return self.kernel.sub_kernels(self.x[rows], self.x, components)

    def _build_stack(self) -> Tensor:
        stack = torch.empty(
            self.num_components, self.n, self.n, dtype=self.options.dtype, device=self.device
        )
        everything = slice(0, self.num_components)
        for rows in self._row_tiles(everything):
            stack[:, rows] = self._tile(rows, everything).to(self.options.dtype)
        return stack

    # -- reductions ---------------------------------------------------------------------------
    def weighted_sum(self, weights: Tensor, components: slice = slice(None)) -> Tensor:
        """sum_i w_i K_i over the selected components (w has one entry per selected one)."""
        components = _normalise(components, self.num_components)
        w = weights.to(self.device, torch.float64)
        if self.strategy == "spectral":
            c, s = self._cos[:, components], self._sin[:, components]
            return self._envelope * ((c * w) @ c.T + (s * w) @ s.T)
        if self._stack is not None:
            stack = self._stack[components]
            flat = w.to(stack.dtype) @ stack.reshape(stack.shape[0], -1)
            return flat.reshape(self.n, self.n).to(torch.float64)
        out = torch.empty(self.n, self.n, dtype=torch.float64, device=self.device)
        for rows in self._row_tiles(components):
            out[rows] = torch.tensordot(w, self._tile(rows, components), dims=1)
        return out

    def inner(self, matrix: Tensor, components: slice = slice(None)) -> Tensor:
        """<W, K_i> for every selected component."""
        components = _normalise(components, self.num_components)
        w = matrix.to(self.device, torch.float64)
        if self.strategy == "spectral":
            m = w * self._envelope
            c, s = self._cos[:, components], self._sin[:, components]
            return (c * (m @ c)).sum(0) + (s * (m @ s)).sum(0)
        if self._stack is not None:
            stack = self._stack[components]
            return (stack.reshape(stack.shape[0], -1) @ w.reshape(-1).to(stack.dtype)).to(
                torch.float64
            )
        out = torch.zeros(
            len(range(*components.indices(self.num_components))),
            dtype=torch.float64,
            device=self.device,
        )
        for rows in self._row_tiles(components):
            out += torch.einsum("iab,ab->i", self._tile(rows, components), w[rows])
        return out

    def matvec(self, vector: Tensor, components: slice = slice(None)) -> Tensor:
        """K_i u for every selected component, shape (A_sel, n)."""
        components = _normalise(components, self.num_components)
        u = vector.to(self.device, torch.float64)
        if self.strategy == "spectral":
            c, s = self._cos[:, components], self._sin[:, components]
            return (
                c * (self._envelope @ (c * u[:, None])) + s * (self._envelope @ (s * u[:, None]))
            ).T
        if self._stack is not None:
            return (self._stack[components] @ u.to(self._stack.dtype)).to(torch.float64)
        count = len(range(*components.indices(self.num_components)))
        out = torch.empty(count, self.n, dtype=torch.float64, device=self.device)
        for rows in self._row_tiles(components):
            out[:, rows] = self._tile(rows, components) @ u
        return out


def _normalise(components: slice, total: int) -> slice:
    start, stop, step = components.indices(total)
    if step != 1:
        raise ValueError("component selections must be contiguous slices")
    return slice(start, stop)


class NoiseAugmentedGram:
    """A sub-kernel stack with one more component, the identity, for a learned noise variance.

    Component ``A`` (the last) is ``I``, so its weight is the noise variance above the fixed
    floor the local problem adds. The identity is PSD like every sub-kernel, so the convex
    structure the solver relies on is unchanged; its reductions are exact and free
    (``w I``, ``tr W``, ``u``).
    """

    def __init__(self, gram: SubKernelGram) -> None:
        self.gram = gram
        self.device = gram.device
        self.n = gram.n
        self.num_components = gram.num_components + 1

    def _split(self, components: slice) -> tuple[slice, bool]:
        selected = _normalise(components, self.num_components)
        kernels = self.gram.num_components
        return slice(min(selected.start, kernels), min(selected.stop, kernels)), (
            selected.start <= kernels < selected.stop
        )

    def weighted_sum(self, weights: Tensor, components: slice = slice(None)) -> Tensor:
        kernels, identity = self._split(components)
        w = weights.to(self.device, torch.float64)
        count = kernels.stop - kernels.start
        if count:
            out = self.gram.weighted_sum(w[:count], kernels)
        else:
            out = torch.zeros(self.n, self.n, dtype=torch.float64, device=self.device)
        if identity:
            out = out + w[count] * torch.eye(self.n, dtype=torch.float64, device=self.device)
        return out

    def inner(self, matrix: Tensor, components: slice = slice(None)) -> Tensor:
        kernels, identity = self._split(components)
        parts = [self.gram.inner(matrix, kernels)] if kernels.stop > kernels.start else []
        if identity:
            parts.append(torch.trace(matrix.to(self.device, torch.float64))[None])
        return torch.cat(parts)

    def matvec(self, vector: Tensor, components: slice = slice(None)) -> Tensor:
        kernels, identity = self._split(components)
        u = vector.to(self.device, torch.float64)
        parts = [self.gram.matvec(u, kernels)] if kernels.stop > kernels.start else []
        if identity:
            parts.append(u[None, :])
        return torch.cat(parts)
