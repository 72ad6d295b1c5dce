"""DP KDE sketch error against the exact KDE, beside Wagner et al.'s Laplace RFF sketch.

    .venv/bin/python bench/sketch_error.py            # the full grid of the acceptance figures
    .venv/bin/python bench/sketch_error.py --n 10000 --d 2 16 --queries 200   # a smaller grid

Data: n points from a standard normal in d dimensions (public synthetic data), queries from the
same distribution, Gaussian kernel with bandwidth sqrt(d) (a public rule for standardised data).
The exact KDE is computed from Gram tiles of the RBF kernel (``gramfed.workers.kernels``). Both
sketches use the same D random features and the same exact sums; they differ only in the
mechanism: ours is the Gaussian mechanism (L2 sensitivity sqrt(3), rho-zCDP at the (epsilon,
delta) target), theirs the Laplace mechanism (L1 sensitivity sqrt(2 D) + 1, pure epsilon). Both
are released through a privacy gate on a scratch ledger with the system's cryptographic noise,
``--repeats`` times per cell (errors averaged: the features are shared, so one noise draw each
would make the comparison a coin toss wherever the feature error dominates).
"noise MAE" is the error against the same sketch without noise: the mechanism's share alone,
which the shared feature error can hide in the totals. For d = 128, a row with a random
projection to 32 dimensions shows its effect. Prints Markdown.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from gramfed.platform.sketch_release import release_sketch
from gramfed.privacy import keys
from gramfed.privacy.accountant import rho_for_epsilon
from gramfed.privacy.budget import PoolSpec, Rho
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.workers.sketch.accumulate import accumulate
from gramfed.workers.sketch.query import SketchQuery, exact_kde, exact_kernel
from gramfed.workers.sketch.sketch import Sketch
from gramfed.workers.sketch.spec import SketchSpec

POOL = "bench:record"


@contextmanager
def scratch_gate() -> Iterator[Gate]:
    """A gate on a fresh ledger with an unlimited-for-practical-purposes budget."""
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "ledger.key"
        keys.generate(key)
        with Ledger(Path(tmp) / "ledger.db", key, create=True) as ledger:
            gate = Gate(ledger)
            gate.create_pool(PoolSpec("bench", Rho(10**9)))
            yield gate


def errors(
    estimate: torch.Tensor, exact: torch.Tensor, noiseless: torch.Tensor
) -> tuple[float, float, float]:
    """Mean absolute and relative error against the exact KDE, and the mean absolute error
    against the same sketch without noise (the part due to the mechanism alone)."""
    diff = (estimate - exact).abs()
    return (
        float(diff.mean()),
        float((diff / exact).mean()),
        float((estimate - noiseless).abs().mean()),
    )


def run(args: argparse.Namespace) -> None:
    print(
        "| n | d | projection | epsilon | ours MAE | ours rel. | ours noise MAE |"
        " Laplace RFF MAE | Laplace RFF rel. | Laplace noise MAE | ours lower |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    with scratch_gate() as gate:
        for n in args.n:
            for d in args.d:
                rng = np.random.default_rng(n + d)
                x = rng.standard_normal((n, d))
                queries = rng.standard_normal((args.queries, d))
                projections = [None, 32] if d == 128 and args.projection else [None]
                for k in projections:
                    spec = SketchSpec(
                        "gaussian",
                        d,
                        seed=1,
                        bandwidth=math.sqrt(d),
                        features=args.features,
                        projection_dim=k,
                    )
                    exact = exact_kde(exact_kernel(spec), x, queries, device=args.device)
                    sums = accumulate(spec, x, device=args.device)
                    noiseless = Sketch(spec, sums.values, sums.count)
                    clean = SketchQuery(noiseless, args.device).density(queries)
                    for eps in args.epsilon:
                        rho = rho_for_epsilon(eps, args.delta)
                        a, b = np.zeros(3), np.zeros(3)
                        for _ in range(args.repeats):
                            _, ours = release_sketch(
                                gate, POOL, spec, lambda s=sums: s, rho=rho, requester="bench"
                            )
                            _, theirs = release_sketch(
                                gate,
                                POOL,
                                spec,
                                lambda s=sums: s,
                                noise="laplace",
                                epsilon=eps,
                                requester="bench",
                            )
                            a += errors(
                                SketchQuery(ours, args.device).density(queries), exact, clean
                            )
                            b += errors(
                                SketchQuery(theirs, args.device).density(queries), exact, clean
                            )
                        a, b = a / args.repeats, b / args.repeats
                        print(
                            f"| {n:.0e} | {d} | {k or '-'} | {eps:g} | {a[0]:.2e} | {a[1]:.2e} |"
                            f" {a[2]:.2e} | {b[0]:.2e} | {b[1]:.2e} | {b[2]:.2e} |"
                            f" {'yes' if a[0] < b[0] else 'NO'} |",
                            flush=True,
                        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[10**4, 10**5, 10**6])
    parser.add_argument("--d", type=int, nargs="+", default=[2, 16, 128])
    parser.add_argument("--epsilon", type=float, nargs="+", default=[0.1, 0.5, 1, 2, 8])
    parser.add_argument("--delta", type=float, default=1e-6)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5, help="releases averaged per cell")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-projection", dest="projection", action="store_false")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
