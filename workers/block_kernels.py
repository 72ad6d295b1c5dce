"""The sub-kernels of several DSCA blocks' free weights, reduced together.

DSCA's interior point (``gramfed.workers.sca``) solves the S block models of an iteration
side by side, each over its own free weights. Block b's free weights are ``chosen[b]``; the
batch pads them to the longest, ``K``, and every reduction returns zeros in the padding:

* ``matvec(u)``        ->  ``K_i u_b`` for block b's free i            (B, K, n)
* ``weighted_sum(w)``  ->  ``sum_i w_bi K_i`` over block b's free i     (B, n, n)

``FeatureBlockKernels`` works in the product form of a spectral stack
(``gramfed.workers.spectral``: ``K_i = E o (F_i F_i')``), each reduction a few batched
products for every block at once: on small shards the interior point's cost is the dispatch
of its many small operations, not their arithmetic (passengerdata: 49 points a shard, 500
components), so one operation serving every block is what counts. ``LazyBlockKernels``
reduces one block through the Gram stack's own reductions.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from gramfed.workers.gram import NoiseAugmentedGram, SubKernelGram
from gramfed.workers.spectral import SpectralStack


class BlockKernels(Protocol):
    chosen: list[Tensor]

    def matvec(self, u: Tensor) -> Tensor: ...

    def weighted_sum(self, weights: Tensor) -> Tensor: ...


def padded_width(chosen: list[Tensor]) -> int:
    return max(int(c.numel()) for c in chosen)


class FeatureBlockKernels:
    """The selected components' product features, zero-padded, as ``(B, n, 2^P K)`` with
    the feature index outermost: summing over a component's features then adds whole
    ``K``-vectors instead of reducing runs of 2^P (a far slower reduction in torch)."""

    def __init__(self, stack: SpectralStack, chosen: list[Tensor]) -> None:
        self.chosen = chosen
        self.width = stack.width
        features = stack.features.new_zeros(len(chosen), stack.n, self.width, padded_width(chosen))
        for b, components in enumerate(chosen):
            features[b, :, :, : components.numel()] = stack.features[:, components].mT
        self.features = features.reshape(len(chosen), stack.n, -1)
        self.envelope = stack.envelope

    def matvec(self, u: Tensor) -> Tensor:
        # K_i u = sum over i's features f of f o (E (f o u))
        mixed = self.envelope @ (self.features * u[:, :, None])
        products = (self.features * mixed).reshape(*u.shape, self.width, -1).sum(2)
        return products.mT

    def weighted_sum(self, weights: Tensor) -> Tensor:
        scaled = self.features * weights.repeat(1, self.width)[:, None, :]
        return (scaled @ self.features.mT).mul_(self.envelope)


class LazyBlockKernels:
    """One block's reductions through the Gram stack's own (a batch of one): for large shards,
    whose covariances are solved one at a time."""

    def __init__(self, gram: SubKernelGram | NoiseAugmentedGram, components: Tensor) -> None:
        self.gram = gram
        self.chosen = [components]

    def matvec(self, u: Tensor) -> Tensor:
        return self.gram.matvec(u[0], self.chosen[0])[None]

    def weighted_sum(self, weights: Tensor) -> Tensor:
        # a view: no copy of an n x n matrix
        return self.gram.weighted_sum(weights[0], self.chosen[0])[None]
