"""Out-of-memory fallback for tiled work: smaller tiles, the same results, a clear error.

Every tile of the Gram-block and pooled-GP code announces its allocation (``reserve``) and
runs through ``tiled_rows``, which retries a tile that runs out of memory at half its size,
down to a floor. ``simulated_memory_limit`` imposes a device limit on machines without one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch


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

    Only allocations announced through ``reserve`` are checked; every tile of
    ``workers.gram``, ``workers.spectral`` and ``workers.pooled`` announces itself there.
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
    unit: str = "rows",
) -> int:
    """Call ``body`` on consecutive row slices of ``range(total)``; return the rows that held.

    ``unit`` names what the slices count in error messages (rows of a tile, components).

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
                    f"out of memory on {device} for a Gram tile of {size} {unit} "
                    f"({size * row_bytes / 2**20:.1f} MiB), already at the floor of {min_rows} "
                    f"{unit}; free memory on the device, or use a smaller column tile or dtype"
                ) from exc
            tile_rows = max(min_rows, tile_rows // 2)
        else:
            start = rows.stop
            continue
        # Outside the handler, so the failed tile's frames are released before emptying.
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return tile_rows
