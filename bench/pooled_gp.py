"""Pooled exact GP at scale on Ray: n = 100,000 synthetic points, d = 8, 2 workers.

    .venv/bin/python bench/pooled_gp.py [--n 100000] [--workers 2] [--subsample 3000]
        [--test 256] [--tile-rows 1024] [--tile-cols 4096] [--rank 300] [--probes 16]
        [--cg-tol 1e-6] [--dtype float64|float32] [--address ADDR] [--num-cpus C]
        [--out bench/out/pooled.jsonl]

Inputs uniform on [0, 1]^8, targets ``sin(3 x0) + x1^2 - cos(2 x2) / 2`` plus Gaussian noise
(``--noise`` variance); an RBF-ARD kernel with unit lengthscales and the true noise variance.
The pooled GP runs on ``--workers`` Ray actors (one GPU each when the cluster has them), never
forming the n x n matrix. Reported, as one JSON object on stdout and a table on stderr:

- fit time (preconditioner + batched PCG for y and the log-det probes), CG products, log
  marginal likelihood with the standard error of its stochastic log det;
- prediction time for ``--test`` points (means and variances), their MSE against the noise-free
  signal;
- peak memory per worker (process high-water mark on CPU, torch allocator peak on CUDA), the
  part above its ready state, and the tile size that bounds it;
- two checks against dense linear algebra: (1) the residual ``|y_S - (K + s2 I)[S, :] a|/|y_S|``
  on ``--subsample`` random rows S of the full-n solution a; (2) the same distributed solver on
  a random subsample of ``--subsample`` points beside a dense Cholesky solve of it (relative
  error of the predictive means and variances, and of the log marginal likelihood).

``--n 5000 --subsample 1000`` runs in a few minutes on a laptop; n = 100,000 with ``--rank 1000
--dtype float32`` in about 5 minutes on two CPU cores (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import ray
import torch
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from gramfed.platform.runtime.pooled import PooledRun, run_pooled
from gramfed.workers.device import resolve_device
from gramfed.workers.kernels.rbf import RBFARDKernel
from gramfed.workers.pooled import PooledOptions, TiledKernel
from gramfed.workers.posterior import gp_posterior

console = Console(stderr=True)


def signal(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(3 * x[:, 0]) + x[:, 1] ** 2 - 0.5 * torch.cos(2 * x[:, 2])


def pooled_with_progress(label: str, *args: object, **kwargs: object) -> PooledRun:
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("CG products {task.completed}  residual {task.fields[residual]:.1e}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(label, total=None, residual=1.0)

        def on_iteration(products: int, residual: float) -> None:
            progress.update(task, completed=products, residual=residual)

        return run_pooled(*args, on_iteration=on_iteration, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--test", type=int, default=256)
    parser.add_argument("--subsample", type=int, default=3000)
    parser.add_argument("--tile-rows", type=int, default=1024)
    parser.add_argument("--tile-cols", type=int, default=4096)
    parser.add_argument("--rank", type=int, default=300)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--cg-tol", type=float, default=1e-6)
    parser.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of the Gram tiles (CG vectors and sums stay float64)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.subsample > args.n:
        raise SystemExit(f"error: --subsample {args.subsample} exceeds --n {args.n}")

    gen = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.n, args.d, generator=gen, dtype=torch.float64)
    y = signal(x) + math.sqrt(args.noise) * torch.randn(args.n, generator=gen, dtype=torch.float64)
    x_test = torch.rand(args.test, args.d, generator=gen, dtype=torch.float64)
    kernel = RBFARDKernel(torch.ones(args.d, dtype=torch.float64))
    options = PooledOptions(
        tile_rows=args.tile_rows,
        tile_cols=args.tile_cols,
        cg_tol=args.cg_tol,
        precond_rank=args.rank,
        probes=args.probes,
        device=args.device,
        seed=args.seed,
        dtype=getattr(torch, args.dtype),
    )
    if args.address is not None:
        ray.init(address=args.address, logging_level="warning")
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level="warning")

    full = pooled_with_progress(
        f"pooled GP, n = {args.n}",
        kernel,
        x,
        y,
        args.noise,
        x_test,
        options=options,
        workers=args.workers,
    )
    assert full.prediction is not None
    test_mse = float((full.prediction.mean - signal(x_test)).square().mean())

    # Check 1: residual of the full-n solution on random rows, by a dense row block.
    with console.status("residual check on a random row subsample"):
        rows = torch.randperm(args.n, generator=gen)[: args.subsample]
        device = resolve_device(args.device)
        weights = full.weights.cpu()
        # In float64 whatever the solver's tiles: the check must not share their rounding.
        tiles = TiledKernel(kernel, replace(options, dtype=torch.float64), device)
        product = tiles.matmul(x[rows].to(device), x.to(device), weights[:, None].to(device))[:, 0]
        product = product.cpu() + args.noise * weights[rows]
        residual = float((y[rows] - product).norm() / y[rows].norm())

    # Check 2: the same solver on a random subsample beside a dense Cholesky solve.
    sub = torch.randperm(args.n, generator=gen)[: args.subsample]
    small = pooled_with_progress(
        f"pooled GP, subsample of {args.subsample}",
        kernel,
        x[sub],
        y[sub],
        args.noise,
        x_test,
        options=options,
        workers=args.workers,
    )
    with console.status("dense Cholesky solve of the subsample"):
        dense = gp_posterior(kernel, x[sub], y[sub], args.noise, x_test)
        k_hat = kernel(x[sub], x[sub])
        k_hat.diagonal().add_(args.noise)
        chol = torch.linalg.cholesky(k_hat)
        fit_term = float(y[sub] @ torch.cholesky_solve(y[sub][:, None], chol)[:, 0])
        log_det = 2.0 * float(chol.diagonal().log().sum())
        dense_lml = -0.5 * (fit_term + log_det + args.subsample * math.log(2 * math.pi))
    assert small.prediction is not None

    row = {
        "n": args.n,
        "d": args.d,
        "workers": args.workers,
        "devices": sorted({w.device for w in full.workers}),
        "tile": [args.tile_rows, args.tile_cols],
        "precond_rank": full.fit.preconditioner_rank,
        "probes": args.probes,
        "cg_tol": args.cg_tol,
        "tile_dtype": args.dtype,
        "fit_seconds": full.fit_seconds,
        "predict_seconds": full.predict_seconds,
        "test_points": args.test,
        "cg_products": full.fit.cg_products,
        "converged": full.fit.converged,
        "log_marginal_likelihood": full.fit.log_marginal_likelihood,
        "log_det_stderr": full.fit.log_det_stderr,
        "test_mse_vs_signal": test_mse,
        "worker_peak_bytes": [w.peak_bytes for w in full.workers],
        "worker_working_bytes": [w.working_bytes for w in full.workers],
        "worker_tile_rows": [w.tile_rows for w in full.workers],
        "tile_bytes": full.workers[0].tile_bytes,
        "dense_matrix_bytes": args.n * args.n * 8,
        "residual_check_rows": args.subsample,
        "residual_check": residual,
        "subsample": args.subsample,
        "subsample_mean_rel_error": float(
            (small.prediction.mean - dense.mean).norm() / dense.mean.norm()
        ),
        "subsample_variance_max_rel_error": float(
            ((small.prediction.variance - dense.variance) / dense.variance).abs().max()
        ),
        "subsample_lml": small.fit.log_marginal_likelihood,
        "subsample_dense_lml": dense_lml,
        "subsample_lml_per_point_error": abs(small.fit.log_marginal_likelihood - dense_lml)
        / args.subsample,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ray": ray.__version__,
    }
    ray.shutdown()
    print(json.dumps(row), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
    table = Table(title=f"Pooled GP on Ray, n = {args.n}, d = {args.d}", show_header=False)
    for key, value in row.items():
        table.add_row(key, _fmt(value))
    console.print(table)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


if __name__ == "__main__":
    main()
