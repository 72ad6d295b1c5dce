import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pytest
import torch

from gramfed.workers.kernels.base import Kernel
from gramfed.workers.kernels.matern import MaternKernel
from gramfed.workers.kernels.rbf import RBFARDKernel
from gramfed.workers.kernels.spectral_mixture import SpectralMixtureKernel


def rbf_ref(ls: np.ndarray, var: float, a: np.ndarray, b: np.ndarray) -> float:
    return var * math.exp(-0.5 * sum(((a[p] - b[p]) / ls[p]) ** 2 for p in range(len(a))))


def matern_ref(nu: float, ls: np.ndarray, var: float, a: np.ndarray, b: np.ndarray) -> float:
    r = math.sqrt(sum(((a[p] - b[p]) / ls[p]) ** 2 for p in range(len(a))))
    if nu == 0.5:
        return var * math.exp(-r)
    if nu == 1.5:
        return var * (1 + math.sqrt(3) * r) * math.exp(-math.sqrt(3) * r)
    return var * (1 + math.sqrt(5) * r + 5 * r**2 / 3) * math.exp(-math.sqrt(5) * r)


def sm_ref(w: np.ndarray, mu: np.ndarray, s: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    total = 0.0
    for q in range(len(w)):
        term = w[q]
        for p in range(len(a)):
            tau = a[p] - b[p]
            term *= math.exp(-2 * math.pi**2 * tau**2 * s[q, p] ** 2)
            term *= math.cos(2 * math.pi * tau * mu[q, p])
        total += term
    return total


Reference = Callable[[np.ndarray, np.ndarray], float]


def make_case(name: str, dims: int, rng: np.random.Generator) -> tuple[Kernel, Reference]:
    """A kernel with random parameters and its scalar reference formula."""
    ls = rng.uniform(0.5, 2.0, dims)
    var = float(rng.uniform(0.5, 2.0))
    if name == "rbf":
        return RBFARDKernel(ls, var), lambda a, b: rbf_ref(ls, var, a, b)
    if name.startswith("matern"):
        nu = float(name.removeprefix("matern"))
        return MaternKernel(nu, ls, var), lambda a, b: matern_ref(nu, ls, var, a, b)
    w = rng.uniform(0.2, 1.0, 3)
    mu = rng.uniform(0.0, 0.6, (3, dims))
    s = rng.uniform(0.05, 0.4, (3, dims))
    return SpectralMixtureKernel(w, mu, s), lambda a, b: sm_ref(w, mu, s, a, b)


KERNEL_NAMES = ["rbf", "matern0.5", "matern1.5", "matern2.5", "sm"]


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_kernel_matches_direct_formula(name: str, dims: int, rng: np.random.Generator) -> None:
    kernel, ref = make_case(name, dims, rng)
    x1, x2 = rng.uniform(-2, 2, (6, dims)), rng.uniform(-2, 2, (4, dims))
    expected = np.array([[ref(a, b) for b in x2] for a in x1])
    got = kernel(torch.from_numpy(x1), torch.from_numpy(x2))
    assert got.shape == (6, 4) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("name", KERNEL_NAMES)
def test_gram_is_symmetric_psd_with_matching_diag(
    name: str, dims: int, rng: np.random.Generator
) -> None:
    kernel, _ = make_case(name, dims, rng)
    x = torch.from_numpy(rng.uniform(-2, 2, (40, dims)))
    gram = kernel(x, x)
    torch.testing.assert_close(gram, gram.T, rtol=0, atol=1e-14)
    eig = torch.linalg.eigvalsh(gram)
    assert float(eig.min()) >= -1e-10 * float(eig.max())
    torch.testing.assert_close(kernel.diag(x), gram.diagonal(), rtol=1e-12, atol=1e-14)


def test_single_lengthscale_is_isotropic() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    k = RBFARDKernel(2.0, 3.0)(x, x)
    assert k[0, 1].item() == pytest.approx(3.0 * math.exp(-0.5 * 5 / 4))
    assert MaternKernel(0.5, [2.0, 2.0])(x, x)[0, 1].item() == pytest.approx(
        math.exp(-math.sqrt(5) / 2)
    )


def test_matern_gradient_is_finite_at_zero_distance() -> None:
    x = torch.tensor([[0.3], [0.3]], dtype=torch.float64, requires_grad=True)
    MaternKernel(0.5, 1.0)(x, x).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: RBFARDKernel([1.0, 0.0]), "lengthscales must be > 0"),
        (lambda: RBFARDKernel([1.0, math.inf]), "lengthscales must be finite"),
        (lambda: RBFARDKernel([[1.0]]), "lengthscales must have 1 dimension"),
        (lambda: RBFARDKernel([]), "lengthscales must not be empty"),
        (lambda: RBFARDKernel(1.0, variance=-1.0), "variance must be finite and > 0"),
        (lambda: RBFARDKernel(1.0, variance=math.nan), "variance must be finite and > 0"),
        (lambda: MaternKernel(1.0, 1.0), "nu must be one of"),
        (lambda: MaternKernel(2.5, [1.0, -2.0]), "lengthscales must be > 0"),
        (lambda: SpectralMixtureKernel([1.0, 0.0], [[0.1], [0.2]], [[1.0], [1.0]]), "weights"),
        (lambda: SpectralMixtureKernel([1.0], [[math.nan]], [[1.0]]), "means must be finite"),
        (lambda: SpectralMixtureKernel([1.0], [[0.1]], [[0.0]]), "scales must be > 0"),
        (lambda: SpectralMixtureKernel([1.0], [[0.1, 0.2]], [[1.0]]), r"must both be \(Q, P\)"),
        (lambda: SpectralMixtureKernel([1.0, 2.0], [[0.1]], [[1.0]]), "Q = 2"),
        (lambda: SpectralMixtureKernel([1.0], [0.1], [[1.0]]), "means must have 2 dimension"),
    ],
)
def test_bad_parameters_raise(factory: Callable[[], Kernel], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize(
    "kernel",
    [
        RBFARDKernel([1.0, 2.0]),
        MaternKernel(1.5, [1.0, 2.0]),
        SpectralMixtureKernel([1], [[0, 0]], [[1, 1]]),
    ],
)
def test_input_dimension_mismatch_raises(kernel: Kernel) -> None:
    x3 = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="input dimension"):
        kernel(x3, x3)
    with pytest.raises(ValueError, match=r"inputs must be \(n1, P\)"):
        kernel(torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64))


