"""Matrix products whose every row is rounded the same way whatever the other rows.

A BLAS picks its kernel, and with it the order in which a row's products are summed, from the
shape of the whole product: on an AMD EPYC, torch's float32 ``x @ W`` rounds many entries of a
row differently in a 7-row product than in a 3,000-row one, although each row's dot products
are the same. The sketches need a record's features to depend on that record alone: the build's
fixed-point sums are exact functions of the records only if every record's features are
(``rff``), and a neighbouring dataset must not move the other records' features by changing the
shapes of the products they take part in. So products are taken block by block, every block
the same (``BLOCK_ROWS``, k) @ (k, m) shape, the last one zero-padded: a row is then rounded as
it would be in any other block (``tests/test_sketch.py`` checks it across chunkings and thread
counts). Batched, the blocks take 0.9-1.3x the time of one plain product (measured on a
2-core CPU, 128-4,096 rows, k = 3-32).
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK_ROWS = 64  # chunks of RFF rows come in whole blocks (``accumulate.chunk_rows``)


def row_stable_mm(x: Tensor, matrix: Tensor, out: Tensor | None = None) -> Tensor:
    """``x @ matrix`` (n, k) @ (k, m), each row computed by a (``BLOCK_ROWS``, k) @ (k, m)
    product; ``out`` (n, m), contiguous, receives it when given."""
    n, m = x.shape[0], matrix.shape[1]
    if out is None:
        out = torch.empty(n, m, dtype=x.dtype, device=x.device)
    whole = n - n % BLOCK_ROWS
    if whole:
        blocks = whole // BLOCK_ROWS
        torch.bmm(
            x[:whole].reshape(blocks, BLOCK_ROWS, -1),
            matrix.expand(blocks, *matrix.shape),
            out=out[:whole].view(blocks, BLOCK_ROWS, m),
        )
    if whole < n:
        padded = x.new_zeros(BLOCK_ROWS, x.shape[1])
        padded[: n - whole] = x[whole:]
        out[whole:] = torch.mm(padded, matrix)[: n - whole]
    return out
