"""Out-of-memory fallback: smaller tiles, the same results, a clear error at the floor."""

import pytest
import torch
from torch import Tensor

from gramfed.workers.gram import GramOptions, SubKernelGram
from gramfed.workers.kernels.gsmp import GSMPGrid, GSMPKernel
from gramfed.workers.kernels.rbf import RBFARDKernel
from gramfed.workers.pooled import KernelOperator, PooledGP, PooledOptions
from gramfed.workers.tiling import TileMemoryError, is_out_of_memory, simulated_memory_limit

GRID = GSMPGrid.default(2, per_dim=4, scale=0.05)
ROW_TILE = GRID.num_components * 40 * 8  # bytes of one row of the (A, rows, 40) stack tile


def reductions(gram: SubKernelGram) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    w = torch.rand(gram.num_components, generator=gen, dtype=torch.float64)
    mat = torch.randn(gram.n, gram.n, generator=gen, dtype=torch.float64)
    u = torch.randn(gram.n, generator=gen, dtype=torch.float64)
    return gram.weighted_sum(w), gram.inner(mat), gram.matvec(u)


def inputs(n: int = 40, dims: int = 2) -> Tensor:
    return 5 * torch.rand(n, dims, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_streamed_tiles_shrink_and_give_the_same_reductions() -> None:
    options = GramOptions(strategy="streamed", tile_bytes=1 << 30)  # one tile of all 40 rows
    expected = reductions(SubKernelGram(GSMPKernel(GRID), inputs(), options))
    gram = SubKernelGram(GSMPKernel(GRID), inputs(), options)
    with simulated_memory_limit(5 * ROW_TILE):  # 40 rows do not fit, 5 do
        got = reductions(gram)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_spectral_feature_chunks_shrink_and_give_the_same_reductions() -> None:
    options = GramOptions(strategy="spectral", tile_bytes=1 << 30)  # one chunk of all 8
    expected = reductions(SubKernelGram(GSMPKernel(GRID), inputs(), options))
    gram = SubKernelGram(GSMPKernel(GRID), inputs(), options)
    component_bytes = 2 * 40 * 2**GRID.dims * 8  # a component's features, product and result
    with simulated_memory_limit(3 * component_bytes):  # 8 components do not fit, 2 do
        got = reductions(gram)
    assert gram._spectral is not None and gram._spectral._max_chunk == 2
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with (
        simulated_memory_limit(component_bytes // 2),
        pytest.raises(TileMemoryError, match=r"out of memory on cpu .* of 1 components"),
    ):
        gram.inner(torch.eye(40, dtype=torch.float64))


def test_a_cached_stack_that_does_not_fit_falls_back_to_streaming() -> None:
    options = GramOptions(strategy="cached")
    cached = SubKernelGram(GSMPKernel(GRID), inputs(), options)
    assert cached.strategy == "cached"
    with simulated_memory_limit(8 * ROW_TILE):  # far below the (A, 40, 40) stack
        gram = SubKernelGram(GSMPKernel(GRID), inputs(), options)
        got = reductions(gram)
    assert gram.strategy == "streamed"
    for a, b in zip(got, reductions(cached), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_floor_gives_a_clear_error_naming_device_and_tile() -> None:
    options = GramOptions(strategy="streamed", min_tile_rows=4)
    gram = SubKernelGram(GSMPKernel(GRID), inputs(), options)
    with (
        simulated_memory_limit(3 * ROW_TILE),
        pytest.raises(TileMemoryError, match=r"out of memory on cpu .* of 4 rows .* floor of 4"),
    ):
        gram.matvec(torch.ones(40, dtype=torch.float64))


def test_pooled_operator_halves_tile_rows_and_keeps_them() -> None:
    kernel = RBFARDKernel([0.7, 1.1])
    x = inputs(150)
    v = torch.randn(150, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    options = PooledOptions(tile_rows=64, tile_cols=50, min_tile_rows=4, device="cpu")
    expected = KernelOperator(kernel, x, 0.1, options).matmul(v)
    op = KernelOperator(kernel, x, 0.1, options)
    with simulated_memory_limit(16 * 50 * 8):  # 64 -> 32 -> 16 rows of 50 columns
        got = op.matmul(v)
    assert op.tiles.tile_rows == 16
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    with (
        simulated_memory_limit(3 * 50 * 8),
        pytest.raises(TileMemoryError, match=r"on cpu for a Gram tile of 4 rows"),
    ):
        op.matmul(v)


class HungryRBF(RBFARDKernel):
    """An RBF whose tiles above ``rows`` rows ask the real CPU allocator for 800 TB."""

    def __init__(self, rows: int) -> None:
        super().__init__([0.7, 1.1])
        self.rows = rows

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        if x1.shape[0] > self.rows:
            torch.empty(10**14, dtype=torch.float64)  # beyond any address space
        return super().forward(x1, x2)


def test_a_real_cpu_allocation_failure_takes_the_same_path() -> None:
    x = inputs(100)
    v = torch.randn(100, 2, dtype=torch.float64)
    op = KernelOperator(HungryRBF(rows=10), x, 0.1, PooledOptions(tile_rows=80, min_tile_rows=1))
    got = op.matmul(v)
    assert op.tiles.tile_rows == 10  # 80 -> 40 -> 20 -> 10
    plain = KernelOperator(RBFARDKernel([0.7, 1.1]), x, 0.1, PooledOptions())
    torch.testing.assert_close(got, plain.matmul(v), rtol=1e-12, atol=1e-12)


def test_pooled_gp_under_a_memory_limit_equals_the_normal_path() -> None:
    kernel = RBFARDKernel([0.7, 1.1])
    x = inputs(200)
    y = torch.sin(x[:, 0]) + 0.1 * torch.randn(200, dtype=torch.float64)
    x_test = inputs(9)
    options = PooledOptions(
        tile_rows=128, tile_cols=64, min_tile_rows=2, cg_tol=1e-10, precond_rank=100
    )
    normal = PooledGP(kernel, x, y, 0.05, options)
    fit = normal.fit()
    with simulated_memory_limit(8 * 64 * 8):
        limited = PooledGP(kernel, x, y, 0.05, options)
        limited_fit = limited.fit()
        limited_prediction = limited.predict(x_test)
    assert limited_fit.log_marginal_likelihood == pytest.approx(fit.log_marginal_likelihood)
    prediction = normal.predict(x_test)
    torch.testing.assert_close(limited_prediction.mean, prediction.mean)
    torch.testing.assert_close(limited_prediction.variance, prediction.variance)


class BrokenRBF(RBFARDKernel):
    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        raise ValueError("not a memory problem")


def test_other_errors_are_not_mistaken_for_out_of_memory() -> None:
    op = KernelOperator(BrokenRBF(1.0), inputs(20), 0.1, PooledOptions(tile_rows=16))
    with pytest.raises(ValueError, match="not a memory problem"):
        op.matmul(torch.ones(20, 1, dtype=torch.float64))
    assert op.tiles.tile_rows == 16


def test_out_of_memory_classification() -> None:
    with pytest.raises(RuntimeError) as real_failure:
        torch.empty(10**14, dtype=torch.float64)
    assert is_out_of_memory(real_failure.value)
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(TileMemoryError("final"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
