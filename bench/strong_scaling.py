"""Strong scaling of a GSMP fit on Ray: the same J-agent fit on 1 worker, then on 2.

    .venv/bin/python bench/strong_scaling.py [--dataset cccp9500] [--agents 4]
        [--workers 1 --workers 2] [--components-per-dim Q] [--admm-max-iter N]
        [--out bench/out/strong_scaling.jsonl]

"Workers" are CPU cores here (GPUs on a GPU machine): for each count W, this process pins
itself to W cores (``os.sched_setaffinity``, inherited by the Ray processes it starts), starts a
local Ray with ``num_cpus = W`` and runs the fit with its J agents on Ray actors, exactly as
``gramfed run`` places them. The fits must agree: the largest difference of the consensus
weights and of the test predictions between worker counts is reported next to the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import ray
import torch
from rich.console import Console
from rich.table import Table

from gramfed.platform.datasets import SLIMKL_DATASETS, load_slimkl
from gramfed.platform.runtime.transport import RayTransport
from gramfed.workers.estimator import GSMPRegressor
from gramfed.workers.posterior import mse

console = Console(stderr=True)


def fit_on(cores: set[int], args: argparse.Namespace) -> dict:
    os.sched_setaffinity(0, cores)
    ray.init(num_cpus=len(cores), include_dashboard=False, logging_level="warning")
    try:
        split = load_slimkl(args.dataset)
        model = GSMPRegressor(
            agents=args.agents,
            components_per_dim=args.components_per_dim,
            admm_max_iter=args.admm_max_iter,
            device="cpu",
        )
        started = time.perf_counter()
        with console.status(f"{args.dataset}: J = {args.agents} on {len(cores)} worker(s)"):
            model.fit(split.x_train, split.y_train, transport_factory=RayTransport)
        wall = time.perf_counter() - started
        prediction = model.predict_distribution(split.x_test)
        return {
            "dataset": args.dataset,
            "agents": args.agents,
            "workers": len(cores),
            "components": model.grid_.num_components,
            "admm_rounds": len(model.admm_result_.rounds),
            "fit_seconds": model.fit_seconds_,
            "wall_seconds": wall,
            "test_mse": mse(prediction, torch.from_numpy(split.y_test)),
            "weights": model.weights_.tolist(),
            "mean": prediction.mean.tolist(),
        }
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="cccp9500", choices=SLIMKL_DATASETS)
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--workers", type=int, action="append")
    parser.add_argument("--components-per-dim", type=int, default=None)
    parser.add_argument("--admm-max-iter", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench/out/strong_scaling.jsonl"))
    args = parser.parse_args()
    available = sorted(os.sched_getaffinity(0))
    counts = args.workers or [1, 2]
    if max(counts) > len(available):
        raise SystemExit(f"error: {max(counts)} workers asked for, {len(available)} cores here")

    runs = [fit_on(set(available[:w]), args) for w in counts]
    base = runs[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table = Table(title=f"Strong scaling: {args.dataset}, J = {args.agents}")
    for column in (
        "workers",
        "components",
        "rounds",
        "fit s",
        "speed-up",
        "test MSE",
        "max |weight diff|",
        "max |mean diff|",
    ):
        table.add_column(column)
    with args.out.open("a") as sink:
        for run in runs:
            weight_diff = float(np.abs(np.subtract(run["weights"], base["weights"])).max())
            mean_diff = float(np.abs(np.subtract(run["mean"], base["mean"])).max())
            row = {
                **{k: v for k, v in run.items() if k not in ("weights", "mean")},
                "speed_up": base["fit_seconds"] / run["fit_seconds"],
                "max_weight_difference": weight_diff,
                "max_mean_difference": mean_diff,
                "date": time.strftime("%Y-%m-%d"),
            }
            sink.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
            table.add_row(
                str(row["workers"]),
                str(row["components"]),
                str(row["admm_rounds"]),
                f"{row['fit_seconds']:.1f}",
                f"{row['speed_up']:.2f}x",
                f"{row['test_mse']:.4g}",
                f"{weight_diff:.1e}",
                f"{mean_diff:.1e}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
