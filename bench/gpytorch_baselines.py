"""Exact-GP baselines with GPyTorch on the SLIM-KL datasets.

    .venv/bin/python bench/gpytorch_baselines.py [--dataset NAME ...] [--model NAME ...]
        [--device cpu|cuda[:N]] [--max-seconds S] [--out bench/out/gpytorch_cpu.jsonl]

Prints one JSON object per (dataset, model) run on stdout, appends it to ``--out`` when
given, and shows progress and a summary table on stderr. Needs the ``bench`` extra
(``pip install -e '.[bench]'``).

Models, trained as GPyTorch's regression tutorials do (ExactGP, ConstantMean,
GaussianLikelihood, Adam on all parameters with lr = 0.1, exact marginal log likelihood):

- ``gpytorch_rbf_ard``: ScaleKernel(RBFKernel(ard_num_dims=P)).
- ``gpytorch_sm``: SpectralMixtureKernel(num_mixtures=4, ard_num_dims=P), initialised with
  ``initialize_from_data(train_x, train_y)`` (seeded), as in the spectral-mixture tutorial.

Both get 100 Adam iterations, the spectral-mixture tutorial's count; the simple-regression
tutorial uses 50 on 100 synthetic points, which is short for the multi-dimensional sets here.

Scored on the split the authors scored theirs on (``slimkl_authors_split``), the one
``gramfed bench slimkl`` uses, so the rows sit beside ours and the reference.

Preprocessing (``--preprocessing``): ``standardised`` (default) maps each input column to
[-1, 1] with the training minimum and maximum, the transform of GPyTorch's UCI examples, and
z-scores y with the training mean and standard deviation, because ConstantMean starts at 0
and Adam at lr = 0.1 cannot reach targets in the hundreds within 100 steps. ``raw`` fits the
data as stored. Either way test MSE and NLPD are computed on the original scale of y, and the
NLPD includes the learned noise variance.

Numerics: float64. Training sets up to ``--max-cholesky-size`` (default 2000: every set but
cccp9500) are factorised by Cholesky, so the runs are deterministic; above it GPyTorch's
own large-n path (preconditioned conjugate gradients with stochastic Lanczos log-determinants,
still an exact GP) is used, the one its default of 800 would select. For cccp9500 on 2 CPU
cores one Adam step took about 11 s on that path and about 63 s by Cholesky, so 100 steps
need about 18 min: ``--max-seconds`` stops training at the first iteration boundary past the
cap and the row records the iterations actually done (``stopped_early``).

GPyTorch's SpectralMixtureKernel materialises (mixtures x n x n x P) tensors; about ten of
them are alive at the peak of a training step (measured 8-10 on cccp1000, concrete824,
water800 and wine1279). A run whose estimate exceeds the free memory of the device is not
attempted and is recorded with an ``error`` and null metrics (cccp9500: 11.5 GB per tensor).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gramfed.platform.datasets import (
    SLIMKL_DATASETS,
    TrainTestSplit,
    slimkl_authors_split,
    slimkl_reference,
)

try:
    import gpytorch
    from linear_operator.utils.errors import NanError, NotPSDError
except ImportError as exc:
    raise SystemExit(
        "gpytorch is not installed; install the bench extra: pip install -e '.[bench]'"
    ) from exc

MODELS: tuple[str, ...] = ("gpytorch_rbf_ard", "gpytorch_sm")
ITERATIONS = 100
LEARNING_RATE = 0.1
SM_MIXTURES = 4
MAX_CHOLESKY_SIZE = 2000
SM_PEAK_TENSORS = 10
THREADS = 2

Preprocessing = Literal["standardised", "raw"]
IterationHook = Callable[[int, int], None]
NUMERICAL_ERRORS: tuple[type[BaseException], ...] = (
    NotPSDError,
    NanError,
    torch.linalg.LinAlgError,
    FloatingPointError,
)


@dataclass(frozen=True)
class RunOptions:
    device: torch.device
    iterations: int = ITERATIONS
    sm_mixtures: int = SM_MIXTURES
    max_cholesky_size: int = MAX_CHOLESKY_SIZE
    max_seconds: float | None = None
    preprocessing: Preprocessing = "standardised"
    seed: int = 0


@dataclass(frozen=True)
class Prepared:
    """Model-scale data; original y = model-scale y * y_scale + y_shift."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_shift: float
    y_scale: float


def prepare(split: TrainTestSplit, mode: Preprocessing) -> Prepared:
    if mode == "raw":
        return Prepared(split.x_train, split.y_train, split.x_test, 0.0, 1.0)
    lo, hi = split.x_train.min(axis=0), split.x_train.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)  # a constant column stays constant instead of NaN

    def scale_x(x: np.ndarray) -> np.ndarray:
        return 2.0 * (x - lo) / span - 1.0

    y_mean, y_std = float(split.y_train.mean()), float(split.y_train.std())
    y_std = y_std if y_std > 0 else 1.0
    return Prepared(
        scale_x(split.x_train),
        (split.y_train - y_mean) / y_std,
        scale_x(split.x_test),
        y_mean,
        y_std,
    )


