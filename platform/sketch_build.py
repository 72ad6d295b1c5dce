"""The ``sketch_build`` job: sketch a dataset shard by shard, release it once, write the file.

Shards are summed exactly (``accumulate``: RFF feature sums or LSH counts) wherever they are
computed, in this process or as stateless Ray tasks (the features come from the spec's public
seed, so every worker computes the same ones), and the exact sums stay inside the job: the
only thing that leaves is the sketch the gate releases from their total, in one priced
release for all classes. ``gramfed sketch build JOB.toml [--ray] [--address ADDR]`` and
``gramfed run JOB.toml`` both come here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gramfed.platform.cli.progress import row_progress
from gramfed.platform.sketch_files import save_sketches
from gramfed.platform.sketch_release import release_sketches
from gramfed.platform.sketchspec import SketchJob, class_names, load_points
from gramfed.privacy.accountant import rho_for_epsilon
from gramfed.privacy.budget import ApproxDP, PoolSpec, pool_key
from gramfed.privacy.errors import LedgerError
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.workers.sketch.accumulate import ChunkHook, SketchSums, accumulate
from gramfed.workers.sketch.classify import accumulate_by_label
from gramfed.workers.sketch.spec import SketchSpec

Sums = dict[str, SketchSums]
# (spec, x, row labels or None, class names, shards as row-index arrays, device) -> total sums
ShardSummer = Callable[
    [SketchSpec, np.ndarray, np.ndarray | None, list[str], list[np.ndarray], str], Sums
]


def shard_sums(
    spec: SketchSpec,
    x: np.ndarray,
    row_labels: np.ndarray | None,
    labels: list[str],
    device: str,
    on_chunk: ChunkHook | None = None,
) -> Sums:
    """The exact sums of one shard: one entry, or one per class."""
    if row_labels is None:
        return {"": accumulate(spec, x, device=device, on_chunk=on_chunk)}
    return accumulate_by_label(
        spec, x, class_names(row_labels), labels, device=device, on_chunk=on_chunk
    )


def add_sums(total: Sums | None, part: Sums) -> Sums:
    return part if total is None else {k: total[k] + part[k] for k in total}


def local_sums(
    spec: SketchSpec,
    x: np.ndarray,
    row_labels: np.ndarray | None,
    labels: list[str],
    shards: list[np.ndarray],
    device: str,
) -> Sums:
    """Every shard in this process, one after another, with a progress bar over rows."""
    total: Sums | None = None
    with row_progress("sketching", len(x)) as hook:
        for rows in shards:
            part_labels = None if row_labels is None else row_labels[rows]
            total = add_sums(total, shard_sums(spec, x[rows], part_labels, labels, device, hook))
    assert total is not None
    return total


def run_sketch_job(
    job: SketchJob, *, distributed: bool = False, address: str | None = None
) -> dict[str, Any]:
    """Run ``job`` here, or with its shards as Ray tasks (``distributed``) on ``address``."""
    if not distributed:
        return run_build(job, local_sums)
    from gramfed.platform.runtime.driver import connect
    from gramfed.platform.runtime.sketch import ray_sums

    started = connect(address)
    try:
        return run_build(job, ray_sums)
    finally:
        if started:
            import ray

            ray.shutdown()


def run_build(job: SketchJob, summer: ShardSummer) -> dict[str, Any]:
    """Load, sum the shards with ``summer``, release once through the gate, write the file."""
    data = job.data
    points = load_points(
        data.path, features=data.features, label=data.label, x_key=data.x_key, y_key=data.y_key
    )
    spec = job.sketch_spec(points.x.shape[1])
    privacy = job.privacy
    ledger = Ledger(privacy.ledger, privacy.key, create=True)
    gate = Gate(ledger)
    pool = _pool(gate, privacy.dataset, privacy.budget_epsilon, privacy.budget_delta)
    budget: dict[str, Any]
    if job.sketch.noise == "laplace":
        if privacy.epsilon is None:
            raise ValueError("laplace noise is pure DP: give 'epsilon', not 'rho'")
        budget = {"epsilon": privacy.epsilon}
    elif privacy.rho is not None:
        budget = {"rho": privacy.rho}
    else:
        assert privacy.epsilon is not None
        budget = {"rho": rho_for_epsilon(privacy.epsilon, privacy.delta or pool.delta)}
    labels = job.sketch.classes or [""]
    shards = np.array_split(np.arange(len(points.x)), job.compute.shards)

    def compute() -> Sums:
        return summer(spec, points.x, points.labels, labels, shards, job.compute.device)

    start = time.perf_counter()
    _, sketches = release_sketches(
        gate,
        pool,
        spec,
        labels,
        compute,
        noise=job.sketch.noise,
        requester=f"gramfed sketch build {job.job.name}",
        **budget,
    )
    seconds = time.perf_counter() - start
    out = save_sketches(list(sketches.values()), job.output.path)
    first = next(iter(sketches.values()))
    return {
        "name": job.job.name,
        "output": str(out),
        "spec": spec.describe(),
        "classes": job.sketch.classes,
        "shards": len(shards),
        "noisy_count": sum(s.count for s in sketches.values()),
        "privacy": first.privacy_statement(),
        "ledger_entry": first.provenance[0].ledger_id,
        "seconds": seconds,
    }


def _pool(gate: Gate, dataset: str, budget_epsilon: float | None, delta: float) -> PoolSpec:
    key = pool_key(dataset)
    try:
        return gate.ledger.pool(key)
    except LedgerError:
        if budget_epsilon is None:
            raise ValueError(
                f"budget pool {key!r} does not exist; set privacy.budget_epsilon to create it"
            ) from None
    return gate.create_pool(PoolSpec.of(dataset, ApproxDP(budget_epsilon, delta)))
