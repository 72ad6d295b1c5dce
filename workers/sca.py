"""Successive convex approximation (SCA) of the negative log marginal likelihood.

Per agent, with ``C(a) = sum_i a_i K_i + s2 I`` and ``a >= lb`` (``lb = 0`` for kernel
weights), the local objective is::

    F(a) = y' C(a)^-1 y + log det C(a) + lam'a + rho/2 |a - theta|^2

The quadratic-form term is convex in ``a`` and ``log det`` is concave, so its tangent at
``a_k`` (slope ``g_i = tr(C_k^-1 K_i)``) gives a convex upper bound ``U(a; a_k) >= F(a)``
that touches ``F`` at ``a_k``. DSCA minimises a convex model block by block, every block
from the same ``a_k`` (the blocks are independent and may run in parallel), each solved to
optimality by a primal-dual interior-point method, then searches back from the full step
of all blocks to ``1/S`` of it for ``F(a_{k+1}) <= F(a_k)``, keeping ``a_k`` when none is
lower: the objective decreases monotonically whatever the model.

Two block models (``SCAOptions.surrogate``):

* ``"tangent"``: the bound ``U`` itself. By joint convexity of ``U`` the average of the
  ``S`` block moves decreases ``U`` and hence ``F``, so the search always succeeds.
* ``"reference"`` (default): the block model of the SLIM-KL authors' conic program, whose
  quadratic term is ``y'(C(a) + s2 I)^-1 y``: their fixed part ``C_minus = C_k - C_i + s2 I``
  adds the noise to a ``C_k`` that already holds it. The extra noise flattens the quadratic
  term and so damps each block's move towards fitting ``y`` exactly; it is not a bound, so
  the search above is what keeps ``F`` monotone. On the short 1-D series it extrapolates
  better (SLIM-KL, J = 2: 12 of 14 datasets within 1.10x of the authors' error against 9
  with the tangent model; CO2 0.23 against 0.59); ``bench/RESULTS.md`` has both.

The block problem ``min_{a >= lb} y'C(a)^-1 y + c'a + rho/2 |a - m|^2`` has gradient
``-(K_i u)'u + ...`` with ``u = C^-1 y`` and Hessian ``2 V C^-1 V' + rho I`` with rows
``V_i = (K_i u)'``; both come from one ``matvec`` reduction of the Gram block, so no
commercial conic solver is needed. Solving it exactly matters: an approximate block solve
(a few projected Newton steps) leaves SCA crawling along the bound, and on the short 1-D
series ends at far worse likelihoods and predictions than the authors' conic solver reaches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from gramfed.workers.cholesky import cholesky_solve, refined_solve
from gramfed.workers.gram import NoiseAugmentedGram, SubKernelGram

ProgressHook = Callable[[int, float], None]
Surrogate = Literal["reference", "tangent"]

# Below this many points a float32 factor saves less than its refinement steps cost (2-core
# CPU, one solve: 5.7 ms mixed against 4.9 ms float64 at 512 points, 14 against 18 at 1,024).
MIXED_PRECISION_MIN_POINTS = 1024


@dataclass(frozen=True)
class SCAOptions:
    """Stopping rules and block structure of the local solver (reference defaults).

    ``mixed_precision``: the interior point factors its covariances in float32 and refines
    each solve to float64 accuracy (``cholesky.refined_solve``) on shards of at least
    ``MIXED_PRECISION_MIN_POINTS`` points, falling back to float64 where that fails.
    """

    max_iter: int = 100
    tol: float = 1e-3
    blocks: int = 4
    inner_max_iter: int = 200
    inner_tol: float = 1e-9
    surrogate: Surrogate = "reference"
    mixed_precision: bool = True

    def __post_init__(self) -> None:
        if self.surrogate not in ("reference", "tangent"):
            raise ValueError(f"surrogate must be 'reference' or 'tangent', got {self.surrogate!r}")


@dataclass
class ConsensusPenalty:
    """The ADMM terms lam'a + rho/2 |a - theta|^2 of one agent (zero when rho = 0)."""

    lam: Tensor
    theta: Tensor
    rho: float

    def value(self, a: Tensor) -> float:
        return float(self.lam @ a + 0.5 * self.rho * (a - self.theta).square().sum())

    @classmethod
    def none(cls, size: int, device: torch.device) -> ConsensusPenalty:
        zeros = torch.zeros(size, dtype=torch.float64, device=device)
        return cls(lam=zeros, theta=zeros.clone(), rho=0.0)


@dataclass
class Evaluation:
    """F at one point, with the covariance ``C(a)`` and its factor that the next step reuses."""

    weights: Tensor
    covariance: Tensor
    chol: Tensor
    alpha_y: Tensor
    value: float