@pytest.mark.parametrize("dims", [1, 3])
def test_rbf_matches_gpytorch_scaled_rbf(dims: int, rng: np.random.Generator) -> None:
    gpytorch = pytest.importorskip("gpytorch")
    ls, var = rng.uniform(0.5, 2.0, dims), 1.7
    theirs = gpytorch.kernels.ScaleKernel(gpytorch.kernels.RBFKernel(ard_num_dims=dims)).double()
    theirs.base_kernel.lengthscale = torch.from_numpy(ls)[None]
    theirs.outputscale = torch.tensor(var, dtype=torch.float64)  # a float would pass float32
    x1 = torch.from_numpy(rng.uniform(-2, 2, (7, dims)))
    x2 = torch.from_numpy(rng.uniform(-2, 2, (5, dims)))
    with torch.no_grad():
        expected = theirs(x1, x2).to_dense()
    torch.testing.assert_close(RBFARDKernel(ls, var)(x1, x2), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
def test_matern_matches_gpytorch(nu: float, rng: np.random.Generator) -> None:
    gpytorch = pytest.importorskip("gpytorch")
    ls = rng.uniform(0.5, 2.0, 3)
    theirs = gpytorch.kernels.MaternKernel(nu=nu, ard_num_dims=3).double()
    theirs.lengthscale = torch.from_numpy(ls)[None]
    x1 = torch.from_numpy(rng.uniform(-2, 2, (7, 3)))
    x2 = torch.from_numpy(rng.uniform(-2, 2, (5, 3)))
    with torch.no_grad():
        expected = theirs(x1, x2).to_dense()
    torch.testing.assert_close(MaternKernel(nu, ls)(x1, x2), expected, rtol=1e-10, atol=1e-12)


def gpytorch_sm(
    gpytorch: ModuleType, w: np.ndarray, mu: np.ndarray, s: np.ndarray
) -> torch.nn.Module:
    q, dims = mu.shape
    k = gpytorch.kernels.SpectralMixtureKernel(num_mixtures=q, ard_num_dims=dims).double()
    k.mixture_weights = torch.from_numpy(w)
    k.mixture_means = torch.from_numpy(mu)[:, None, :]
    k.mixture_scales = torch.from_numpy(s)[:, None, :]
    return k


def test_spectral_mixture_matches_gpytorch_in_one_dimension(rng: np.random.Generator) -> None:
    gpytorch = pytest.importorskip("gpytorch")
    w, mu, s = (
        rng.uniform(0.2, 1.0, 4),
        rng.uniform(0.0, 0.6, (4, 1)),
        rng.uniform(0.05, 0.4, (4, 1)),
    )
    x1 = torch.from_numpy(rng.uniform(-3, 3, (8, 1)))
    x2 = torch.from_numpy(rng.uniform(-3, 3, (6, 1)))
    with torch.no_grad():
        expected = gpytorch_sm(gpytorch, w, mu, s)(x1, x2).to_dense()
    ours = SpectralMixtureKernel(w, mu, s)(x1, x2)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def test_spectral_mixture_single_component_matches_gpytorch_in_three_dimensions(
    rng: np.random.Generator,
) -> None:
    # GPyTorch multiplies per-dimension mixtures, prod_p sum_q w_q (...): with one component
    # that is our kernel with the weight raised to the number of dimensions.
    gpytorch = pytest.importorskip("gpytorch")
    w, mu, s = np.array([0.8]), rng.uniform(0.0, 0.6, (1, 3)), rng.uniform(0.05, 0.4, (1, 3))
    x1 = torch.from_numpy(rng.uniform(-2, 2, (7, 3)))
    x2 = torch.from_numpy(rng.uniform(-2, 2, (5, 3)))
    with torch.no_grad():
        expected = gpytorch_sm(gpytorch, w, mu, s)(x1, x2).to_dense()
    ours = SpectralMixtureKernel(w**3, mu, s)(x1, x2)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)
