"""Pooled exact GP at scale: ``K + s2 I`` as a lazy operator, preconditioned CG, SLQ log det.

The n x n training covariance is never formed. ``KernelOperator.matmul(V)`` evaluates
(tile_rows, tile_cols) tiles of K, multiplies each into V and drops it, so memory stays at
one tile whatever n is (GPyTorch's linear_operator / KeOps path, Falkon's blocked products).
On top of it:

* ``pcg``: batched preconditioned conjugate gradients for many right-hand sides at once. The
  CG coefficients of each column are kept: they are the Lanczos tridiagonal of that column
  (Saad, *Iterative Methods*, 6.7.3; Gardner et al. 2018, GPyTorch's mBCG).
* ``PivotedCholesky``: the rank-k preconditioner ``P = L L' + s2 I`` (Harbrecht et al. 2012,
  as GPyTorch uses it); solves and log det by Woodbury, exact samples from N(0, P).
* log det by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017) on the preconditioned
  system: ``log det K^ = log det P + E[z'P^-1 z e1' log(T_z) e1]``, ``z ~ N(0, P)``.
* ``PooledGP``: log marginal likelihood and predictions over any ``GramOperator``: the local
  ``KernelOperator`` here, or a distributed one (the platform's Ray runtime provides it).

Every tile goes through the out-of-memory fallback of ``gramfed.workers.gram``: a tile that
does not fit is retried at half the rows, down to ``min_tile_rows``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from gramfed.workers.cholesky import cholesky_solve
from gramfed.workers.device import resolve_device
from gramfed.workers.kernels.base import Kernel
from gramfed.workers.pivoted import pivoted_cholesky
from gramfed.workers.posterior import Prediction
from gramfed.workers.tiling import reserve, tiled_rows

IterationHook = Callable[[int, float], None]  # (matrix products so far, largest residual)


@dataclass(frozen=True)
class PooledOptions:
    """How the pooled GP is computed.

    ``tile_rows`` x ``tile_cols`` is one Gram tile, the unit of memory: a tile of ``dtype``
    entries plus the kernel's temporaries on it (P differences per entry for the stationary
    kernels, 64 sub-kernels per entry for GSMP). ``cg_tol`` is the relative residual
    ``|b - K^ x| / |b|`` every column must reach; ``probes`` the number of random vectors of
    the log-det estimate; ``variance_batch`` the test points whose variances are solved at once.
    CG vectors and solves are float64 whatever ``dtype`` the tiles use.
    """

    tile_rows: int = 1024
    tile_cols: int = 1024
    min_tile_rows: int = 8
    cg_tol: float = 1e-6
    max_iter: int = 1000
    precond_rank: int = 64
    probes: int = 16
    variance_batch: int = 256
    seed: int = 0
    device: str = "auto"
    dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        for name in ("tile_rows", "tile_cols", "min_tile_rows", "max_iter", "probes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.variance_batch < 1:
            raise ValueError(f"variance_batch must be >= 1, got {self.variance_batch}")
        if self.min_tile_rows > self.tile_rows:
            raise ValueError(
                f"min_tile_rows ({self.min_tile_rows}) must not exceed tile_rows ({self.tile_rows})"
            )
        if self.precond_rank < 0:
            raise ValueError(f"precond_rank must be >= 0, got {self.precond_rank}")
        if not 0.0 < self.cg_tol < 1.0:
            raise ValueError(f"cg_tol must be in (0, 1), got {self.cg_tol}")
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {self.dtype}")

    @property
    def tile_bytes(self) -> int:
        """Bytes of one full tile of kernel values (the kernel's temporaries come on top)."""
        return self.tile_rows * self.tile_cols * (torch.finfo(self.dtype).bits // 8)


def _slices(total: int, step: int) -> list[slice]:
    return [slice(s, min(s + step, total)) for s in range(0, total, step)]


class TiledKernel:
    """``K(x1, x2) V`` and ``K(x1, x2)`` evaluated in (tile_rows, tile_cols) tiles.

    ``tile_rows`` starts at the option and is lowered for good when a tile runs out of memory,
    so one failure does not repeat on every product.
    """

    def __init__(self, kernel: Kernel, options: PooledOptions, device: torch.device) -> None:
        self.kernel = kernel
        self.options = options
        self.device = device
        self.tile_rows = options.tile_rows
        self._itemsize = torch.finfo(options.dtype).bits // 8

    def _inputs(self, x: Tensor) -> Tensor:
        """Inputs in the tiles' precision (a no-op for inputs already there)."""
        return x.to(self.device, self.options.dtype)

    def _tile(self, x1: Tensor, x2: Tensor) -> Tensor:
        reserve(x1.shape[0] * x2.shape[0] * self._itemsize, self.device)
        return self.kernel(x1, x2)

    def _over_rows(self, total: int, columns: int, body: Callable[[slice], None]) -> None:
        self.tile_rows = tiled_rows(
            total,
            self.tile_rows,
            body,
            device=self.device,
            row_bytes=min(columns, self.options.tile_cols) * self._itemsize,
            min_rows=self.options.min_tile_rows,
        )

    def matmul(self, x1: Tensor, x2: Tensor, v: Tensor) -> Tensor:
        """``K(x1, x2) @ v`` (n1, k) in float64; each tile is multiplied in and dropped."""
        x1, x2 = self._inputs(x1), self._inputs(x2)
        out = torch.empty(x1.shape[0], v.shape[1], dtype=torch.float64, device=self.device)
        vt = v.to(self.device, self.options.dtype)
        columns = _slices(x2.shape[0], self.options.tile_cols)

        def body(rows: slice) -> None:
            acc = torch.zeros(
                rows.stop - rows.start, v.shape[1], dtype=torch.float64, device=self.device
            )
            for cols in columns:
                acc += (self._tile(x1[rows], x2[cols]) @ vt[cols]).to(torch.float64)
            out[rows] = acc

        self._over_rows(x1.shape[0], x2.shape[0], body)
        return out

    def evaluate(self, x1: Tensor, x2: Tensor) -> Tensor:
        """The block ``K(x1, x2)`` in float64; callers keep it small (pivot rows, test columns)."""
        x1, x2 = self._inputs(x1), self._inputs(x2)
        out = torch.empty(x1.shape[0], x2.shape[0], dtype=torch.float64, device=self.device)
        columns = _slices(x2.shape[0], self.options.tile_cols)

        def body(rows: slice) -> None:  # rewriting the same rows on a retry is harmless
            for cols in columns:
                out[rows, cols] = self._tile(x1[rows], x2[cols])

        self._over_rows(x1.shape[0], x2.shape[0], body)
        return out


class GramOperator(Protocol):
    """What the pooled GP needs of ``K^ = K + s2 I`` on n training inputs X."""

    @property
    def size(self) -> int: ...

    def matmul(self, v: Tensor) -> Tensor:
        """``K^ v`` for v of shape (n, k)."""
        ...

    def cross_matmul(self, x_test: Tensor, v: Tensor) -> Tensor:
        """``K(x_test, X) v`` (m, k)."""
        ...

    def cross(self, x_test: Tensor) -> Tensor:
        """``K(X, x_test)`` (n, m)."""
        ...


class KernelOperator:
    """``K + s2 I`` over the inputs ``x`` on one device, applied tile by tile."""

    def __init__(
        self, kernel: Kernel, x: Tensor, noise_variance: float, options: PooledOptions
    ) -> None:
        self.options = options
        self.device = resolve_device(options.device)
        self.x = x.to(self.device, options.dtype)
        self.noise_variance = float(noise_variance)
        self.tiles = TiledKernel(kernel, options, self.device)

    @property
    def size(self) -> int:
        return int(self.x.shape[0])

    def matmul(self, v: Tensor) -> Tensor:
        v = v.to(self.device, torch.float64)
        return self.tiles.matmul(self.x, self.x, v) + self.noise_variance * v

    def cross_matmul(self, x_test: Tensor, v: Tensor) -> Tensor:
        return self.tiles.matmul(x_test.to(self.device, self.options.dtype), self.x, v)

    def cross(self, x_test: Tensor) -> Tensor:
        return self.tiles.evaluate(self.x, x_test.to(self.device, self.options.dtype))


# -- preconditioned conjugate gradients -------------------------------------------------------
@dataclass(frozen=True)
class CGResult:
    """Solutions of ``K^ X = B`` and, per column, the CG coefficients of its Lanczos process.

    ``alphas[i, j]`` and ``betas[i, j]`` are step i's alpha and the beta that follows it, for
    the ``steps[j]`` steps column j took (zero afterwards); ``initial_norms`` is
    ``b' P^-1 b``, the squared length of the Lanczos start vector.
    """

    solution: Tensor
    products: int
    steps: Tensor
    relative_residual: Tensor
    alphas: Tensor
    betas: Tensor
    initial_norms: Tensor
    tol: float

    @property
    def converged(self) -> bool:
        return bool((self.relative_residual <= self.tol).all())


def pcg(
    matmul: Callable[[Tensor], Tensor],
    rhs: Tensor,
    precondition: Callable[[Tensor], Tensor],
    *,
    tol: float,
    max_iter: int,
    on_iteration: IterationHook | None = None,
) -> CGResult:
    """Batched PCG: one product with the active columns of the search directions per step.

    A column stops (its coefficients freeze) once ``|r| <= tol |b|``, so converged columns
    cost nothing more and their Lanczos coefficients stay those of a clean process.
    """
    b = rhs.to(torch.float64)
    x = torch.zeros_like(b)
    r = b.clone()
    z = precondition(r)
    p = z.clone()
    rz = (r * z).sum(0)
    initial_norms = rz.clone()
    b_norm = b.norm(dim=0).clamp_min(torch.finfo(torch.float64).tiny)
    residual = r.norm(dim=0) / b_norm
    active = residual > tol
    steps = torch.zeros(b.shape[1], dtype=torch.long, device=b.device)
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    products = 0
    while bool(active.any()) and products < max_iter:
        idx = active.nonzero().ravel()
        ap = torch.zeros_like(p)
        ap[:, idx] = matmul(p[:, idx]).to(b)
        products += 1
        alpha = torch.where(active, rz / (p * ap).sum(0), torch.zeros_like(rz))
        x += alpha * p
        r -= alpha * ap
        z = precondition(r)
        rz_next = (r * z).sum(0)
        beta = torch.where(active, rz_next / rz, torch.zeros_like(rz))
        p = z + beta * p
        rz = torch.where(active, rz_next, rz)
        alphas.append(alpha)
        betas.append(beta)
        steps += active.long()
        residual = torch.where(active, r.norm(dim=0) / b_norm, residual)
        active &= residual > tol
        if on_iteration is not None:
            on_iteration(products, float(residual.max()))
    empty = torch.zeros(0, b.shape[1], dtype=torch.float64, device=b.device)
    return CGResult(
        solution=x,
        products=products,
        steps=steps,
        relative_residual=residual,
        alphas=torch.stack(alphas) if alphas else empty,
        betas=torch.stack(betas) if betas else empty,
        initial_norms=initial_norms,
        tol=tol,
    )


def lanczos_log_quadrature(result: CGResult) -> Tensor:
    """``e1' log(T) e1`` per column, T the Lanczos tridiagonal rebuilt from CG coefficients.

    ``T_ii = 1/a_i + b_{i-1}/a_{i-1}`` and ``T_i,i+1 = sqrt(b_i)/a_i`` (Saad 6.7.3). Times
    ``initial_norms`` this is Gauss quadrature of ``b' P^-1/2 log(P^-1/2 K^ P^-1/2) P^-1/2 b``.
    """
    out = torch.zeros(result.steps.shape[0], dtype=torch.float64)
    for j, m in enumerate(result.steps.tolist()):
        if m == 0:
            continue
        a, b = result.alphas[:m, j].cpu(), result.betas[:m, j].cpu()
        diag = 1.0 / a
        diag[1:] += b[:-1] / a[:-1]
        off = b[:-1].sqrt() / a[:-1]
        tri = torch.diag(diag) + torch.diag(off, 1) + torch.diag(off, -1)
        eigenvalues, eigenvectors = torch.linalg.eigh(tri)
        tiny = torch.finfo(torch.float64).tiny
        out[j] = (eigenvectors[0].square() * eigenvalues.clamp_min(tiny).log()).sum()
    return out


class PivotedCholesky:
    """``P = L L' + s2 I`` with L (n, k) from the greedy pivoted Cholesky of K.

    Each step evaluates one row of K (n entries), so building costs k n kernel entries.
    Solves use Woodbury with the k x k Cholesky factor of ``s2 I + L'L``.
    """

    def __init__(self, factor: Tensor, noise_variance: float) -> None:
        self.factor = factor
        self.noise_variance = noise_variance
        rank = factor.shape[1]
        inner = factor.T @ factor
        inner.diagonal().add_(noise_variance)
        self._inner_chol = torch.linalg.cholesky(inner) if rank else inner

    @property
    def rank(self) -> int:
        return int(self.factor.shape[1])

    @classmethod
    def build(
        cls, tiles: TiledKernel, x: Tensor, noise_variance: float, rank: int
    ) -> PivotedCholesky:
        factor = pivoted_cholesky(
            tiles.kernel.diag(x),
            lambda pivot: tiles.evaluate(x[pivot : pivot + 1], x)[0],
            rank,
            tolerance=1e-12,
        )
        return cls(factor, noise_variance)

    def solve(self, r: Tensor) -> Tensor:
        if not self.rank:
            return r / self.noise_variance
        low = cholesky_solve(self._inner_chol, self.factor.T @ r)
        return (r - self.factor @ low) / self.noise_variance

    def logdet(self) -> float:
        n = self.factor.shape[0]
        inner = 2.0 * float(self._inner_chol.diagonal().log().sum()) if self.rank else 0.0
        return inner + (n - self.rank) * math.log(self.noise_variance)

    def sample(self, count: int, generator: torch.Generator) -> Tensor:
        """``count`` columns drawn from N(0, P)."""
        n = self.factor.shape[0]
        noise = torch.randn(n, count, generator=generator, dtype=torch.float64)
        low = torch.randn(self.rank, count, generator=generator, dtype=torch.float64)
        device = self.factor.device
        return self.factor @ low.to(device) + math.sqrt(self.noise_variance) * noise.to(device)


# -- the pooled GP ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PooledFit:
    """Log marginal likelihood ``-(y'K^-1 y + log det K^ + n log 2 pi) / 2`` and how it was got.

    ``log_det`` is a stochastic estimate with standard error ``log_det_stderr`` (over the
    probes); the data fit is exact up to the CG tolerance.
    """

    log_marginal_likelihood: float
    data_fit: float
    log_det: float
    log_det_stderr: float
    cg_products: int
    relative_residual: float
    converged: bool
    probes: int
    preconditioner_rank: int


class PooledGP:
    """Exact GP regression on all of ``(x, y)`` through a lazy ``K + s2 I``.

    ``operator`` defaults to a ``KernelOperator`` on one device; pass a distributed one
    (same inputs, same noise) to spread the products. The preconditioner is built here, on
    the driver, from ``precond_rank`` rows of K.
    """

    def __init__(
        self,
        kernel: Kernel,
        x: Tensor,
        y: Tensor,
        noise_variance: float,
        options: PooledOptions | None = None,
        operator: GramOperator | None = None,
    ) -> None:
        self.options = options or PooledOptions()
        x, y = _check_training(x, y)
        if not (math.isfinite(noise_variance) and noise_variance > 0):
            raise ValueError(f"noise_variance must be finite and > 0, got {noise_variance}")
        self.kernel = kernel
        self.noise_variance = float(noise_variance)
        self.device = resolve_device(self.options.device)
        self.x = x.to(self.device, self.options.dtype)
        self.y = y.to(self.device, torch.float64)
        self.operator = operator or KernelOperator(kernel, x, noise_variance, self.options)
        if self.operator.size != x.shape[0]:
            raise ValueError(f"operator has {self.operator.size} rows, data {x.shape[0]}")
        self.tiles = TiledKernel(kernel, self.options, self.device)
        self.preconditioner = PivotedCholesky.build(
            self.tiles, self.x, self.noise_variance, self.options.precond_rank
        )
        self.weights: Tensor | None = None  # (K + s2 I)^-1 y once fitted

    def _solve(self, rhs: Tensor, on_iteration: IterationHook | None) -> CGResult:
        result = pcg(
            self.operator.matmul,
            rhs,
            self.preconditioner.solve,
            tol=self.options.cg_tol,
            max_iter=self.options.max_iter,
            on_iteration=on_iteration,
        )
        if not result.converged:
            warnings.warn(
                f"CG stopped after {result.products} products at relative residual "
                f"{float(result.relative_residual.max()):.2e} > cg_tol {self.options.cg_tol:.0e}; "
                "raise max_iter or precond_rank",
                RuntimeWarning,
                stacklevel=3,
            )
        return result

    def fit(self, on_iteration: IterationHook | None = None) -> PooledFit:
        """Solve for ``y`` and the log-det probes together, in one batched PCG."""
        generator = torch.Generator().manual_seed(self.options.seed)
        probes = self.preconditioner.sample(self.options.probes, generator)
        result = self._solve(torch.cat([self.y[:, None], probes], dim=1), on_iteration)
        self.weights = result.solution[:, 0]
        data_fit = float(self.y @ self.weights)
        terms = (result.initial_norms[1:].cpu() * lanczos_log_quadrature(result)[1:]).to(
            torch.float64
        )
        log_det = self.preconditioner.logdet() + float(terms.mean())
        stderr = float(terms.std() / math.sqrt(terms.numel())) if terms.numel() > 1 else math.nan
        n = self.y.shape[0]
        return PooledFit(
            log_marginal_likelihood=-0.5 * (data_fit + log_det + n * math.log(2 * math.pi)),
            data_fit=data_fit,
            log_det=log_det,
            log_det_stderr=stderr,
            cg_products=result.products,
            relative_residual=float(result.relative_residual[0]),
            converged=result.converged,
            probes=self.options.probes,
            preconditioner_rank=self.preconditioner.rank,
        )

    def fitted_weights(self) -> Tensor:
        """``(K + s2 I)^-1 y``; the predictive mean at x is ``K(x, X)`` times it."""
        if self.weights is None:
            raise RuntimeError("call fit() before predicting")
        return self.weights

    def _test_inputs(self, x_test: Tensor) -> Tensor:
        if x_test.ndim != 2 or x_test.shape[1] != self.x.shape[1]:
            raise ValueError(
                f"test inputs must be (m, {self.x.shape[1]}), got {tuple(x_test.shape)}"
            )
        return x_test.to(self.device, self.options.dtype)

    def predict_mean(self, x_test: Tensor) -> Tensor:
        """``K(x_test, X) (K + s2 I)^-1 y``, one tiled cross product."""
        weights = self.fitted_weights()
        x_test = self._test_inputs(x_test)
        return self.operator.cross_matmul(x_test, weights[:, None])[:, 0].to(self.device)

    def predict(
        self, x_test: Tensor, on_batch: Callable[[int, int], None] | None = None
    ) -> Prediction:
        """Mean and variance of noisy targets; variances by PCG on the cross-covariance columns.

        ``variance_batch`` test points are solved at once (their (n, batch) columns are the
        largest thing this holds); ``on_batch(done, total)`` reports progress.
        """
        x_test = self._test_inputs(x_test)
        mean = self.predict_mean(x_test)
        variance = torch.empty_like(mean)
        total = x_test.shape[0]
        for batch in _slices(total, self.options.variance_batch):
            columns = self.operator.cross(x_test[batch]).to(self.device, torch.float64)
            solved = self._solve(columns, None).solution
            prior = self.kernel.diag(x_test[batch]).to(self.device, torch.float64)
            variance[batch] = prior - (columns * solved).sum(0) + self.noise_variance
            if on_batch is not None:
                on_batch(batch.stop, total)
        return Prediction(mean, variance.clamp_min(self.noise_variance * 1e-12))


def _check_training(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"training inputs must be (n, P) with n >= 1, got {tuple(x.shape)}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"targets must be ({x.shape[0]},) to match the inputs, got {tuple(y.shape)}"
        )
    if not (bool(torch.isfinite(x).all()) and bool(torch.isfinite(y).all())):
        raise ValueError("training inputs and targets must be finite")
    return x, y