@dataclass
class SCAResult:
    weights: Tensor
    objective_history: list[float] = field(default_factory=list)
    iterations: int = 0


class LocalProblem:
    """One agent's marginal-likelihood objective over the GSMP weights."""

    def __init__(
        self,
        gram: SubKernelGram | NoiseAugmentedGram,
        y: Tensor,
        noise_variance: float,
        options: SCAOptions | None = None,
    ) -> None:
        if noise_variance <= 0 or not math.isfinite(noise_variance):
            raise ValueError(f"noise variance must be positive and finite, got {noise_variance}")
        self.gram = gram
        self.y = y.to(gram.device, torch.float64)
        self.noise_variance = float(noise_variance)
        self.options = options or SCAOptions()
        # The noise the block models see (module docstring): once, or the reference's twice.
        self.block_noise = self.noise_variance * (
            2.0 if self.options.surrogate == "reference" else 1.0
        )
        self.size = gram.num_components
        for block in _blocks(self.size, self.options.blocks):
            gram.compress(block)

    # -- objective --------------------------------------------------------------------------
    def evaluate(
        self, weights: Tensor, penalty: ConsensusPenalty, covariance: Tensor | None = None
    ) -> Evaluation:
        """F at ``weights``; ``covariance`` is ``C(weights)`` where the caller has it."""
        if covariance is None:
            covariance = self.gram.weighted_sum(weights)
            covariance.diagonal().add_(self.noise_variance)
        chol, alpha_y = self._solve_y(covariance)
        value = float(self.y @ alpha_y) + 2.0 * float(torch.log(torch.diagonal(chol)).sum())
        return Evaluation(weights, covariance, chol, alpha_y, value + penalty.value(weights))

    def gradient(self, point: Evaluation, penalty: ConsensusPenalty) -> Tensor:
        """dF/da_i = -u'K_i u + tr(C^-1 K_i) + lam_i + rho (a_i - theta_i)."""
        quad = self.gram.matvec(point.alpha_y) @ point.alpha_y
        trace = self.gram.inner(torch.cholesky_inverse(point.chol))
        return -quad + trace + penalty.lam + penalty.rho * (point.weights - penalty.theta)

    # -- solver -----------------------------------------------------------------------------
    def solve(
        self,
        start: Tensor,
        penalty: ConsensusPenalty,
        progress: ProgressHook | None = None,
    ) -> SCAResult:
        """DSCA from ``start`` until the relative objective change falls below ``tol``."""
        # No autograd bookkeeping: DSCA is thousands of small tensor operations, whose dispatch
        # costs more than their arithmetic on small shards (passengerdata's fit: 9.8 s -> 8.0
        # s, the same weights to the last bit). The result leaves as an ordinary tensor, which
        # callers may update in place.
        with torch.inference_mode():
            result = self._descend(start, penalty, progress)
        result.weights = result.weights.clone()
        return result

    def _descend(
        self, start: Tensor, penalty: ConsensusPenalty, progress: ProgressHook | None
    ) -> SCAResult:
        opts = self.options
        point = self.evaluate(start.to(self.gram.device, torch.float64).clamp_min(0.0), penalty)
        result = SCAResult(weights=point.weights, objective_history=[point.value])
        blocks = _blocks(self.size, opts.blocks)
        for k in range(1, opts.max_iter + 1):
            slope = self.gram.inner(torch.cholesky_inverse(point.chol)) + penalty.lam
            model_u = self._model_solution(point)
            target = torch.empty_like(point.weights)
            for block in blocks:
                target[block] = self._solve_block(point, model_u, block, slope[block], penalty)
            point = self._line_search(point, target, penalty, len(blocks))
            previous = result.objective_history[-1]
            result.objective_history.append(point.value)
            result.weights, result.iterations = point.weights, k
            if progress is not None:
                progress(k, point.value)
            if abs(point.value - previous) / max(1.0, abs(point.value)) < opts.tol:
                break
        return result

    def _line_search(
        self, point: Evaluation, target: Tensor, penalty: ConsensusPenalty, num_blocks: int
    ) -> Evaluation:
        direction = target - point.weights
        if not bool(direction.any()):
            return point
        step_sum = self.gram.weighted_sum(direction)
        step = 1.0
        while True:
            trial = self.evaluate(
                (point.weights + step * direction).clamp_min(0.0),
                penalty,
                torch.add(point.covariance, step_sum, alpha=step),
            )
            if trial.value <= point.value:
                return trial
            if step <= 1.0 / num_blocks:
                # Convexity guarantees descent at 1/S up to rounding; keep the old point then.
                return point
            step = max(step / 2.0, 1.0 / num_blocks)

    def _model_solution(self, point: Evaluation) -> Tensor:
        """``(C(a_k) + block_noise I)^-1 y``: the block models' ``u`` at ``a_k``."""
        if self.block_noise == self.noise_variance:
            return point.alpha_y
        return self._solve_model(self._block_covariance(point.covariance.clone()))[1]

    def _solve_block(
        self,
        point: Evaluation,
        model_u: Tensor,
        block: slice,
        slope: Tensor,
        penalty: ConsensusPenalty,
    ) -> Tensor:
        """The block surrogate's minimiser, by interior point on its free weights only.

        A weight that is zero at ``a_k`` with a non-negative gradient of the block model
        there (``model_u`` is the model's ``C^-1 y`` at ``a_k``) is left out: most of a sparse
        grid is, and the interior-point steps then cost reductions over the free weights
        alone. The left-out weights are checked at the free weights' optimum; any with a
        negative gradient there joins them and the block is solved again, so the result
        meets the whole block's optimality conditions.
        """
        start = point.weights[block]
        positions = torch.arange(self.size, device=start.device)[block]
        target, u, free = start.clone(), model_u, start > 0
        tolerance: float | None = None  # None: not solved yet, any descent direction joins
        while True:
            resting = torch.nonzero(~free).ravel()
            grad = (
                -(self.gram.matvec(u, positions[resting]) @ u)
                + slope[resting]
                - penalty.rho * penalty.theta[positions[resting]]
            )
            joining = resting[grad < -(tolerance or 0.0)]
            if tolerance is not None and joining.numel() == 0:
                return target
            free[joining] = True
            if not bool(free.any()):
                return target  # every weight at zero, none with a descent direction
            target[free], u, value = self._interior_point(
                point, positions[free], target[free], slope[free], penalty
            )
            tolerance = self.options.inner_tol * max(1.0, abs(value))

    def _interior_point(
        self,
        point: Evaluation,
        chosen: Tensor,
        initial: Tensor,
        slope: Tensor,
        penalty: ConsensusPenalty,
    ) -> tuple[Tensor, Tensor, float]:
        """Primal-dual interior point on the convex surrogate over the weights ``chosen``,
        the block's other weights held at zero; returns the minimiser, ``C^-1 y`` there and
        the surrogate's value.

        The problem ``min_{a >= 0} q(a) + c'a + rho/2 |a - m|^2`` with
        ``q(a) = y'C(a)^-1 y`` (``C`` with the block model's noise) has the optimality
        conditions ``grad = s``, ``a * s = 0``, ``a, s >= 0``. Each step is Mehrotra's
        predictor-corrector on those conditions: one factorisation of ``H + S/A``
        (``H = 2 V C^-1 V' + rho I``) serves the affine step, which sets the centring
        ``sigma = (mu_aff / mu)^3``, and the corrected step; the primal step backtracks on
        the barrier merit ``f - sigma mu sum log a``. ``q``'s Hessian has rank at most ``n``,
        far below the block's size on a large grid; the barrier terms keep the system well
        posed where a plain projected Newton method stalls at the bound. With mixed precision
        the Newton system is formed from the float32 factor: that perturbs the direction, not
        the values and gradients the steps are judged by.
        """
        opts = self.options
        rho, centre = penalty.rho, penalty.theta[chosen]
        size = slope.numel()
        eye = torch.eye(size, dtype=torch.float64, device=slope.device)
        # k_i(x, x) = 1, so y'y / n is about the weights' total: the interior offset's scale.
        offset = 1e-3 * float(self.y @ self.y) / self.gram.n / size
        a = initial.clamp_min(offset)
        covariance = self.gram.weighted_sum(a - point.weights[chosen], chosen)
        covariance = self._block_covariance(covariance.add_(point.covariance))
        chol, u, value = self._block_value(covariance, a, slope, rho, centre)
        v = self.gram.matvec(u, chosen)
        grad = -(v @ u) + slope + rho * (a - centre)
        dual = torch.maximum(grad, 1e-3 * max(1.0, abs(value)) / size / a).clamp_min(1e-12)
        for _ in range(opts.inner_max_iter):
            mu = float(a @ dual) / size
            scale = max(1.0, abs(value))
            if (
                mu * size <= opts.inner_tol * scale
                and float((grad - dual).abs().max()) <= opts.inner_tol * scale
            ):
                break
            z = torch.linalg.solve_triangular(chol, v.T.to(chol.dtype), upper=False).double()
            factor = torch.linalg.cholesky(2.0 * (z.T @ z) + rho * eye + torch.diag(dual / a))

            def newton(rhs: Tensor, factor: Tensor = factor) -> Tensor:
                return cholesky_solve(factor, rhs)

            affine_a = newton(-grad)
            affine_dual = -dual - dual / a * affine_a
            mu_affine = (
                float(
                    (a + _to_boundary(a, affine_a, 1.0) * affine_a)
                    @ (dual + _to_boundary(dual, affine_dual, 1.0) * affine_dual)
                )
                / size
            )
            sigma = _centring(mu_affine, mu)
            correction = (sigma * mu - affine_a * affine_dual) / a
            step_a = newton(correction - grad)
            merit_slope = float((grad - sigma * mu / a) @ step_a)
            if merit_slope >= 0.0:  # the correction spoiled descent: plain centring step
                correction = sigma * mu / a
                step_a = newton(correction - grad)
                merit_slope = float((grad - correction) @ step_a)
            if -merit_slope <= 1e-13 * scale:
                break  # a full step would lower the merit by less than its rounding
            step_dual = correction - dual - dual / a * step_a
            merit = value - sigma * mu * float(torch.log(a).sum())
            step_sum = self.gram.weighted_sum(step_a, chosen)
            t = _to_boundary(a, step_a)
            while t > 1e-8:
                cand = a + t * step_a
                cand_covariance = torch.add(covariance, step_sum, alpha=t)
                cand_chol, cand_u, cand_value = self._block_value(
                    cand_covariance, cand, slope, rho, centre
                )
                cand_merit = cand_value - sigma * mu * float(torch.log(cand).sum())
                if cand_merit <= merit + 1e-4 * t * merit_slope:
                    break
                t *= 0.5
            else:
                break  # no progress possible at this precision: the point is optimal enough
            a, covariance, chol, u, value = cand, cand_covariance, cand_chol, cand_u, cand_value
            dual = dual + _to_boundary(dual, step_dual) * step_dual
            if t < 1e-6:
                break  # crawling steps: rounding, not the problem, limits the precision
            v = self.gram.matvec(u, chosen)
            grad = -(v @ u) + slope + rho * (a - centre)
        # The path ends with inactive weights at about mu / s, zeros of the exact problem.
        return torch.where(a <= 1e-6 * offset, torch.zeros_like(a), a), u, value

    def _solve_y(self, covariance: Tensor) -> tuple[Tensor, Tensor]:
        """The Cholesky factor of ``covariance`` and ``covariance^-1 y``."""
        chol = _cholesky(covariance)
        return chol, cholesky_solve(chol, self.y)

    def _block_covariance(self, covariance: Tensor) -> Tensor:
        """``C(a)`` (noise once) turned in place into the block models' covariance."""
        if self.block_noise != self.noise_variance:
            covariance.diagonal().add_(self.block_noise - self.noise_variance)
        return covariance

    def _solve_model(self, covariance: Tensor) -> tuple[Tensor, Tensor]:
        """``_solve_y`` for the block models, which need no log det: the factor may be
        float32 with a refined solve (``SCAOptions.mixed_precision``)."""
        solved = None
        if self.options.mixed_precision and self.gram.n >= MIXED_PRECISION_MIN_POINTS:
            solved = refined_solve(covariance, self.y)
        return solved or self._solve_y(covariance)

    def _block_value(
        self, covariance: Tensor, a: Tensor, slope: Tensor, rho: float, centre: Tensor
    ) -> tuple[Tensor, Tensor, float]:
        """The block model's value at ``a``, ``u = C^-1 y`` and the factor of ``C``."""
        chol, u = self._solve_model(covariance)
        proximity = 0.5 * rho * float((a - centre).square().sum())
        return chol, u, float(self.y @ u) + float(slope @ a) + proximity


