"""One agent's first local solve (ADMM round 1): DSCA from zero weights on a shipped dataset.

    .venv/bin/python bench/local_solve.py [--dataset cccp9500] [--points 4750]
        [--no-mixed-precision] [--device cpu]

The first round dominates large fits (cccp9500: about 540 of 776 s), so this times the
solver's heavy path alone: the Gram blocks in product form, the block interior points and
their factorisations. Prints one JSON object: seconds, DSCA iterations, final objective and
non-zero weights; the objective lets runs with and without mixed precision be compared.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from gramfed.platform.datasets import SLIMKL_DATASETS, slimkl_authors_split
from gramfed.workers.gram import GramOptions, SubKernelGram
from gramfed.workers.kernels.gsmp import GSMPGrid, GSMPKernel
from gramfed.workers.noise import gcv_noise_estimate
from gramfed.workers.sca import ConsensusPenalty, LocalProblem, SCAOptions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cccp9500", choices=SLIMKL_DATASETS)
    parser.add_argument("--points", type=int, default=4750, help="the shard: the first rows")
    parser.add_argument("--no-mixed-precision", dest="mixed", action="store_false")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    split = slimkl_authors_split(args.dataset)
    x = torch.from_numpy(split.x_train[: args.points])
    y = torch.from_numpy(split.y_train[: args.points])
    grid = GSMPGrid.default(x.shape[1])  # the estimator's default grid
    started = time.perf_counter()
    gram = SubKernelGram(GSMPKernel(grid), x, GramOptions(device=args.device))
    options = SCAOptions(mixed_precision=args.mixed)
    problem = LocalProblem(gram, y, gcv_noise_estimate(split.y_train).variance, options)
    built = time.perf_counter()
    penalty = ConsensusPenalty.none(problem.size, gram.device)
    result = problem.solve(torch.zeros(problem.size, dtype=torch.float64), penalty)
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "points": int(x.shape[0]),
                "components": problem.size,
                "mixed_precision": args.mixed,
                "device": str(gram.device),
                "build_seconds": round(built - started, 2),
                "solve_seconds": round(done - built, 2),
                "iterations": result.iterations,
                "objective": result.objective_history[-1],
                "nonzero_weights": int((result.weights > 0).sum()),
            }
        )
    )


if __name__ == "__main__":
    main()
