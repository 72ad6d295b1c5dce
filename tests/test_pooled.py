import math

import pytest
import torch

from gramfed.workers.kernels.base import Kernel
from gramfed.workers.kernels.gsmp import GSMPGrid, GSMPKernel
from gramfed.workers.kernels.matern import MaternKernel
from gramfed.workers.kernels.rbf import RBFARDKernel
from gramfed.workers.kernels.spectral_mixture import SpectralMixtureKernel
from gramfed.workers.pooled import (
    KernelOperator,
    PivotedCholesky,
    PooledGP,
    PooledOptions,
    TiledKernel,
    lanczos_log_quadrature,
    pcg,
)
from gramfed.workers.posterior import gp_posterior

CPU = torch.device("cpu")


def kernels(dims: int) -> dict[str, Kernel]:
    grid = GSMPGrid.default(dims, per_dim=3, scale=0.3)
    weights = torch.linspace(0.1, 1.0, grid.num_components, dtype=torch.float64)
    return {
        "rbf": RBFARDKernel(torch.linspace(0.6, 1.2, dims)),
        "matern": MaternKernel(2.5, 0.8),
        "gsmp": GSMPKernel(grid, weights),
        "sm": SpectralMixtureKernel(
            [0.5, 1.0], torch.rand(2, dims, dtype=torch.float64), torch.full((2, dims), 0.4)
        ),
    }


def regression(n: int, dims: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, dims, generator=gen, dtype=torch.float64)
    y = torch.sin(3 * x[:, 0]) + x[:, 1] ** 2
    return x, y + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)


def dense(kernel: Kernel, x: torch.Tensor, s2: float) -> torch.Tensor:
    k = kernel(x, x)
    k.diagonal().add_(s2)
    return k


@pytest.mark.parametrize("name", ["rbf", "matern", "gsmp", "sm"])
def test_operator_products_equal_the_dense_matrix(name: str) -> None:
    kernel = kernels(3)[name]
    x, _ = regression(203, 3)
    v = torch.randn(203, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    options = PooledOptions(tile_rows=37, tile_cols=50, min_tile_rows=1, device="cpu")
    op = KernelOperator(kernel, x, 0.1, options)
    torch.testing.assert_close(op.matmul(v), dense(kernel, x, 0.1) @ v)
    x_test = torch.rand(11, 3, dtype=torch.float64)
    torch.testing.assert_close(op.cross_matmul(x_test, v), kernel(x_test, x) @ v)
    torch.testing.assert_close(op.cross(x_test), kernel(x, x_test))


def test_float32_tiles_accumulate_in_float64() -> None:
    kernel = kernels(2)["rbf"]
    x, _ = regression(150, 2)
    v = torch.randn(150, 2, dtype=torch.float64)
    op = KernelOperator(kernel, x, 0.1, PooledOptions(tile_rows=40, dtype=torch.float32))
    out = op.matmul(v)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, dense(kernel, x, 0.1) @ v, rtol=1e-5, atol=1e-5)


