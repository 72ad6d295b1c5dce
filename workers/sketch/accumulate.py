"""Exact (un-noised) sketch sums of one shard, and their merge by addition.

These never leave a job: the platform's sketch release turns them into a sketch through
the privacy gate. A sharded build computes ``accumulate`` on every shard (on any worker; the
random features come from the spec's public seed) and adds the results, which equals the sums
of the union exactly: LSH counts are integers, and RFF sums are exact sums of fixed-point
features (``rff``), up to the one float64 scaling of each total.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gramfed.workers.device import resolve_device
from gramfed.workers.sketch.lsh import LSHBuckets
from gramfed.workers.sketch.products import BLOCK_ROWS
from gramfed.workers.sketch.rff import (
    FEATURE_GRID_BITS,
    FIXED_POINT_ROWS,
    RandomFourierFeatures,
    to_fixed_point,
)
from gramfed.workers.sketch.spec import SketchSpec

ChunkHook = Callable[[int], None]  # called with the number of rows just processed
# 32 MiB chunks (LSH builds, and RFF builds on CUDA): large enough that per-chunk overheads (a
# thread-pool barrier per operation, a kernel launch on CUDA) stay small.
DEFAULT_CHUNK_BYTES = 32 << 20
# An RFF build on a CPU runs fastest with feature blocks that stay in cache between the product
# that writes them and the sine, cosine and sum passes that read them, yet large enough that
# the per-chunk dispatch (a dozen operations, each a thread-pool barrier) stays small. On a
# 2-core EPYC with two threads, medians of interleaved runs: 2e5 rows of d = 32 into 4,096
# features took 1.58 / 1.12 / 0.97 / 1.00 s with 1 / 2 / 4 / 8 MiB blocks, and 1e6 rows of
# d = 13 into 128 features in 10 classes 0.18 s with 4 MiB against 0.32 s with 2 MiB; one
# thread was no slower with 4 MiB than with 2 (and 1e6 rows into 64 features took 0.46 s with
# 32 MiB against 0.24 s with 2 MiB there).
RFF_CPU_CHUNK_BYTES = 4 << 20
# Queries read each block of cosines once more (their product with the sums, and norms), so
# their blocks stay near cache size: 4 MiB (256 queries of 4,096 features) ran 7-15% faster
# than 32 MiB blocks on a 2-core EPYC (one thread, then two; 1 and 2 MiB were slower again).
QUERY_CHUNK_BYTES = 4 << 20


@dataclass(frozen=True)
class SketchSums:
    """Sum of one shard's features (float64, RFF) or bucket counts (int64, LSH), and its size."""

    spec: SketchSpec
    values: np.ndarray
    count: int

    def __add__(self, other: SketchSums) -> SketchSums:
        self.spec.require_compatible(other.spec)
        return SketchSums(self.spec, self.values + other.values, self.count + other.count)


def featuriser(spec: SketchSpec, device: torch.device) -> RandomFourierFeatures | LSHBuckets:
    """The feature map (RFF) or bucket hash (LSH) of ``spec`` on ``device``."""
    return RandomFourierFeatures(spec, device) if spec.is_rff else LSHBuckets(spec, device)


