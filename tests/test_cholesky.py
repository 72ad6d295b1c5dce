import numpy as np
import pytest
import torch

import gramfed.workers.sca as sca
from gramfed.workers.cholesky import cholesky_solve, refined_solve
from gramfed.workers.gram import SubKernelGram
from gramfed.workers.kernels.gsmp import GSMPGrid, GSMPKernel


def _gp_covariance(n: int, noise: float, seed: int = 0) -> torch.Tensor:
    x = torch.rand(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cov = torch.exp(-4.0 * torch.cdist(x, x).square())
    cov.diagonal().add_(noise)
    return cov


def test_cholesky_solve_matches_a_dense_solve_and_carries_gradients() -> None:
    cov = _gp_covariance(60, 0.1)
    gen = torch.Generator().manual_seed(1)
    rhs = torch.randn(60, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    chol = torch.linalg.cholesky(cov)
    ours = cholesky_solve(chol, rhs)
    torch.testing.assert_close(ours, torch.linalg.solve(cov, rhs), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cholesky_solve(chol, rhs[:, 0]), ours[:, 0])
    ours.sum().backward()
    expected = torch.linalg.solve(cov, torch.ones(60, 3, dtype=torch.float64))  # C symmetric
    torch.testing.assert_close(rhs.grad, expected, rtol=1e-10, atol=1e-12)


def test_refined_solve_reaches_float64_accuracy_from_a_float32_factor() -> None:
    cov = _gp_covariance(800, 0.05)
    y = torch.randn(800, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    solved = refined_solve(cov, y)
    assert solved is not None
    chol, u = solved
    assert chol.dtype == torch.float32
    exact = torch.linalg.solve(cov, y)

    def error(solution: torch.Tensor) -> float:
        return float((solution - exact).abs().max() / exact.abs().max())

    # float32 alone is about cond(C) 2^-24 off; the refined solve is as good as a float64 one
    float64 = error(cholesky_solve(torch.linalg.cholesky(cov), y))
    assert error(cholesky_solve(chol, y.float()).double()) > 1e4 * float64
    assert error(u) < 10 * float64 + 1e-14
    backward = float((y - cov @ u).abs().max())
    assert backward <= float(u.abs().max() * cov.abs().sum(1).max()) * 2.3e-16 * 800**0.5


@pytest.mark.parametrize("noise", [1e-9, 1e-12])
def test_refined_solve_declines_what_float32_cannot_factor(noise: float) -> None:
    cov = _gp_covariance(400, noise)  # condition number 1e10 and more
    y = torch.ones(400, dtype=torch.float64)
    assert refined_solve(cov, y) is None


def test_mixed_precision_solve_equals_the_float64_one(monkeypatch: pytest.MonkeyPatch) -> None:
    n = sca.MIXED_PRECISION_MIN_POINTS + 76
    x = np.linspace(0.0, 200.0, n)[:, None]
    rng = np.random.default_rng(3)
    y = np.sin(2 * np.pi * 0.05 * x[:, 0]) + 0.1 * rng.standard_normal(n)
    grid = GSMPGrid.default(1, per_dim=12, scale=0.01)
    gram = SubKernelGram(GSMPKernel(grid), torch.from_numpy(x))
    refined = []

    def counting(matrix: torch.Tensor, rhs: torch.Tensor):
        solved = refined_solve(matrix, rhs)
        refined.append(solved is not None)
        return solved

    monkeypatch.setattr(sca, "refined_solve", counting)
    results, calls = {}, {}
    for mixed in (True, False):
        options = sca.SCAOptions(max_iter=2, mixed_precision=mixed)
        problem = sca.LocalProblem(gram, torch.from_numpy(y), 0.05, options)
        penalty = sca.ConsensusPenalty.none(problem.size, gram.device)
        results[mixed] = problem.solve(torch.zeros(problem.size, dtype=torch.float64), penalty)
        calls[mixed] = len(refined)
    assert calls[True] > 0 and all(refined)  # the float32 path ran and never fell back
    assert calls[False] == calls[True]  # and only for the mixed solve
    mixed, plain = results[True], results[False]
    np.testing.assert_allclose(mixed.objective_history, plain.objective_history, rtol=1e-10)
    torch.testing.assert_close(mixed.weights, plain.weights, rtol=1e-6, atol=1e-9)
