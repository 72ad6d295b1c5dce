import numpy as np
import pytest
import torch
from conftest import dense_stack
from scipy.optimize import minimize

from gramfed.workers import sca
from gramfed.workers.gram import SubKernelGram
from gramfed.workers.kernels.gsmp import GSMPGrid, GSMPKernel
from gramfed.workers.sca import ConsensusPenalty, LocalProblem, SCAOptions, _centring


def _problem(toy_regression, dims: int = 1, per_dim: int = 40, surrogate: str = "reference"):
    x, y = toy_regression
    grid = GSMPGrid.default(dims, per_dim=per_dim, scale=0.01)
    xt = torch.from_numpy(x[:, :dims])
    gram = SubKernelGram(GSMPKernel(grid), xt)
    return (
        LocalProblem(gram, torch.from_numpy(y), 0.05, SCAOptions(surrogate=surrogate)),
        dense_stack(grid, xt, xt),
        torch.from_numpy(y),
    )


def test_objective_and_gradient_agree_with_autograd(toy_regression) -> None:
    problem, stack, y = _problem(toy_regression)
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(problem.size, generator=gen, dtype=torch.float64) * (
        torch.rand(problem.size, generator=gen) < 0.3
    )
    penalty = ConsensusPenalty(
        lam=torch.randn(problem.size, generator=gen, dtype=torch.float64),
        theta=torch.rand(problem.size, generator=gen, dtype=torch.float64),
        rho=0.7,
    )
    a_var = a.clone().requires_grad_(True)
    cov = torch.tensordot(a_var, stack, 1) + 0.05 * torch.eye(len(y), dtype=torch.float64)
    f = y @ torch.linalg.solve(cov, y) + torch.logdet(cov)
    f = f + penalty.lam @ a_var + 0.5 * penalty.rho * (a_var - penalty.theta).square().sum()
    f.backward()
    f = f.detach()
    point = problem.evaluate(a, penalty)
    assert abs(point.value - f.item()) < 1e-9 * abs(f.item())
    torch.testing.assert_close(problem.gradient(point, penalty), a_var.grad)


@pytest.mark.parametrize("surrogate", ["reference", "tangent"])
def test_dsca_decreases_objective_monotonically(toy_regression, surrogate: str) -> None:
    problem, _, _ = _problem(toy_regression, surrogate=surrogate)
    penalty = ConsensusPenalty.none(problem.size, problem.gram.device)
    problem.options = SCAOptions(max_iter=25, tol=1e-9, surrogate=surrogate)
    result = problem.solve(torch.zeros(problem.size, dtype=torch.float64), penalty)
    history = np.array(result.objective_history)
    assert result.iterations >= 5
    assert np.all(np.diff(history) <= 1e-9 * np.abs(history[1:]))
    assert history[-1] < history[0] - 10  # it really moved


def test_solved_weights_are_ordinary_tensors(toy_regression) -> None:
    """DSCA runs without autograd bookkeeping, but what it returns is an ordinary tensor: a
    caller can update it in place and differentiate through it."""
    problem, _, _ = _problem(toy_regression)
    penalty = ConsensusPenalty.none(problem.size, problem.gram.device)
    weights = problem.solve(torch.zeros(problem.size, dtype=torch.float64), penalty).weights
    assert not weights.is_inference()
    weights.add_(1.0)
    start = weights.clone().requires_grad_(True)
    (start.square().sum()).backward()
    assert start.grad is not None


def test_dsca_with_the_tangent_bound_reaches_a_stationary_point(toy_regression) -> None:
    # The tangent bound touches F, so its fixed points are F's. The reference model is not a
    # bound (its quadratic term sees the noise twice): its DSCA stops where no step of its
    # block moves lowers F, short of F's stationary points.
    problem, _, _ = _problem(toy_regression, dims=1, per_dim=15, surrogate="tangent")
    penalty = ConsensusPenalty.none(problem.size, problem.gram.device)
    problem.options = SCAOptions(max_iter=300, tol=1e-12, surrogate="tangent")
    a = problem.solve(torch.zeros(problem.size, dtype=torch.float64), penalty).weights
    grad = problem.gradient(problem.evaluate(a, penalty), penalty)
    # KKT for a >= 0: gradient ~0 on the support and non-negative on the zeros
    assert float(grad[a > 0].abs().max()) < 1e-2 * float(grad.abs().max())
    assert float(torch.cat([grad[a == 0], torch.zeros(1, dtype=grad.dtype)]).min()) > -1e-2 * float(
        grad.abs().max()
    )