def test_float32_tiles_take_float64_inputs() -> None:
    kernel = kernels(2)["rbf"]
    x, _ = regression(90, 2)
    tiles = TiledKernel(kernel, PooledOptions(tile_rows=32, dtype=torch.float32), CPU)
    v = torch.randn(90, 3, dtype=torch.float64)
    torch.testing.assert_close(
        tiles.matmul(x[:20], x, v), kernel(x[:20], x) @ v, rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(tiles.evaluate(x, x[:7]), kernel(x, x[:7]), rtol=1e-6, atol=1e-6)


def test_pcg_solves_many_right_hand_sides_and_the_preconditioner_helps() -> None:
    kernel = kernels(2)["rbf"]
    x, _ = regression(300, 2)
    k_hat = dense(kernel, x, 0.01)
    rhs = torch.randn(300, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    tiles = TiledKernel(kernel, PooledOptions(), CPU)
    products = {}
    for rank in (0, 40):
        precond = PivotedCholesky.build(tiles, x, 0.01, rank)
        result = pcg(lambda v: k_hat @ v, rhs, precond.solve, tol=1e-10, max_iter=500)
        assert result.converged
        torch.testing.assert_close(result.solution, torch.linalg.solve(k_hat, rhs))
        products[rank] = result.products
    assert products[40] < products[0] / 2


def test_pcg_reports_a_column_that_did_not_converge() -> None:
    kernel = kernels(2)["rbf"]
    x, _ = regression(100, 2)
    k_hat = dense(kernel, x, 1e-3)
    b = torch.randn(100, 2, dtype=torch.float64)
    result = pcg(lambda v: k_hat @ v, b, lambda r: r, tol=1e-10, max_iter=3)
    assert result.products == 3 and not result.converged
    assert bool((result.relative_residual > 1e-10).all())


def test_lanczos_quadrature_from_cg_coefficients_is_exact_when_run_to_the_end() -> None:
    # Run to full length, the Gauss quadrature of log on T equals the bilinear form exactly.
    gen = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(25, 25, generator=gen, dtype=torch.float64))
    matrix = basis @ torch.diag(torch.linspace(0.5, 20.0, 25, dtype=torch.float64)) @ basis.T
    b = torch.randn(25, 3, generator=gen, dtype=torch.float64)
    result = pcg(lambda v: matrix @ v, b, lambda r: r, tol=1e-13, max_iter=200)
    eigenvalues, vectors = torch.linalg.eigh(matrix)
    log_matrix = vectors @ torch.diag(eigenvalues.log()) @ vectors.T
    expected = (b * (log_matrix @ b)).sum(0)
    estimate = result.initial_norms * lanczos_log_quadrature(result)
    torch.testing.assert_close(estimate, expected, rtol=1e-8, atol=1e-8)


def test_preconditioner_log_det_solve_and_samples() -> None:
    kernel = kernels(2)["matern"]
    x, _ = regression(120, 2)
    precond = PivotedCholesky.build(TiledKernel(kernel, PooledOptions(), CPU), x, 0.05, 15)
    p = precond.factor @ precond.factor.T + 0.05 * torch.eye(120, dtype=torch.float64)
    assert precond.rank == 15
    assert math.isclose(precond.logdet(), float(torch.linalg.slogdet(p)[1]), rel_tol=1e-10)
    r = torch.randn(120, 2, dtype=torch.float64)
    torch.testing.assert_close(precond.solve(r), torch.linalg.solve(p, r))
    samples = precond.sample(20_000, torch.Generator().manual_seed(4))
    torch.testing.assert_close(samples @ samples.T / 20_000, p, atol=0.06, rtol=0.0)


@pytest.mark.parametrize(("name", "rank"), [("rbf", 60), ("gsmp", 150)])
def test_pooled_gp_matches_the_dense_cholesky_posterior(name: str, rank: int) -> None:
    kernel = kernels(3)[name]
    x, y = regression(400, 3)
    x_test = torch.rand(30, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    options = PooledOptions(
        tile_rows=128, tile_cols=160, cg_tol=1e-10, precond_rank=rank, probes=32, variance_batch=12
    )
    gp = PooledGP(kernel, x, y, 0.05, options)
    fit = gp.fit()
    prediction = gp.predict(x_test)
    expected = gp_posterior(kernel, x, y, 0.05, x_test)
    torch.testing.assert_close(prediction.mean, expected.mean, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(prediction.variance, expected.variance, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gp.predict_mean(x_test), expected.mean, rtol=1e-7, atol=1e-9)

    k_hat = dense(kernel, x, 0.05)
    chol = torch.linalg.cholesky(k_hat)
    data_fit = float(y @ torch.cholesky_solve(y[:, None], chol)[:, 0])
    log_det = 2.0 * float(chol.diagonal().log().sum())
    assert fit.converged and fit.relative_residual <= 1e-10
    assert math.isclose(fit.data_fit, data_fit, rel_tol=1e-8)
    # The log det is a stochastic estimate: within 4 of its reported standard errors.
    assert abs(fit.log_det - log_det) <= 4 * fit.log_det_stderr
    exact = -0.5 * (data_fit + log_det + 400 * math.log(2 * math.pi))
    assert abs(fit.log_marginal_likelihood - exact) <= 2 * fit.log_det_stderr + 1e-6


def test_fit_warns_when_cg_stops_early() -> None:
    x, y = regression(150, 2)
    gp = PooledGP(kernels(2)["rbf"], x, y, 1e-4, PooledOptions(max_iter=2, precond_rank=0))
    with pytest.warns(RuntimeWarning, match="CG stopped after 2 products"):
        fit = gp.fit()
    assert not fit.converged


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_rows": 0}, "tile_rows must be >= 1"),
        ({"probes": 0}, "probes must be >= 1"),
        ({"cg_tol": 0.0}, "cg_tol must be in"),
        ({"cg_tol": 2.0}, "cg_tol must be in"),
        ({"precond_rank": -1}, "precond_rank must be >= 0"),
        ({"variance_batch": 0}, "variance_batch must be >= 1"),
        ({"tile_rows": 4, "min_tile_rows": 8}, "must not exceed tile_rows"),
        ({"dtype": torch.int64}, "dtype must be"),
    ],
)
def test_bad_options_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PooledOptions(**kwargs)


def test_bad_inputs_are_refused() -> None:
    kernel = kernels(2)["rbf"]
    x, y = regression(20, 2)
    with pytest.raises(ValueError, match="targets must be"):
        PooledGP(kernel, x, y[:-1], 0.1)
    with pytest.raises(ValueError, match="training inputs must be"):
        PooledGP(kernel, x[:, 0], y, 0.1)
    with pytest.raises(ValueError, match="noise_variance must be"):
        PooledGP(kernel, x, y, 0.0)
    bad = x.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match="must be finite"):
        PooledGP(kernel, bad, y, 0.1)
    gp = PooledGP(kernel, x, y, 0.1)
    with pytest.raises(RuntimeError, match="fit"):
        gp.predict_mean(x)
    gp.fit()
    with pytest.raises(ValueError, match="test inputs must be"):
        gp.predict(torch.rand(4, 3, dtype=torch.float64))