class ExactGPModel(gpytorch.models.ExactGP):
    def __init__(
        self,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        likelihood: gpytorch.likelihoods.GaussianLikelihood,
        covar_module: gpytorch.kernels.Kernel,
    ) -> None:
        super().__init__(train_x, train_y, likelihood)
        self.mean_module = gpytorch.means.ConstantMean()
        self.covar_module = covar_module

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


def make_kernel(
    model: str, train_x: torch.Tensor, train_y: torch.Tensor, mixtures: int
) -> gpytorch.kernels.Kernel:
    dims = train_x.shape[-1]
    if model == "gpytorch_rbf_ard":
        return gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=dims))
    sm = gpytorch.kernels.SpectralMixtureKernel(num_mixtures=mixtures, ard_num_dims=dims)
    sm.initialize_from_data(train_x, train_y)
    return sm


def free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def memory_refusal(model: str, n: int, dims: int, options: RunOptions) -> str | None:
    """Why a spectral-mixture run cannot fit in free memory, or None if it may."""
    if model != "gpytorch_sm":
        return None
    one = 8 * options.sm_mixtures * n * n * dims
    free = free_bytes(options.device)
    if free is None or SM_PEAK_TENSORS * one <= free:
        return None
    return (
        f"not attempted, out of memory: the spectral-mixture kernel holds about "
        f"{SM_PEAK_TENSORS} float64 tensors of {options.sm_mixtures}x{n}x{n}x{dims} "
        f"({one / 2**30:.1f} GiB each), {free / 2**30:.1f} GiB free on {options.device}"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Fitted:
    mean: np.ndarray
    variance: np.ndarray
    iterations: int
    fit_seconds: float
    predict_seconds: float
    final_loss: float


def fit_predict(
    data: Prepared, model_name: str, options: RunOptions, on_iteration: IterationHook | None
) -> Fitted:
    """Train on model-scale data, then predict the test set (noise included, model scale)."""
    torch.manual_seed(options.seed)  # initialize_from_data draws the SM starting point
    as_t: dict[str, Any] = {"dtype": torch.float64, "device": options.device}
    train_x = torch.as_tensor(data.x_train, **as_t)
    train_y = torch.as_tensor(data.y_train, **as_t)
    test_x = torch.as_tensor(data.x_test, **as_t)
    kernel = make_kernel(model_name, train_x, train_y, options.sm_mixtures)
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    model = ExactGPModel(train_x, train_y, likelihood, kernel).to(**as_t)

    model.train()
    # The model's parameters include the likelihood's noise, as in the tutorials.
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)
    done, loss_value = 0, math.nan
    sync(options.device)
    start = time.perf_counter()
    while done < options.iterations:
        optimizer.zero_grad()
        loss = -mll(model(train_x), train_y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"non-finite loss at iteration {done + 1}")
        loss.backward()
        optimizer.step()
        done += 1
        if on_iteration is not None:
            on_iteration(done, options.iterations)
        if options.max_seconds is not None and time.perf_counter() - start >= options.max_seconds:
            break
    sync(options.device)
    fit_seconds = time.perf_counter() - start

    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        predictive = likelihood(model(test_x))
        mean, variance = predictive.mean, predictive.variance
    sync(options.device)
    predict_seconds = time.perf_counter() - start
    mean_np, var_np = mean.cpu().numpy(), variance.cpu().numpy()
    if not (np.isfinite(mean_np).all() and np.isfinite(var_np).all() and (var_np > 0).all()):
        raise FloatingPointError("non-finite or non-positive predictive mean or variance")
    return Fitted(mean_np, var_np, done, fit_seconds, predict_seconds, loss_value)


