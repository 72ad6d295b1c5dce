"""Solves with a Cholesky factor."""

from __future__ import annotations

import torch
from torch import Tensor


def cholesky_solve(chol: Tensor, rhs: Tensor) -> Tensor:
    """``(L L')^-1 rhs`` for the lower factor ``L``; ``rhs`` a vector or a matrix of columns
    (for a batch of factors (B, n, n): a vector (B, n) or columns (B, n, k) each).

    Two triangular solves rather than ``torch.cholesky_solve``, which on a CPU takes 11 times
    as long at n = 4,750 (0.10 s against 0.009 s for one column) and is never faster for
    small factors; autograd runs through both.
    """
    vector = rhs.dim() == chol.dim() - 1
    columns = rhs[..., None] if vector else rhs
    half = torch.linalg.solve_triangular(chol, columns, upper=False)
    solution = torch.linalg.solve_triangular(chol.mT, half, upper=True)
    return solution[..., 0] if vector else solution


def refined_solve(matrix: Tensor, rhs: Tensor, max_steps: int = 10) -> tuple[Tensor, Tensor] | None:
    """A float32 Cholesky factor of ``matrix`` (float64, positive definite) and
    ``matrix^-1 rhs`` to float64 accuracy, or None where float32 cannot deliver it.

    LAPACK's mixed-precision scheme (``dsposv``): factor in single precision, then correct
    ``x += (L L')^-1 r`` with the residual ``r = rhs - A x`` formed in double, until
    ``|r|_inf <= |x|_inf |A|_inf eps sqrt(n)``, the backward error a float64 solve is bounded
    by; one correction more then brings the forward error to a float64 solve's (that bound
    alone left it 20 times larger on a GP covariance in the tests). Each step shrinks the
    error by about ``cond(A) 2^-24``, so it converges while ``A`` is far from singular in
    float32; where the factorisation fails or ``max_steps`` corrections do not suffice, None
    tells the caller to factor in float64. A float32 factorisation takes 0.53 s against
    0.88 s at n = 4,750 on a 2-core CPU (more on GPUs); the corrections are matrix-vector
    products.
    """
    chol, info = torch.linalg.cholesky_ex(matrix.to(torch.float32))
    if int(info) != 0:
        return None
    # |A|_inf by a fused reduction: abs().sum(1) writes an n x n temporary, 8x slower at 4,750
    row_sums = torch.linalg.vector_norm(matrix, 1, dim=1)
    limit = float(row_sums.max()) * torch.finfo(torch.float64).eps * rhs.numel() ** 0.5

    def corrected(solution: Tensor, residual: Tensor) -> Tensor:
        return solution + cholesky_solve(chol, residual.to(torch.float32)).to(rhs.dtype)

    solution = corrected(torch.zeros_like(rhs), rhs)
    for _ in range(max_steps):
        residual = rhs - matrix @ solution
        if float(residual.abs().max()) <= float(solution.abs().max()) * limit:
            return chol, corrected(solution, residual)
        solution = corrected(solution, residual)
    return None
