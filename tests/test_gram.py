import pytest
import torch
from conftest import dense_stack

from gramfed.workers.gram import GramOptions, NoiseAugmentedGram, SubKernelGram
from gramfed.workers.kernels.gsmp import GSMPGrid, GSMPKernel


@pytest.mark.parametrize(
    ("dims", "strategy"),
    [(1, "spectral"), (1, "cached"), (1, "streamed"), (3, "cached"), (3, "streamed")],
)
def test_reductions_equal_dense_formula(dims: int, strategy: str) -> None:
    gen = torch.Generator().manual_seed(dims)
    grid = GSMPGrid.default(dims, per_dim=9, scale=0.05)
    x = 8 * torch.rand(30, dims, generator=gen, dtype=torch.float64)
    stack = dense_stack(grid, x, x)
    # tile_bytes forces several row tiles in the streamed strategy
    gram = SubKernelGram(GSMPKernel(grid), x, GramOptions(strategy=strategy, tile_bytes=1 << 15))
    w = torch.rand(grid.num_components, generator=gen, dtype=torch.float64)
    mat = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    u = torch.randn(30, generator=gen, dtype=torch.float64)
    part = slice(4, 19)
    torch.testing.assert_close(
        gram.weighted_sum(w[part], part), torch.tensordot(w[part], stack[part], 1)
    )
    torch.testing.assert_close(gram.inner(mat, part), (stack[part] * mat).sum((1, 2)))
    torch.testing.assert_close(gram.matvec(u, part), stack[part] @ u)


def test_auto_strategy_respects_memory_budget() -> None:
    grid = GSMPGrid.default(2, per_dim=5)
    x = torch.rand(20, 2, dtype=torch.float64)
    assert SubKernelGram(GSMPKernel(grid), x).strategy == "cached"
    small = GramOptions(memory_budget=1000)
    assert SubKernelGram(GSMPKernel(grid), x, small).strategy == "streamed"
    one_d = GSMPGrid.default(1, per_dim=5)
    assert SubKernelGram(GSMPKernel(one_d), x[:, :1]).strategy == "spectral"


def test_kernel_forward_is_weighted_sum_of_sub_kernels() -> None:
    grid = GSMPGrid.default(2, per_dim=4, scale=0.1)
    w = torch.zeros(grid.num_components, dtype=torch.float64)
    w[[1, 5, 6]] = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    x1, x2 = torch.rand(7, 2, dtype=torch.float64), torch.rand(5, 2, dtype=torch.float64)
    expected = torch.tensordot(w, dense_stack(grid, x1, x2), 1)
    torch.testing.assert_close(GSMPKernel(grid, w)(x1, x2), expected)


def test_random_grid_is_seeded_and_within_bounds() -> None:
    a = GSMPGrid.default(3, per_dim=10, sampling="random", seed=3, freq_bounds=(0.1, 0.2))
    b = GSMPGrid.default(3, per_dim=10, sampling="random", seed=3, freq_bounds=(0.1, 0.2))
    assert torch.equal(a.means, b.means)
    assert a.num_components == 30 and float(a.means.min()) >= 0.1 and float(a.means.max()) <= 0.2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dims": 0},
        {"dims": 1, "per_dim": 0},
        {"dims": 1, "scale": -1.0},
        {"dims": 1, "freq_bounds": (0.4, 0.1)},
        {"dims": 1, "sampling": "sobol"},
    ],
)
def test_bad_grid_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        GSMPGrid.default(**kwargs)


def test_noise_augmented_stack_appends_the_identity() -> None:
    gen = torch.Generator().manual_seed(7)
    grid = GSMPGrid.default(2, per_dim=4, scale=0.05)
    x = 5 * torch.rand(12, 2, generator=gen, dtype=torch.float64)
    stack = torch.cat([dense_stack(grid, x, x), torch.eye(12, dtype=torch.float64)[None]])
    gram = NoiseAugmentedGram(SubKernelGram(GSMPKernel(grid), x))
    assert gram.num_components == grid.num_components + 1
    w = torch.rand(gram.num_components, generator=gen, dtype=torch.float64)
    mat = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    u = torch.randn(12, generator=gen, dtype=torch.float64)
    last = gram.num_components - 1
    # a block that straddles the kernels and the identity, one of kernels only, the identity alone
    for part in (slice(3, None), slice(0, 5), slice(last, None)):
        torch.testing.assert_close(
            gram.weighted_sum(w[part], part), torch.tensordot(w[part], stack[part], 1)
        )
        torch.testing.assert_close(gram.inner(mat, part), (stack[part] * mat).sum((1, 2)))
        torch.testing.assert_close(gram.matvec(u, part), stack[part] @ u)