def run_baseline(
    split: TrainTestSplit,
    model_name: str,
    options: RunOptions,
    on_iteration: IterationHook | None = None,
) -> dict[str, Any]:
    """Fit one baseline on ``split`` and score it on the test set, as one JSON-ready row.

    Numerical failures and memory refusals are recorded in ``error`` with null metrics.
    """
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose from {', '.join(MODELS)}")
    n_train, dims = split.x_train.shape
    reference = slimkl_reference(split.name)
    row: dict[str, Any] = {
        "dataset": split.name,
        "model": model_name,
        "device": str(options.device),
        "n_train": n_train,
        "n_test": int(split.x_test.shape[0]),
        "test_mse": None,
        "nlpd": None,
        "fit_seconds": None,
        "iterations": 0,
        "iterations_planned": options.iterations,
        "stopped_early": False,
        "predict_seconds": None,
        "final_loss": None,
        "num_mixtures": options.sm_mixtures if model_name == "gpytorch_sm" else None,
        "preprocessing": options.preprocessing,
        "solver": "cholesky" if n_train <= options.max_cholesky_size else "cg",
        "dtype": "float64",
        "threads": torch.get_num_threads(),
        "seed": options.seed,
        "reference_test_mse": reference.test_mse if reference else None,
        "warnings": [],
        "error": None,
    }
    refusal = memory_refusal(model_name, n_train, dims, options)
    if refusal is not None:
        row["error"] = refusal
        return row
    data = prepare(split, options.preprocessing)
    fitted: Fitted | None = None
    with (
        warnings.catch_warnings(record=True) as caught,
        gpytorch.settings.max_cholesky_size(options.max_cholesky_size),
    ):
        warnings.simplefilter("always")
        try:
            fitted = fit_predict(data, model_name, options, on_iteration)
        except (torch.OutOfMemoryError, MemoryError) as exc:
            row["error"] = f"out of memory: {type(exc).__name__}: {exc}"
        except NUMERICAL_ERRORS as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
    # Jitter retries and unconverged CG are worth seeing next to the figures.
    row["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    if fitted is None:
        return row
    mean = fitted.mean * data.y_scale + data.y_shift
    var = fitted.variance * data.y_scale**2
    resid = split.y_test - mean
    row.update(
        test_mse=float(np.mean(resid**2)),
        nlpd=float(np.mean(0.5 * np.log(2.0 * math.pi * var) + resid**2 / (2.0 * var))),
        fit_seconds=fitted.fit_seconds,
        iterations=fitted.iterations,
        stopped_early=fitted.iterations < options.iterations,
        predict_seconds=fitted.predict_seconds,
        final_loss=fitted.final_loss,
    )
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def results_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="GPyTorch exact-GP baselines (SLIM-KL)")
    for col in ("dataset", "model", "test MSE", "reference MSE", "NLPD", "fit s", "iters"):
        table.add_column(col, justify="left" if col in ("dataset", "model") else "right")
    table.add_column("error")
    for r in rows:
        table.add_row(
            r["dataset"],
            r["model"],
            _fmt(r["test_mse"], ".4g"),
            _fmt(r["reference_test_mse"], ".4g"),
            _fmt(r["nlpd"], ".4g"),
            _fmt(r["fit_seconds"], ".1f"),
            f"{r['iterations']}/{r['iterations_planned']}",
            r["error"] or "",
        )
    return table


def parse_device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device: not a torch device: {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device: CUDA was requested but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device: only cpu and cuda are supported, got {name!r}")
    return device


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dataset",
        action="append",
        choices=SLIMKL_DATASETS,
        metavar="NAME",
        help="repeatable; default: all 16 SLIM-KL datasets",
    )
    parser.add_argument(
        "--model", action="append", choices=MODELS, help="repeatable; default: both"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--sm-mixtures", type=int, default=SM_MIXTURES)
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="stop training at the first iteration boundary past this many seconds",
    )
    parser.add_argument(
        "--max-cholesky-size",
        type=int,
        default=MAX_CHOLESKY_SIZE,
        help="largest training set factorised by Cholesky; larger ones use GPyTorch's CG path",
    )
    parser.add_argument("--preprocessing", choices=("standardised", "raw"), default="standardised")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.sm_mixtures < 1 or args.threads < 1:
        parser.error("--iterations, --sm-mixtures and --threads must be >= 1")
    if args.max_seconds is not None and args.max_seconds <= 0:
        parser.error("--max-seconds must be > 0")

    torch.set_num_threads(args.threads)
    options = RunOptions(
        device=parse_device(parser, args.device),
        iterations=args.iterations,
        sm_mixtures=args.sm_mixtures,
        max_cholesky_size=args.max_cholesky_size,
        max_seconds=args.max_seconds,
        preprocessing=args.preprocessing,
        seed=args.seed,
    )
    datasets = args.dataset or list(SLIMKL_DATASETS)
    models = args.model or list(MODELS)
    # A fixed width keeps the summary table readable when stderr goes to a log file.
    err = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        runs = progress.add_task("runs", total=len(datasets) * len(models))
        iters = progress.add_task("iterations", total=options.iterations)

        def on_iteration(done: int, total: int) -> None:
            progress.update(iters, completed=done, total=total)

        for name in datasets:
            split = slimkl_authors_split(name)
            for model_name in models:
                progress.update(iters, description=f"{name} {model_name}", completed=0)
                row = run_baseline(split, model_name, options, on_iteration)
                rows.append(row)
                line = json.dumps(row)
                print(line, flush=True)
                if args.out is not None:
                    with args.out.open("a") as sink:
                        sink.write(line + "\n")
                progress.advance(runs)
    err.print(results_table(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
