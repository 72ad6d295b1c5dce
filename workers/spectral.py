"""Sub-kernel stacks in product form: every GSMP sub-kernel as ``E o (F_i F_i')``.

For sub-kernel i, ``prod_p cos(2 pi mu_ip (x_p - x'_p)) = f_i(x)' f_i(x')``, where ``f_i``
holds the 2^P products over p of cos or sin(2 pi mu_ip x_p) (one cos/sin identity a
dimension); when the sub-kernels share their scales, the exp factor ``E`` is one matrix
for all of them. So ``K_i = E o (F_i F_i')`` and every reduction is matrix products with the
``(n, A 2^P)`` feature matrix:

* ``weighted_sum(w)  = E o (F diag(w) F')``
* ``inner(W)_i       = sum over the columns f of F_i of f' (W o E) f``
* ``matvec(u)_i      = sum over the columns f of F_i of f o (E (f o u))``

Two compressions, both exact to rounding, cut the cost further:

* ``E`` is a Gaussian kernel of length ``1 / (2 pi v)``, long against the data for small
  scales (v = 0.001: 159 input units), so it is numerically of low rank: with ``E = G G'``
  a product with it costs ``4 n r`` flops a column instead of ``2 n^2``.
* The features of a block of neighbouring frequencies on a bounded range of inputs span far
  fewer dimensions than their ``k 2^P`` columns. ``compress(block)`` keeps an orthonormal
  basis ``Q`` (n, r) with ``F = Q R`` to rounding; sums and inner products over the block
  then cost ``2 n^2 r`` instead of ``2^(P+1) n^2 k``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gramfed.workers.kernels.gsmp import GSMPGrid, product_features, shared_envelope
from gramfed.workers.pivoted import pivoted_cholesky
from gramfed.workers.selection import Components, count, shift, within
from gramfed.workers.tiling import reserve, tiled_rows

# Largest entry of E - G G' allowed for the shared envelope's low-rank factor G.
ENVELOPE_TOLERANCE = 1e-14
# Singular values of a block's features below this fraction of the largest are rounding.
BASIS_TOLERANCE = 1e-13


def envelope_factor(envelope: Tensor) -> Tensor | None:
    """``G`` with no entry of ``E - G G'`` above ``ENVELOPE_TOLERANCE`` (E's entries are at
    most 1: the dense product's own rounding), or None where G would have more than n / 8
    columns and save too little."""
    most = envelope.shape[0] // 8
    factor = pivoted_cholesky(
        envelope.diagonal(), lambda i: envelope[i], most + 1, ENVELOPE_TOLERANCE
    )
    return factor if factor.shape[1] <= most else None


@dataclass(frozen=True)
class FeatureBasis:
    """``Q`` (n, r) orthonormal and ``coords`` (r, k, 2^P): the features of components
    ``range(start, stop)`` are ``Q coords`` to rounding."""

    start: int
    stop: int
    q: Tensor
    coords: Tensor

    @classmethod
    def of(cls, features: Tensor, start: int, stop: int) -> FeatureBasis | None:
        """The block's basis, or None where its rank is too close to its columns to pay."""
        block = features[:, start:stop]
        flat = block.reshape(block.shape[0], -1)
        u, s, vh = torch.linalg.svd(flat, full_matrices=False)
        rank = int((s > BASIS_TOLERANCE * s[0]).sum()) if s.numel() else 0
        if rank > 0.75 * flat.shape[1]:
            return None
        coords = (s[:rank, None] * vh[:rank]).reshape(rank, *block.shape[1:])
        return cls(start, stop, u[:, :rank].contiguous(), coords)

    @property
    def rank(self) -> int:
        return int(self.q.shape[1])

    def columns(self, local: Components) -> Tensor:
        """The coordinates of the selected components' features, (r, k 2^P)."""
        return self.coords[:, local].reshape(self.rank, -1)


