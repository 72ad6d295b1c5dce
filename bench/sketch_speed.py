"""Sketch build and query speed: 1e6 points of d = 32 into 4,096 random Fourier features.

    .venv/bin/python bench/sketch_speed.py [--n 1000000] [--features 4096] [--queries 100000]
        [--threads T] [--runs 5]

Times the exact accumulation (float32 products in fixed-shape blocks + cos/sin into the
contiguous halves of a reused buffer, exact sums of fixed-point features), the gate release on
top of it (noise for 4,097 coordinates, signed ledger entry), and batched KDE queries with and
without their error bounds (float32 features in cache-sized blocks; the bound includes the
float32 rounding term), then each step of the query pass timed alone. Each query pass runs
``--runs`` times and the table gives the median (and the fastest and slowest run): a 0.2-1 s
pass on a shared machine can catch a neighbour's burst.
Prints Markdown tables with wall seconds and the process's CPU seconds, and the machine's load
average before and after (on a shared machine the wall time depends on the others' load; the
CPU time much less so; with T threads CPU seconds add up over the threads).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
import torch
from sketch_error import POOL, scratch_gate

from gramfed.platform.sketch_release import release_sketch
from gramfed.privacy.accountant import rho_for_epsilon
from gramfed.workers.device import resolve_device
from gramfed.workers.sketch.accumulate import QUERY_CHUNK_BYTES, accumulate, chunk_rows
from gramfed.workers.sketch.query import SketchQuery
from gramfed.workers.sketch.rff import RandomFourierFeatures, pair_product
from gramfed.workers.sketch.spec import SketchSpec


def breakdown(engine: SketchQuery, queries: np.ndarray) -> dict[str, float]:
    """Seconds of each step of the query pass over all ``queries``, timed step by step on the
    engine's own blocks (one block of cosines reused, as in the pass itself)."""
    feature = engine.feature
    assert isinstance(feature, RandomFourierFeatures)
    y = torch.as_tensor(queries, dtype=torch.float32, device=engine.device)
    rows = chunk_rows(engine.spec, QUERY_CHUNK_BYTES)
    block = torch.empty(2, min(rows, len(y)), engine.spec.features // 2, device=engine.device)
    steps = {
        "mm (W y)": lambda c, b: torch.mm(c, feature.weights, out=b[0]),
        "cos and sin": lambda c, b: (torch.sin(b[0], out=b[1]), b[0].cos_()),
        "product with the sums": lambda c, b: pair_product(b, engine.values),
        "norms for the bound": lambda c, b: torch.hypot(*torch.linalg.vector_norm(b, dim=2)),
    }
    seconds = dict.fromkeys(steps, 0.0)
    for start in range(0, len(y), rows):
        chunk = y[start : start + rows]
        out = block[:, : len(chunk)]
        for name, step in steps.items():
            began = time.perf_counter()
            step(chunk, out)
            if engine.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name] += time.perf_counter() - began
    return seconds


def timed(
    run: Callable[[np.ndarray], object], queries: np.ndarray, device: torch.device
) -> tuple[float, float]:
    """Wall and CPU seconds of ``run(queries)``."""
    start, cpu_start = time.perf_counter(), time.process_time()
    run(queries)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10**6)
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each query pass")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d))
    queries = rng.standard_normal((args.queries, args.d))
    spec = SketchSpec("gaussian", args.d, seed=1, bandwidth=args.d**0.5, features=args.features)
    accumulate(spec, x[:1000], device=device)  # warm-up
    load_before = os.getloadavg()
    with scratch_gate() as gate:
        start, cpu_start = time.perf_counter(), time.process_time()
        sums = accumulate(spec, x, device=device)
        built, cpu_built = time.perf_counter(), time.process_time()
        _, sketch = release_sketch(
            gate, POOL, spec, lambda: sums, rho=rho_for_epsilon(1.0, 1e-6), requester="bench"
        )
        released = time.perf_counter()
    engine = SketchQuery(sketch, device)
    engine.density(queries[:1000])
    if device.type == "cuda":
        torch.cuda.synchronize()
    passes = {
        "density queries": engine.density,
        "error bounds": engine.error_bound,
        "densities with bounds (one pass)": engine.density_with_bound,
    }
    timings = {
        name: [timed(run, queries, device) for _ in range(args.runs)]
        for name, run in passes.items()
    }
    load_after = os.getloadavg()
    print(f"device: {device} ({torch.get_num_threads()} CPU threads)")
    print(
        "load average (1, 5, 15 min) before / after:"
        f" {' '.join(f'{v:.2f}' for v in load_before)} / {' '.join(f'{v:.2f}' for v in load_after)}"
    )
    print("| step | wall s | CPU s | rate (wall) |")
    print("|---|---|---|---|")
    print(
        f"| accumulate {args.n:.0e} x {args.d} into {args.features} features |"
        f" {built - start:.2f} | {cpu_built - cpu_start:.2f} |"
        f" {args.n / (built - start):,.0f} points/s |"
    )
    print(f"| gate release (noise + ledger) | {released - built:.2f} | | |")
    print(f"| build total | {released - start:.2f} | | |")
    for name, runs in timings.items():
        wall = sorted(w for w, _ in runs)
        cpu = float(np.median([c for _, c in runs]))
        middle = float(np.median(wall))
        print(
            f"| {args.queries:,} {name} (median of {len(runs)}; fastest, slowest) |"
            f" {middle:.2f} ({wall[0]:.2f}, {wall[-1]:.2f}) | {cpu:.2f} |"
            f" {args.queries / middle:,.0f} queries/s |"
        )
    print()
    print(f"| step of the query pass ({args.queries:,} queries, timed alone) | s |")
    print("|---|---|")
    for name, seconds in breakdown(engine, queries).items():
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
