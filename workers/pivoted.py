"""Greedy pivoted Cholesky: a low-rank factor ``L L'`` of a PSD matrix, row by row."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def pivoted_cholesky(
    diagonal: Tensor, row: Callable[[int], Tensor], max_rank: int, tolerance: float
) -> Tensor:
    """``L`` (n, k) with ``K ~ L L'``, from K's diagonal and a function giving its row ``i``.

    Each step takes the row of the largest remaining diagonal entry, so building costs k rows
    of K (Harbrecht, Peters and Schneider 2012). It stops after ``max_rank`` columns, or once
    every remaining diagonal entry is at most ``tolerance`` times the largest entry of K's
    diagonal: the residual ``K - L L'`` is PSD, so then none of its entries exceeds that.
    """
    residual = diagonal.to(torch.float64).clone()
    n = residual.shape[0]
    rank = min(max_rank, n)
    factor = torch.zeros(n, rank, dtype=torch.float64, device=diagonal.device)
    floor = tolerance * float(residual.max()) if n else 0.0
    for i in range(rank):
        pivot = int(residual.argmax())
        if float(residual[pivot]) <= floor:  # K is numerically of rank i
            return factor[:, :i]
        column = (row(pivot) - factor[:, :i] @ factor[pivot, :i]) / residual[pivot].sqrt()
        factor[:, i] = column
        residual = (residual - column.square()).clamp_min(0.0)
    return factor