def as_inputs(x: np.ndarray | torch.Tensor, spec: SketchSpec) -> torch.Tensor:
    """Validate an (n, d) array of finite inputs for ``spec``; float64 tensor on the CPU."""
    t = torch.as_tensor(x)
    if t.ndim != 2 or t.shape[1] != spec.input_dim:
        raise ValueError(
            f"the sketch takes inputs of shape (n, {spec.input_dim}), got {tuple(t.shape)}"
        )
    if not t.dtype.is_floating_point and t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"inputs must be numeric, got {t.dtype}")
    t = t.to(torch.float64)
    # A NaN or infinity makes the sum non-finite; only then (or when finite values overflow
    # it) is the elementwise test needed, which runs 30x slower than the sum on a CPU.
    if not bool(torch.isfinite(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ValueError("inputs contain NaN or infinity")
    return t


def chunk_rows(spec: SketchSpec, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that the chunk's largest temporary stays within ``chunk_bytes``; for
    RFF, the nearest whole number of the products' blocks (``products``), so that no chunk
    but the last pays for padding."""
    if spec.is_rff:
        per_row = 4 * (spec.features + spec.featurised_dim)
        blocks = round(chunk_bytes / per_row / BLOCK_ROWS)
        return BLOCK_ROWS * max(1, blocks)
    width = spec.featurised_dim if spec.kernel == "laplacian" else 1
    per_row = 8 * spec.repetitions * spec.hashes * width * 3
    return max(1, chunk_bytes // per_row)


def rff_cosines(
    feature: RandomFourierFeatures, inputs: Tensor, rows: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """(chunk, ``unscaled(chunk)``) for successive chunks of ``rows`` inputs: the cosines and
    sines (2, rows, D / 2), float32.

    The cosines share one buffer, allocated once: each block is valid until the next one.
    """
    buffer = torch.empty(
        2,
        min(rows, inputs.shape[0]),
        feature.spec.features // 2,
        dtype=torch.float32,
        device=feature.device,
    )
    for start in range(0, inputs.shape[0], rows):
        chunk = inputs[start : start + rows].to(feature.device, torch.float32)
        yield chunk, feature.unscaled(chunk, out=buffer[:, : chunk.shape[0]])


def accumulate(
    spec: SketchSpec,
    x: np.ndarray | torch.Tensor,
    *,
    device: str | torch.device | None = "auto",
    rows_per_chunk: int | None = None,
    on_chunk: ChunkHook | None = None,
) -> SketchSums:
    """The exact sums of ``x`` (n, d): sum of RFF features, or LSH bucket counts, and n.

    Runs in chunks of rows (fixed-point features summed exactly; integer counts) on ``device``
    (CUDA when available by default); ``on_chunk`` reports progress.
    """
    feature = featuriser(spec, resolve_device(device))
    return sums_of(feature, as_inputs(x, spec), rows_per_chunk, on_chunk)


def sums_of(
    feature: RandomFourierFeatures | LSHBuckets,
    inputs: Tensor,
    rows_per_chunk: int | None = None,
    on_chunk: ChunkHook | None = None,
) -> SketchSums:
    """``accumulate`` of inputs already through ``as_inputs``, with a feature map already
    built."""
    return grouped_sums(feature, inputs, None, 1, rows_per_chunk, on_chunk)[0]


def grouped_sums(
    feature: RandomFourierFeatures | LSHBuckets,
    inputs: Tensor,
    group: Tensor | None,
    groups: int,
    rows_per_chunk: int | None = None,
    on_chunk: ChunkHook | None = None,
) -> list[SketchSums]:
    """The sums of each group of rows (``group`` (n,) int64 codes in [0, groups), or None for
    one group of all rows), from one pass over the rows in their order: no sort or gather of
    the inputs, whose random access costs more than the features on a CPU.
    """
    spec, dev = feature.spec, feature.device
    cached = spec.is_rff and dev.type == "cpu"
    rows = rows_per_chunk or chunk_rows(
        spec, RFF_CPU_CHUNK_BYTES if cached else DEFAULT_CHUNK_BYTES
    )
    if group is None:
        counts = [int(inputs.shape[0])]
    else:
        group = group.to(dev)
        counts = torch.bincount(group, minlength=groups).tolist()
    if isinstance(feature, RandomFourierFeatures):
        total = _fixed_point_sums(feature, inputs, group, groups, rows, on_chunk)
    else:
        total = torch.zeros(groups * spec.size, dtype=torch.int64, device=dev)
        for start in range(0, inputs.shape[0], rows):
            chunk = inputs[start : start + rows].to(dev)
            index = feature(chunk)
            if group is not None:
                index = index + (group[start : start + rows] * spec.size)[:, None]
            total += torch.bincount(index.reshape(-1), minlength=groups * spec.size)
            if on_chunk is not None:
                on_chunk(chunk.shape[0])
        total = total.reshape(groups, spec.size)
    values = total.cpu().numpy()
    return [SketchSums(spec, values[g].copy(), counts[g]) for g in range(groups)]


def _fixed_point_sums(
    feature: RandomFourierFeatures,
    inputs: Tensor,
    group: Tensor | None,
    groups: int,
    rows: int,
    on_chunk: ChunkHook | None,
) -> Tensor:
    """(groups, D) exact sums of the fixed-point features of each group's rows (``rff``).

    Each block of at most ``FIXED_POINT_ROWS`` rows is summed per group into a float32
    accumulator, exact because every partial sum is an integer below 2^24 grid units (so no
    float64 copy of the features is needed, and index_add's order does not matter), then added
    to float64 totals, exact too; the grid unit and the features' scale are applied once.
    """
    spec, dev = feature.spec, feature.device
    half = spec.features // 2
    block = min(rows, FIXED_POINT_ROWS)
    partial = torch.empty(2, groups, half, dtype=torch.float32, device=dev)
    total = torch.zeros(2, groups, half, dtype=torch.float64, device=dev)
    if group is None:
        group = torch.zeros(inputs.shape[0], dtype=torch.int64, device=dev)
    done = 0
    for chunk, halves in rff_cosines(feature, inputs, rows):
        to_fixed_point(halves)
        for start in range(0, chunk.shape[0], block):
            stop = min(start + block, chunk.shape[0])
            rows_group = group[done + start : done + stop]
            partial.zero_()
            for partial_half, features_half in zip(partial, halves, strict=True):
                partial_half.index_add_(0, rows_group, features_half[start:stop])
            total += partial
        done += chunk.shape[0]
        if on_chunk is not None:
            on_chunk(chunk.shape[0])
    unit = feature.scale * 2.0**-FEATURE_GRID_BITS
    return total.permute(1, 0, 2).reshape(groups, spec.features) * unit


def accumulate_shards(
    spec: SketchSpec,
    shards: Sequence[np.ndarray | torch.Tensor],
    **options: object,
) -> SketchSums:
    """Sums of several shards, each accumulated on its own and merged by addition."""
    if not shards:
        raise ValueError("no shards to sketch")
    parts = [accumulate(spec, shard, **options) for shard in shards]  # type: ignore[arg-type]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
