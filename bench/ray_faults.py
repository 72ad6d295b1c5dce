"""Fault acceptance: kill an agent's worker (SIGKILL) mid-fit, N times; report passes of N.

Each trial fits GSMP on the shipped ale80 set with two agents on Ray actors, kills agent
1's worker process at round ``--kill-round``, and checks that the fit finishes, that exactly one
agent was rebuilt, and that the weights equal those of the undisturbed in-process fit (atol
1e-9). Run: ``python bench/ray_faults.py --trials 10``; exit 0 only if every trial passes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np
import ray
from rich.progress import Progress

from gramfed.platform.datasets import load_slimkl
from gramfed.platform.runtime.transport import RayTransport
from gramfed.workers.admm import RoundRecord
from gramfed.workers.estimator import AgentRecipe, GSMPRegressor, Shard


def trial(
    x: np.ndarray, y: np.ndarray, reference: np.ndarray, params: dict, kill_round: int
) -> dict:
    holder: list[RayTransport] = []

    def factory(recipe: AgentRecipe, shards: list[Shard]) -> RayTransport:
        holder.append(RayTransport(recipe, shards))
        return holder[0]

    def kill(record: RoundRecord) -> None:
        if record.round == kill_round:
            os.kill(holder[0].pids()[1], signal.SIGKILL)

    started = time.perf_counter()
    model = GSMPRegressor(**params).fit(x, y, on_round=kill, transport_factory=factory)
    gap = float(np.abs(model.weights_ - reference).max())
    holder[0].close()
    return {
        "seconds": time.perf_counter() - started,
        "recoveries": holder[0].recoveries,
        "max_weight_gap": gap,
        "passed": holder[0].recoveries == 1 and gap <= 1e-9,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--kill-round", type=int, default=3)
    parser.add_argument("--bits", type=int, default=8)
    args = parser.parse_args()
    split = load_slimkl("ale80")
    x, y = split.x_train, split.y_train
    params = {"agents": 2, "components_per_dim": 20, "admm_max_iter": 12, "bits": args.bits}
    reference = GSMPRegressor(**params).fit(x, y).weights_
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    rows = []
    try:
        with Progress() as progress:
            task = progress.add_task("kill-and-recover trials", total=args.trials)
            for _ in range(args.trials):
                rows.append(trial(x, y, reference, params, args.kill_round))
                progress.advance(task)
    finally:
        ray.shutdown()
    passed = sum(r["passed"] for r in rows)
    report = {
        "trials": args.trials,
        "passed": passed,
        "kill_round": args.kill_round,
        "bits": args.bits,
        "max_weight_gap": max(r["max_weight_gap"] for r in rows),
        "median_fit_seconds": float(np.median([r["seconds"] for r in rows])),
    }
    print(json.dumps(report))
    print(f"{passed}/{args.trials} fits survived a killed worker with unchanged weights")
    return 0 if passed == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
