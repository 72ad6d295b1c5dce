"""Gram blocks: the (A, n, n) sub-kernel stack of one data shard, reduced on the spot.

The solver never needs the stack itself, only three reductions of it:

* ``weighted_sum(w)``  ->  sum_i w_i K_i                        (n, n)
* ``inner(W)``         ->  <W, K_i> = sum_ab W_ab (K_i)_ab       (A,)
* ``matvec(u)``        ->  K_i u for every i                     (A, n)

``GramOptions`` picks how they run, Falkon-style, from one memory budget:

* ``spectral`` (shared scales, P <= 4): every sub-kernel is ``E o (F_i F_i')`` with
  ``F_i`` its ``(n, 2^P)`` cos/sin product features and ``E`` the exp envelope they share,
  so each reduction is matrix products with the features and nothing of size A n^2 is ever
  formed (``workers.spectral``). A product costs 2^(P+1) A n^2 flops against the A n^2
  values a cached stack reads, so past P = 4 the cached or streamed stack is cheaper.
* ``cached``: the stack fits the budget, so it is built once, tile by tile, and each
  reduction is a matrix-vector product over it.
* ``streamed``: row tiles of the stack are recomputed for every reduction and reduced
  at once, so memory stays at one tile.

Out of memory on a device is not fatal: a tile that fails to allocate is retried at half
the rows, down to a floor (``tiled_rows``), and a cached stack that does not fit falls back
to streaming. Rows already reduced are kept, so the results equal the normal path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from gramfed.workers.device import resolve_device
from gramfed.workers.kernels.gsmp import PRODUCT_FORM_MAX_DIMS, GSMPKernel
from gramfed.workers.selection import Components, count, normalise
from gramfed.workers.spectral import SpectralStack
from gramfed.workers.tiling import is_out_of_memory, reserve, tiled_rows

Strategy = Literal["auto", "spectral", "cached", "streamed"]


@dataclass(frozen=True)
class GramOptions:
    """How Gram-block reductions are computed.

    ``memory_budget`` bounds the bytes of the cached stack; ``tile_bytes`` bounds one
    streamed tile. ``dtype`` is the stack's precision (float64 by default; float32 halves
    memory and bandwidth, accumulation stays float64 in the solver). ``min_tile_rows`` is
    the floor of the out-of-memory fallback.
    """

    device: str = "auto"
    strategy: Strategy = "auto"
    dtype: torch.dtype = torch.float64
    memory_budget: int = 4 << 30
    tile_bytes: int = 256 << 20
    min_tile_rows: int = 1

    def torch_device(self, work: int | None = None) -> torch.device:
        """The device for ``work`` Gram entries per pass (see ``resolve_device``)."""
        return resolve_device(self.device, work)


class SubKernelGram:
    """Lazy stack of GSMP sub-kernels over one set of inputs ``x`` (n, P)."""

    def __init__(self, kernel: GSMPKernel, x: Tensor, options: GramOptions | None = None) -> None:
        self.options = options or GramOptions()
        self.device = self.options.torch_device(work=x.shape[0] ** 2 * kernel.grid.num_components)
        self.kernel = kernel
        self.x = x.to(self.device, torch.float64)
        self.grid = kernel.grid.to(self.device)
        self.n = int(self.x.shape[0])
        self.num_components = self.grid.num_components
        self.strategy = self._choose_strategy()
        self._stack: Tensor | None = None
        self._spectral: SpectralStack | None = None
        self._max_tile_rows = self.n  # lowered for good when a tile runs out of memory
        if self.strategy == "spectral":
            self._spectral = SpectralStack(self.x, self.grid, self.options.tile_bytes)
        elif self.strategy == "cached":
            try:
                self._stack = self._build_stack()
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.strategy = "streamed"  # the stack does not fit: stream tiles instead

    @property
    def spectral(self) -> SpectralStack | None:
        """The product-form stack behind the reductions, when the strategy is spectral."""
        return self._spectral

    # -- strategy ---------------------------------------------------------------------------
    def _stack_bytes(self) -> int:
        return self.num_components * self.n * self.n * torch.finfo(self.options.dtype).bits // 8

    def _choose_strategy(self) -> Strategy:
        wanted = self.options.strategy
        spectral_ok = self.grid.shared_scales
        if wanted == "spectral" and not spectral_ok:
            raise ValueError("the spectral strategy needs sub-kernels with shared scales")
        if wanted != "auto":
            return wanted
        if (
            spectral_ok
            and self.grid.dims <= PRODUCT_FORM_MAX_DIMS
            and SpectralStack.nbytes(self.n, self.grid) <= self.options.memory_budget
        ):
            return "spectral"
        return "cached" if self._stack_bytes() <= self.options.memory_budget else "streamed"

    def _row_bytes(self, components: Components) -> int:
        """Peak bytes of one tile row: the (A_sel, n) slice and its (n, P + 2) temporaries."""
        return max(1, count(components) * self.n * 8 * (self.grid.dims + 2))

    def _each_tile(self, components: Components, body: Callable[[slice], None]) -> None:
        """Run ``body`` over row tiles within ``tile_bytes``, shrinking them on out-of-memory."""
        row_bytes = self._row_bytes(components)
        rows = max(1, min(self._max_tile_rows, self.options.tile_bytes // row_bytes))
        self._max_tile_rows = tiled_rows(
            self.n,
            rows,
            body,
            device=self.device,
            row_bytes=row_bytes,
            min_rows=self.options.min_tile_rows,
        )

    def _stored(self, components: Components) -> tuple[Tensor, Tensor | None]:
        """The cached sub-kernels to reduce for ``components``, and the selected ones'
        positions among them (None: all of them).

        A slice is a view. Index selections are read through the slice that covers them when
        they fill a third of it or more: copying the selected kernels out writes them and
        reads them twice, against one read of the covering ones (a solver's resting weights
        are most of its block). Sparser selections are copied.
        """
        assert self._stack is not None
        if isinstance(components, slice):
            return self._stack[components], None
        first, last = int(components[0]), int(components[-1])
        if 3 * components.numel() >= last + 1 - first:
            return self._stack[first : last + 1], components - first
        return self._stack[components], None

    def _tile(self, rows: slice, components: Components) -> Tensor:
        reserve(count(components) * (rows.stop - rows.start) * self.n * 8, self.device)
        return self.kernel.sub_kernels(self.x[rows], self.x, components)

    def _build_stack(self) -> Tensor:
        reserve(self._stack_bytes(), self.device)
        stack = torch.empty(
            self.num_components, self.n, self.n, dtype=self.options.dtype, device=self.device
        )
        everything = slice(0, self.num_components)

        def fill(rows: slice) -> None:
            stack[:, rows] = self._tile(rows, everything).to(self.options.dtype)

        self._each_tile(everything, fill)
        return stack

    def compress(self, block: slice) -> None:
        """Prepare for many reductions over components in ``block`` (a solver's block).

        In the spectral strategy this keeps a basis of the block's features where they span
        fewer dimensions than their columns (``SpectralStack.compress``); the other
        strategies have nothing to prepare.
        """
        if self._spectral is not None:
            self._spectral.compress(normalise(block, self.num_components, self.device))

    # -- reductions ---------------------------------------------------------------------------
    def weighted_sum(self, weights: Tensor, components: Components = slice(None)) -> Tensor:
        """sum_i w_i K_i over the selected components (w has one entry per selected one)."""
        components = normalise(components, self.num_components, self.device)
        w = weights.to(self.device, torch.float64)
        if not count(components):
            return torch.zeros(self.n, self.n, dtype=torch.float64, device=self.device)
        if self._spectral is not None:
            return self._spectral.weighted_sum(w, components)
        if self._stack is not None:
            stack, positions = self._stored(components)
            if positions is not None:
                w = torch.zeros(stack.shape[0], dtype=w.dtype, device=w.device).index_copy_(
                    0, positions, w
                )
            flat = w.to(stack.dtype) @ stack.reshape(stack.shape[0], -1)
            return flat.reshape(self.n, self.n).to(torch.float64)
        out = torch.empty(self.n, self.n, dtype=torch.float64, device=self.device)

        def reduce(rows: slice) -> None:
            out[rows] = torch.tensordot(w, self._tile(rows, components), dims=1)

        self._each_tile(components, reduce)
        return out

    def inner(self, matrix: Tensor, components: Components = slice(None)) -> Tensor:
        """<W, K_i> for every selected component."""
        components = normalise(components, self.num_components, self.device)
        w = matrix.to(self.device, torch.float64)
        if not count(components):
            return torch.zeros(0, dtype=torch.float64, device=self.device)
        if self._spectral is not None:
            return self._spectral.inner(w, components)
        if self._stack is not None:
            stack, positions = self._stored(components)
            out = stack.reshape(stack.shape[0], -1) @ w.reshape(-1).to(stack.dtype)
            return (out if positions is None else out[positions]).to(torch.float64)
        out = torch.zeros(count(components), dtype=torch.float64, device=self.device)

        def reduce(rows: slice) -> None:
            out.add_(torch.einsum("iab,ab->i", self._tile(rows, components), w[rows]))

        self._each_tile(components, reduce)
        return out

    def matvec(self, vector: Tensor, components: Components = slice(None)) -> Tensor:
        """K_i u for every selected component, shape (A_sel, n)."""
        components = normalise(components, self.num_components, self.device)
        u = vector.to(self.device, torch.float64)
        if not count(components):
            return torch.zeros(0, self.n, dtype=torch.float64, device=self.device)
        if self._spectral is not None:
            return self._spectral.matvec(u, components)
        if self._stack is not None:
            stack, positions = self._stored(components)
            out = stack @ u.to(stack.dtype)
            return (out if positions is None else out[positions]).to(torch.float64)
        out = torch.empty(count(components), self.n, dtype=torch.float64, device=self.device)

        def reduce(rows: slice) -> None:
            out[:, rows] = self._tile(rows, components) @ u

        self._each_tile(components, reduce)
        return out


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

    def _split(self, components: Components) -> tuple[Components, bool]:
        """The selected sub-kernels and whether the identity (component ``A``) is selected."""
        selected = normalise(components, self.num_components, self.device)
        kernels = self.gram.num_components
        if isinstance(selected, slice):
            return slice(min(selected.start, kernels), min(selected.stop, kernels)), (
                selected.start <= kernels < selected.stop
            )
        return selected[selected < kernels], bool(selected.numel()) and int(selected[-1]) == kernels

    @property
    def spectral(self) -> None:
        """No product form: the identity component has none (reductions go through ``gram``)."""
        return None

    def compress(self, block: slice) -> None:
        kernels, _ = self._split(block)
        if count(kernels):
            self.gram.compress(kernels)

    def weighted_sum(self, weights: Tensor, components: Components = slice(None)) -> Tensor:
        kernels, identity = self._split(components)
        w = weights.to(self.device, torch.float64)
        kernel_count = count(kernels)
        out = self.gram.weighted_sum(w[:kernel_count], kernels)
        if identity:
            out.diagonal().add_(w[kernel_count])
        return out

    def inner(self, matrix: Tensor, components: Components = slice(None)) -> Tensor:
        kernels, identity = self._split(components)
        parts = [self.gram.inner(matrix, kernels)]
        if identity:
            parts.append(torch.trace(matrix.to(self.device, torch.float64))[None])
        return torch.cat(parts)

    def matvec(self, vector: Tensor, components: Components = slice(None)) -> Tensor:
        kernels, identity = self._split(components)
        u = vector.to(self.device, torch.float64)
        parts = [self.gram.matvec(u, kernels)]
        if identity:
            parts.append(u[None, :])
        return torch.cat(parts)
