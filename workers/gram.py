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

Out of memory on a device is not fatal: a tile that fails to allocate is retried at half
the rows, down to a floor (``tiled_rows``), and a cached stack that does not fit falls back
to streaming. Rows already reduced are kept, so the results equal the normal path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from gramfed.workers.device import resolve_device
from gramfed.workers.kernels.base import differences
from gramfed.workers.kernels.gsmp import TWO_PI, GSMPKernel

Strategy = Literal["auto", "spectral", "cached", "streamed"]


# -- out-of-memory fallback -------------------------------------------------------------------
class TileMemoryError(MemoryError):
    """A Gram tile does not fit on its device even at the smallest tile allowed."""


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's ``OutOfMemoryError``, ``MemoryError``, or a failure of torch's CPU allocator.

    The CPU allocator raises a plain ``RuntimeError`` naming itself, so the message decides.
    A ``TileMemoryError`` is final: it already went through the fallback.
    """
    if isinstance(exc, TileMemoryError):
        return False
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


# Test seam: CPU machines have no device memory limit to run into, so tests impose one.
_simulated_limit: ContextVar[int | None] = ContextVar("gramfed_simulated_limit", default=None)


@contextmanager
def simulated_memory_limit(nbytes: int) -> Iterator[None]:
    """Within the block, tile and stack allocations above ``nbytes`` fail as on a full device.

    Only allocations announced through ``reserve`` are checked; every tile of this module
    and of ``workers.pooled`` announces itself there.
    """
    token = _simulated_limit.set(nbytes)
    try:
        yield
    finally:
        _simulated_limit.reset(token)


def reserve(nbytes: int, device: torch.device) -> None:
    """Announce an allocation of ``nbytes``; raises out-of-memory under a simulated limit."""
    limit = _simulated_limit.get()
    if limit is not None and nbytes > limit:
        raise torch.OutOfMemoryError(
            f"simulated limit: {nbytes} bytes requested on {device}, {limit} allowed"
        )


def tiled_rows(
    total: int,
    tile_rows: int,
    body: Callable[[slice], None],
    *,
    device: torch.device,
    row_bytes: int,
    min_rows: int = 1,
) -> int:
    """Call ``body`` on consecutive row slices of ``range(total)``; return the rows that held.

    A slice that runs out of memory is retried at half the rows, down to ``min_rows``, where
    a ``TileMemoryError`` names the device and the tile size. ``body`` must write its output
    only after the tile is computed, so a failed attempt leaves nothing half-done and the
    rows before it are kept.
    """
    start = 0
    while start < total:
        rows = slice(start, min(start + tile_rows, total))
        try:
            body(rows)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if tile_rows <= min_rows:
                size = rows.stop - rows.start
                raise TileMemoryError(
                    f"out of memory on {device} for a Gram tile of {size} rows "
                    f"({size * row_bytes / 2**20:.1f} MiB), already at the floor of {min_rows} "
                    "rows; free memory on the device, or use a smaller column tile or dtype"
                ) from exc
            tile_rows = max(min_rows, tile_rows // 2)
        else:
            start = rows.stop
            continue
        # Outside the handler, so the failed tile's frames are released before emptying.
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return tile_rows


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
        self._max_tile_rows = self.n  # lowered for good when a tile runs out of memory
        if self.strategy == "spectral":
            angles = TWO_PI * self.x[:, :1] * self.grid.means[:, 0][None, :]  # (n, A)
            self._cos, self._sin = torch.cos(angles), torch.sin(angles)
            tau = differences(self.x, self.x)[..., 0]
            self._envelope = torch.exp(
                -2.0 * math.pi**2 * tau.square() * self.grid.scales[0, 0] ** 2
            )
        elif self.strategy == "cached":
            try:
                self._stack = self._build_stack()
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.strategy = "streamed"  # the stack does not fit: stream tiles instead

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

    def _row_bytes(self, components: slice) -> int:
        """Peak bytes of one tile row: the (A_sel, n) slice and its (n, P + 2) temporaries."""
        count = len(range(*components.indices(self.num_components)))
        return max(1, count * self.n * 8 * (self.grid.dims + 2))

    def _each_tile(self, components: slice, body: Callable[[slice], None]) -> None:
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

    def _tile(self, rows: slice, components: slice) -> Tensor:
        count = len(range(*components.indices(self.num_components)))
        reserve(count * (rows.stop - rows.start) * self.n * 8, self.device)
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

        def reduce(rows: slice) -> None:
            out[rows] = torch.tensordot(w, self._tile(rows, components), dims=1)

        self._each_tile(components, reduce)
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

        def reduce(rows: slice) -> None:
            out.add_(torch.einsum("iab,ab->i", self._tile(rows, components), w[rows]))

        self._each_tile(components, reduce)
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

        def reduce(rows: slice) -> None:
            out[:, rows] = self._tile(rows, components) @ u

        self._each_tile(components, reduce)
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
