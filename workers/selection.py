"""Selections of sub-kernels: a contiguous slice, or sorted distinct indices."""

from __future__ import annotations

import torch
from torch import Tensor

Components = slice | Tensor


def normalise(components: Components, total: int, device: torch.device) -> Components:
    """A contiguous slice within ``range(total)``, or sorted distinct indices on ``device``."""
    if isinstance(components, slice):
        start, stop, step = components.indices(total)
        if step != 1:
            raise ValueError("component selections must be contiguous slices or index tensors")
        return slice(start, stop)
    indices = components.to(device=device, dtype=torch.long).reshape(-1)
    if indices.numel() and (
        int(indices[0]) < 0 or int(indices[-1]) >= total or bool((indices.diff() <= 0).any())
    ):
        raise ValueError(f"component indices must be sorted, distinct and in [0, {total})")
    return indices


def count(components: Components) -> int:
    if isinstance(components, slice):
        return components.stop - components.start
    return int(components.numel())


def within(components: Components, start: int, stop: int) -> bool:
    """Whether every selected component lies in ``range(start, stop)``."""
    if isinstance(components, slice):
        return start <= components.start and components.stop <= stop
    return not components.numel() or (start <= int(components[0]) and int(components[-1]) < stop)


def shift(components: Components, offset: int) -> Components:
    """The same selection with every index lowered by ``offset``."""
    if isinstance(components, slice):
        return slice(components.start - offset, components.stop - offset)
    return components - offset
