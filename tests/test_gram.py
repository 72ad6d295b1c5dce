import pytest
import torch
from conftest import dense_stack

from gramfed.workers.block_kernels import FeatureBlockKernels, LazyBlockKernels
from gramfed.workers.gram import GramOptions, NoiseAugmentedGram, SubKernelGram
from gramfed.workers.kernels.gsmp import GSMPGrid, GSMPKernel


@pytest.mark.parametrize(
    ("dims", "strategy", "compressed"),
    [
        (1, "spectral", False),
        (1, "spectral", True),
        (1, "cached", False),
        (1, "streamed", False),
        (3, "spectral", False),
        (3, "spectral", True),
        (3, "cached", True),
        (3, "streamed", False),
    ],
)
def test_reductions_equal_dense_formula(dims: int, strategy: str, compressed: bool) -> None:
    gen = torch.Generator().manual_seed(dims)
    # compressed 1-D blocks need more features than points to have a basis that pays
    grid = GSMPGrid.default(dims, per_dim=60 if compressed and dims == 1 else 9, scale=0.05)
    x = 8 * torch.rand(30, dims, generator=gen, dtype=torch.float64)
    stack = dense_stack(grid, x, x)
    # tile_bytes forces several row tiles in the streamed strategy
    gram = SubKernelGram(GSMPKernel(grid), x, GramOptions(strategy=strategy, tile_bytes=1 << 15))
    half = grid.num_components // 2
    if compressed:  # two solver blocks: selections inside, across and outside them
        gram.compress(slice(2, half))
        gram.compress(slice(half, grid.num_components - 2))
        if strategy == "spectral":
            assert gram._spectral is not None and len(gram._spectral._bases) == 2
    w = torch.rand(grid.num_components, generator=gen, dtype=torch.float64)
    mat = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    u = torch.randn(30, generator=gen, dtype=torch.float64)
    # contiguous blocks, scattered indices (the solver's free sets), every other index (read
    # through its covering slice when cached), and empty selections
    scattered = torch.tensor([0, 3, 4, grid.num_components - 1])
    inside = torch.arange(3, half)
    parts = (slice(4, 19), slice(None), scattered, inside, inside[::2], scattered[:0], slice(5, 5))
    for part in parts:
        torch.testing.assert_close(
            gram.weighted_sum(w[part], part), torch.tensordot(w[part], stack[part], 1)
        )
        torch.testing.assert_close(gram.inner(mat, part), (stack[part] * mat).sum((1, 2)))
        torch.testing.assert_close(gram.matvec(u, part), stack[part] @ u)


def test_auto_strategy_respects_dimension_and_memory_budget() -> None:
    x = torch.rand(20, 5, dtype=torch.float64)
    for dims in (1, 4):  # up to 2^4 features a sub-kernel: matrix products with the features
        grid = GSMPGrid.default(dims, per_dim=5)
        assert SubKernelGram(GSMPKernel(grid), x[:, :dims]).strategy == "spectral"
    five = GSMPGrid.default(5, per_dim=5)
    assert SubKernelGram(GSMPKernel(five), x).strategy == "cached"
    small = GramOptions(memory_budget=1000)
    assert SubKernelGram(GSMPKernel(five), x, small).strategy == "streamed"
    two = GSMPGrid.default(2, per_dim=5)  # 20 x 10 x 4 features of 8 bytes > 1000
    assert SubKernelGram(GSMPKernel(two), x[:, :2], small).strategy == "streamed"
    own_scales = GSMPGrid(two.means, two.scales * torch.linspace(1, 2, 10)[:, None])
    assert SubKernelGram(GSMPKernel(own_scales), x[:, :2]).strategy == "cached"
    with pytest.raises(ValueError, match="shared scales"):
        SubKernelGram(GSMPKernel(own_scales), x[:, :2], GramOptions(strategy="spectral"))


def test_bad_component_selections_are_refused() -> None:
    grid = GSMPGrid.default(2, per_dim=3)
    gram = SubKernelGram(GSMPKernel(grid), torch.rand(6, 2, dtype=torch.float64))
    u = torch.ones(6, dtype=torch.float64)
    for bad in (torch.tensor([2, 1]), torch.tensor([0, 6]), torch.tensor([-1, 2])):
        with pytest.raises(ValueError, match="sorted, distinct"):
            gram.matvec(u, bad)
    with pytest.raises(ValueError, match="contiguous"):
        gram.matvec(u, slice(0, 6, 2))


@pytest.mark.parametrize("dims", [2, 5])  # product form of cos/sin features; formed tiles
def test_kernel_forward_is_weighted_sum_of_sub_kernels(dims: int) -> None:
    grid = GSMPGrid.default(dims, per_dim=4, scale=0.1)
    w = torch.zeros(grid.num_components, dtype=torch.float64)
    w[[1, 5, 6]] = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    x1, x2 = 3 * torch.rand(7, dims, dtype=torch.float64), torch.rand(5, dims, dtype=torch.float64)
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
    scattered = torch.tensor([1, 4, last])
    for part in (slice(3, None), slice(0, 5), slice(last, None), scattered, scattered[:2]):
        torch.testing.assert_close(
            gram.weighted_sum(w[part], part), torch.tensordot(w[part], stack[part], 1)
        )
        torch.testing.assert_close(gram.inner(mat, part), (stack[part] * mat).sum((1, 2)))
        torch.testing.assert_close(gram.matvec(u, part), stack[part] @ u)


@pytest.mark.parametrize("dims", [1, 2])
def test_block_kernel_reductions_equal_dense_formula(dims: int) -> None:
    """Both ways of reducing over blocks' free weights match the dense sub-kernels: several
    blocks batched in product form, with zeros in the padding of the shorter blocks, and one
    block through the Gram stack."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(30, dims, generator=gen, dtype=torch.float64) * 20
    grid = GSMPGrid.default(dims, per_dim=24, scale=0.02)
    stack = dense_stack(grid, x, x)
    gram = SubKernelGram(GSMPKernel(grid), x)
    assert gram.spectral is not None
    size = grid.num_components
    chosen = [torch.tensor([0, 3, 4, 9]), torch.tensor([size - 1]), torch.arange(10, 17)]
    u = torch.randn(len(chosen), 30, generator=gen, dtype=torch.float64)
    weights = torch.rand(len(chosen), 7, generator=gen, dtype=torch.float64)

    def check(products, sums, components, row: int) -> None:
        k = components.numel()
        torch.testing.assert_close(products[:k], stack[components] @ u[row])
        assert not bool(products[k:].any())
        torch.testing.assert_close(sums, torch.tensordot(weights[row, :k], stack[components], 1))

    batched = FeatureBlockKernels(gram.spectral, chosen)
    products, sums = batched.matvec(u), batched.weighted_sum(weights)
    assert products.shape == (3, 7, 30) and sums.shape == (3, 30, 30)
    for b, components in enumerate(chosen):
        check(products[b], sums[b], components, b)
        alone = LazyBlockKernels(gram, components)
        products_alone = alone.matvec(u[b : b + 1])
        sums_alone = alone.weighted_sum(weights[b : b + 1, : components.numel()])
        assert products_alone.shape == (1, components.numel(), 30)
        check(products_alone[0], sums_alone[0], components, b)
