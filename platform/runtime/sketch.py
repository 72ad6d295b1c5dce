"""Sketch shards as stateless Ray tasks: each sums its rows, the driver adds the sums.

A shard's sums depend only on its rows and the public spec, so a task lost with its worker is
simply run again by Ray (``max_retries``): nothing is kept between tasks.
"""

from __future__ import annotations

import numpy as np
import ray

from gramfed.platform.cli.progress import row_progress
from gramfed.platform.sketch_build import Sums, add_sums, shard_sums
from gramfed.workers.sketch.spec import SketchSpec

TASK_RETRIES = 3


@ray.remote(max_retries=TASK_RETRIES)
def _shard_task(
    spec: SketchSpec,
    x: np.ndarray,
    row_labels: np.ndarray | None,
    labels: list[str],
    device: str,
) -> Sums:
    return shard_sums(spec, x, row_labels, labels, device)


def ray_sums(
    spec: SketchSpec,
    x: np.ndarray,
    row_labels: np.ndarray | None,
    labels: list[str],
    shards: list[np.ndarray],
    device: str,
) -> Sums:
    """One task per shard (rows placed through the object store); their sums added here."""
    pending = {
        _shard_task.remote(
            spec, x[rows], None if row_labels is None else row_labels[rows], labels, device
        ): len(rows)
        for rows in shards
    }
    total: Sums | None = None
    with row_progress(f"sketching ({len(shards)} Ray tasks)", len(x)) as advance:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            total = add_sums(total, ray.get(done[0]))
            advance(pending.pop(done[0]))
    assert total is not None
    return total