class SpectralStack:
    """The sub-kernel stack of inputs ``x`` in product form (sub-kernels with shared scales)."""

    def __init__(self, x: Tensor, grid: GSMPGrid, tile_bytes: int) -> None:
        self.n, self.width = int(x.shape[0]), 2**grid.dims
        self.features = product_features(x, grid)
        self.envelope = shared_envelope(x, x, grid.scales[0])
        self.envelope_factor = envelope_factor(self.envelope)
        self.tile_bytes = tile_bytes
        self.device = x.device
        self._bases: list[FeatureBasis] = []
        self._max_chunk = grid.num_components  # lowered for good when a chunk runs out

    @staticmethod
    def nbytes(n: int, grid: GSMPGrid) -> int:
        return n * grid.num_components * 2**grid.dims * 8

    def compress(self, block: slice) -> None:
        """Keep a basis of the features of the components in ``block`` where it pays."""
        if block.stop <= block.start:
            return
        if any(b.start < block.stop and block.start < b.stop for b in self._bases):
            raise ValueError(f"components {block.start}:{block.stop} overlap a compressed block")
        basis = FeatureBasis.of(self.features, block.start, block.stop)
        if basis is not None:
            self._bases.append(basis)

    # -- reductions over a normalised, non-empty selection ---------------------------------
    def weighted_sum(self, w: Tensor, components: Components) -> Tensor:
        total: Tensor | None = None  # the first product is the sum: no n x n zeros to add to

        def accumulate(left: Tensor, right: Tensor) -> None:
            nonlocal total
            total = left @ right if total is None else total.addmm_(left, right)

        done = 0
        for piece in self._pieces(components):
            weights = w[done : done + count(piece)].repeat_interleave(self.width)
            done += count(piece)
            basis = self._paying_basis(piece)
            if basis is not None:
                columns = basis.columns(shift(piece, basis.start))
                accumulate(basis.q @ ((columns * weights) @ columns.T), basis.q.T)
                continue
            taken = 0

            def add_chunk(f: Tensor, weights: Tensor = weights) -> None:
                nonlocal taken
                accumulate(f * weights[taken : taken + f.shape[1]], f.T)
                taken += f.shape[1]

            self._each_chunk(piece, add_chunk)
        assert total is not None  # a normalised selection is not empty
        return total.mul_(self.envelope)

    def inner(self, matrix: Tensor, components: Components) -> Tensor:
        m = matrix * self.envelope
        parts: list[Tensor] = []
        for piece in self._pieces(components):
            basis = self._paying_basis(piece)
            if basis is not None:
                columns = basis.columns(shift(piece, basis.start))
                projected = basis.q.T @ (m @ basis.q)
                parts.append(self._per_component((projected @ columns) * columns))
            else:
                self._each_chunk(piece, lambda f: parts.append(self._per_component(f * (m @ f))))
        return torch.cat(parts)

    def matvec(self, u: Tensor, components: Components) -> Tensor:
        parts: list[Tensor] = []
        self._each_chunk(
            components,
            lambda f: parts.append(
                (f * self._envelope_times(f * u[:, None])).reshape(self.n, -1, self.width).sum(2).T
            ),
        )
        return torch.cat(parts)

    # -- helpers ---------------------------------------------------------------------------
    def _per_component(self, products: Tensor) -> Tensor:
        """Sum (rows, k 2^P) products over rows and each component's 2^P features: (k,)."""
        return products.sum(0).reshape(-1, self.width).sum(1)

    def _envelope_times(self, columns: Tensor) -> Tensor:
        """``E @ columns``, through E's low-rank factor when it has one."""
        if self.envelope_factor is None:
            return self.envelope @ columns
        return self.envelope_factor @ (self.envelope_factor.T @ columns)

    def _pieces(self, components: Components) -> list[Components]:
        """A slice cut where compressed blocks begin and end; index tensors stay whole."""
        if isinstance(components, Tensor):
            return [components]
        cuts = {components.start, components.stop}
        for basis in self._bases:
            cuts |= {c for c in (basis.start, basis.stop) if components.start < c < components.stop}
        ordered = sorted(cuts)
        return [slice(a, b) for a, b in itertools.pairwise(ordered)]

    def _paying_basis(self, components: Components) -> FeatureBasis | None:
        """The compressed block holding the selection, if its basis is narrower."""
        for basis in self._bases:
            if within(components, basis.start, basis.stop):
                return basis if basis.rank < self.width * count(components) else None
        return None

    def _each_chunk(self, components: Components, body: Callable[[Tensor], None]) -> None:
        """Run ``body`` on the ``(n, k 2^P)`` features of component chunks within
        ``tile_bytes`` (each product makes one result of that size), shrinking on OOM."""
        chunk_bytes = 2 * self.n * self.width * 8  # the chunk's product and its result

        def run(chunk: slice) -> None:
            if isinstance(components, slice):
                picked = slice(components.start + chunk.start, components.start + chunk.stop)
            else:
                picked = components[chunk]
            reserve((chunk.stop - chunk.start) * chunk_bytes, self.device)
            body(self.features[:, picked].reshape(self.n, -1))

        self._max_chunk = tiled_rows(
            count(components),
            max(1, min(self._max_chunk, self.tile_bytes // chunk_bytes)),
            run,
            device=self.device,
            row_bytes=chunk_bytes,
            unit="components",
        )