@pytest.mark.parametrize(("surrogate", "block_noise"), [("tangent", 0.05), ("reference", 0.1)])
@pytest.mark.parametrize("rho", [1e-10, 0.5])
def test_block_surrogate_is_solved_to_optimality(
    toy_regression, rho: float, surrogate: str, block_noise: float
) -> None:
    """The block solve reaches its model's minimum where the Hessian is rank deficient.

    200 weights against 48 points: ``q``'s Hessian has rank <= 48, the case in which a few
    projected Newton steps stalled far from the minimum (7,167 vs 224,276 on a 1-D series).
    The reference model's quadratic term sees the noise (0.05) twice.
    """
    problem, stack, y = _problem(toy_regression, per_dim=200, surrogate=surrogate)
    gen = torch.Generator().manual_seed(1)
    penalty = ConsensusPenalty(
        lam=torch.zeros(problem.size, dtype=torch.float64),
        theta=torch.rand(problem.size, generator=gen, dtype=torch.float64),
        rho=rho,
    )
    point = problem.evaluate(torch.zeros(problem.size, dtype=torch.float64), penalty)
    slope = problem.gram.inner(torch.cholesky_inverse(point.chol))
    model_u = problem._model_solution(point)
    ours = problem._solve_blocks(point, model_u, [slice(0, problem.size)], slope, penalty)

    def surrogate(a: np.ndarray) -> tuple[float, np.ndarray]:
        at = torch.from_numpy(a)
        cov = torch.tensordot(at, stack, 1) + block_noise * torch.eye(len(y), dtype=torch.float64)
        u = torch.linalg.solve(cov, y)
        value = y @ u + slope @ at + 0.5 * rho * (at - penalty.theta).square().sum()
        grad = -torch.einsum("i,aij,j->a", u, stack, u) + slope + rho * (at - penalty.theta)
        return float(value), grad.numpy()

    best = minimize(
        surrogate,
        np.zeros(problem.size),
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * problem.size,
        options={"maxiter": 20000, "maxfun": 50000, "ftol": 1e-15, "gtol": 1e-12},
    )
    assert bool((ours >= 0).all())
    assert surrogate(ours.numpy())[0] <= best.fun + 1e-7 * abs(best.fun)


def test_centring_survives_duals_that_underflowed() -> None:
    """mu = 0 (every dual underflowed) means no centring, not a division by zero."""
    sigma = _centring(
        torch.tensor([0.0, 1e-3, 2.0], dtype=torch.float64),
        torch.tensor([0.0, 1e-2, 1.0], dtype=torch.float64),
    )
    assert sigma.tolist() == pytest.approx([0.0, 1e-3, 1.0])


def test_unknown_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="surrogate must be"):
        SCAOptions(surrogate="secant")


@pytest.mark.parametrize("rho", [1e-10, 0.5])
def test_blocks_solved_together_equal_blocks_solved_alone(
    toy_regression, monkeypatch: pytest.MonkeyPatch, rho: float
) -> None:
    """The batched interior point gives every block the result of its own solve.

    The four blocks stop after different numbers of steps and join different weights, so
    a block that stopped early must leave the batch without disturbing the others.
    """
    problem, _, _ = _problem(toy_regression, per_dim=120)
    assert problem.gram.spectral is not None
    gen = torch.Generator().manual_seed(2)
    weights = torch.rand(problem.size, generator=gen, dtype=torch.float64)
    weights *= torch.rand(problem.size, generator=gen) < 0.15
    penalty = ConsensusPenalty(
        lam=0.1 * torch.randn(problem.size, generator=gen, dtype=torch.float64),
        theta=torch.rand(problem.size, generator=gen, dtype=torch.float64),
        rho=rho,
    )
    point = problem.evaluate(weights, penalty)
    slope = problem.gram.inner(torch.cholesky_inverse(point.chol)) + penalty.lam
    blocks = sca._blocks(problem.size, 4)
    model_u = problem._model_solution(point)

    batches: list[int] = []
    interior_point = problem._interior_point

    def counting(point, kernels, initial, slope, penalty):
        batches.append(len(kernels.chosen))
        return interior_point(point, kernels, initial, slope, penalty)

    monkeypatch.setattr(problem, "_interior_point", counting)
    together = problem._solve_blocks(point, model_u, blocks, slope, penalty)
    assert max(batches) == 4
    batches.clear()
    monkeypatch.setattr(sca, "BATCHED_BLOCK_FLOPS", 0)
    alone = problem._solve_blocks(point, model_u, blocks, slope, penalty)
    assert max(batches) == 1
    assert int((together > 0).sum()) > 8  # the blocks really moved weights

    torch.testing.assert_close(together, alone, rtol=1e-9, atol=1e-12)