def _centring(mu_affine: float, mu: float) -> float:
    """Mehrotra's centring parameter ``(mu_aff / mu)^3``, at most 1.

    The duals of interior weights shrink geometrically and, over a long solve, can underflow
    to zero (seen on wine1279's 8-bit fit after 145 steps): with ``mu = 0`` no barrier is left
    to centre on, and the step is the affine one.
    """
    return min(1.0, (mu_affine / mu) ** 3) if mu > 0.0 else 0.0


def _to_boundary(x: Tensor, step: Tensor, fraction: float = 0.995) -> float:
    """The longest step up to 1 keeping ``x + t step`` positive, as a fraction of the way."""
    # x / step < 0 exactly where the step shrinks x (x > 0); one reduction, one sync
    nearest = float(torch.where(step < 0, x / step, -math.inf).max())
    return min(1.0, -fraction * nearest)


def _blocks(size: int, count: int) -> list[slice]:
    count = max(1, min(count, size))
    edges = torch.linspace(0, size, count + 1).round().long().tolist()
    return [slice(edges[i], edges[i + 1]) for i in range(count)]


def _cholesky(covariance: Tensor) -> Tensor:
    """The lower Cholesky factor of ``covariance``."""
    chol, info = torch.linalg.cholesky_ex(covariance)
    if int(info) != 0:
        raise FloatingPointError(
            "covariance is not positive definite; the noise variance is too small for the data"
        )
    return chol
