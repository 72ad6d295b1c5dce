"""Seeded Gaussian random projection before featurisation (Backurs et al., ICLR 2024).

``P x`` with ``P`` of shape (k, d) and i.i.d. N(0, 1/k) entries keeps squared distances in
expectation, E|P(x - y)|^2 = |x - y|^2, and within a factor 1 +- O(sqrt(log(1/beta) / k)) with
probability 1 - beta (Johnson-Lindenstrauss). Featurising k instead of d coordinates makes the
build and every query cheaper for large d; the price is that extra distortion of the kernel,
which bench/sketch_error.py measures. The projection is public (drawn from the spec's seed), so
it does not change any sensitivity: each record is still one bounded feature vector.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gramfed.workers.sketch.products import row_stable_mm
from gramfed.workers.sketch.spec import SketchSpec, public_stream


def projection_matrix(spec: SketchSpec, device: torch.device) -> Tensor | None:
    """The (d, k) float32 matrix ``P^T`` of ``spec``, or None when the spec projects nothing."""
    if spec.projection_dim is None:
        return None
    rng = public_stream(spec.seed, "projection")
    p = rng.standard_normal((spec.input_dim, spec.projection_dim)) / spec.projection_dim**0.5
    return torch.as_tensor(p, dtype=torch.float32, device=device)


def project(x: Tensor, matrix: Tensor | None) -> Tensor:
    """Inputs (n, d) mapped to (n, k), row by row alike (``products``); unchanged without a
    projection."""
    return x if matrix is None else row_stable_mm(x, matrix)
