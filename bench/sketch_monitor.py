"""Monitoring against a private reference sketch: false-alarm rate and detection power.

    .venv/bin/python bench/sketch_monitor.py [--n 100000] [--batch 500] [--trials 200]
        [--references 3]

Each of ``--references`` references (n fresh points, standard normal in d = 8) is released as
an RFF sketch at (epsilon, delta) through the gate. Then ``--trials`` fresh batches per
reference are checked for each scenario: the same distribution (false alarms; nominal level
5%), mean shifts of several sizes along one axis, and a scale change. Several references make
the rate the one the test promises (over the reference's sampling and noise too, not for one
lucky or unlucky release). Rates come with a 95% Wilson interval. Prints Markdown.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from sketch_error import POOL, scratch_gate

from gramfed.platform.sketch_release import release_sketch
from gramfed.privacy.accountant import rho_for_epsilon
from gramfed.workers.sketch.accumulate import accumulate
from gramfed.workers.sketch.mmd import monitor
from gramfed.workers.sketch.spec import SketchSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--epsilon", type=float, nargs="+", default=[1.0])
    parser.add_argument("--level", type=float, default=0.05)
    parser.add_argument("--references", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    d = args.d
    spec = SketchSpec("gaussian", d, seed=5, bandwidth=float(np.sqrt(d)), features=args.features)
    scenarios = {
        "same distribution": lambda z: z,
        "mean shift 0.1": lambda z: z + np.eye(d)[0] * 0.1,
        "mean shift 0.25": lambda z: z + np.eye(d)[0] * 0.25,
        "mean shift 0.5": lambda z: z + np.eye(d)[0] * 0.5,
        "scale x1.2": lambda z: z * 1.2,
    }
    checks = args.references * args.trials
    print(
        f"| epsilon | scenario | alarm rate ({args.references} references x {args.trials}"
        f" batches of {args.batch}) | 95% interval |"
    )
    print("|---|---|---|---|")
    with scratch_gate() as gate:
        for eps in args.epsilon:
            sketches = []
            for _ in range(args.references):
                sums = accumulate(spec, rng.standard_normal((args.n, d)))
                _, sketch = release_sketch(
                    gate,
                    POOL,
                    spec,
                    lambda s=sums: s,
                    rho=rho_for_epsilon(eps, 1e-6),
                    requester="bench",
                )
                sketches.append(sketch)
            for name, change in scenarios.items():
                alarms = sum(
                    monitor(
                        sketch,
                        change(rng.standard_normal((args.batch, d))),
                        level=args.level,
                        seed=t,
                    ).alarm
                    for sketch in sketches
                    for t in range(args.trials)
                )
                low, high = wilson(alarms, checks)
                print(
                    f"| {eps:g} | {name} | {alarms / checks:.3f} | [{low:.3f}, {high:.3f}] |",
                    flush=True,
                )


def wilson(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion."""
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials**2)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


if __name__ == "__main__":
    main()
