"""Successive convex approximation (SCA) of the negative log marginal likelihood.

Per agent, with ``C(a) = sum_i a_i K_i + s2 I`` and ``a >= lb`` (``lb = 0`` for kernel
weights), the local objective is::

    F(a) = y' C(a)^-1 y + log det C(a) + lam'a + rho/2 |a - theta|^2

The quadratic-form term is convex in ``a`` and ``log det`` is concave, so its tangent at
``a_k`` (slope ``g_i = tr(C_k^-1 K_i)``) gives a convex upper bound ``U(a; a_k) >= F(a)``
that touches ``F`` at ``a_k``. DSCA minimises a convex model block by block, every block
from the same ``a_k`` (the blocks are independent: on small shards their interior points
run as one batch), each solved to optimality by a primal-dual interior-point method, then
searches back from the full step of all blocks to ``1/S`` of it for
``F(a_{k+1}) <= F(a_k)``, keeping ``a_k`` when none is lower: the objective decreases
monotonically whatever the model.

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

from gramfed.workers.block_kernels import (
    BlockKernels,
    FeatureBlockKernels,
    LazyBlockKernels,
    padded_width,
)
from gramfed.workers.cholesky import cholesky_solve, refined_solve
from gramfed.workers.gram import NoiseAugmentedGram, SubKernelGram

ProgressHook = Callable[[int, float], None]
Surrogate = Literal["reference", "tangent"]

# Below this many points a float32 factor saves less than its refinement steps cost (2-core
# CPU, one solve: 5.7 ms mixed against 4.9 ms float64 at 512 points, 14 against 18 at 1,024).
MIXED_PRECISION_MIN_POINTS = 1024
# The blocks' interior points run as one batch in product form where a batched reduction
# costs at most this many flops (B n^2 K 2^P): there dispatch, not arithmetic, dominates.
# Past it the Gram stack's own reductions (low-rank envelope, compressed block bases) win:
# cccp1000 (500 points a shard, 2^4 features a component) took 70.9 s batched, 17.9 s not.
BATCHED_BLOCK_FLOPS = 1e7


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
            target = self._solve_blocks(point, self._model_solution(point), blocks, slope, penalty)
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
        return self._solve_model(self._block_covariance(point.covariance.clone()[None]))[1][0]

    def _solve_blocks(
        self,
        point: Evaluation,
        model_u: Tensor,
        blocks: list[slice],
        slope: Tensor,
        penalty: ConsensusPenalty,
    ) -> Tensor:
        """Every block surrogate's minimiser, by interior point on its free weights only.

        A weight that is zero at ``a_k`` with a non-negative gradient of its block's model
        there (``model_u`` is the model's ``C^-1 y`` at ``a_k``) is left out: most of a sparse
        grid is, and the interior-point steps then cost reductions over the free weights
        alone. The left-out weights are checked at the free weights' optimum; any with a
        negative gradient there joins them and the block is solved again, so the result
        meets the whole block's optimality conditions. The blocks needing a solve are solved
        together (``_interior_point``).
        """
        target = point.weights.clone()
        free = target > 0
        positions = torch.arange(self.size, device=target.device)
        solution = [model_u] * len(blocks)
        # None: not solved yet, so any descent direction joins
        tolerance: list[float | None] = [None] * len(blocks)
        pending = list(range(len(blocks)))
        while pending:
            unsolved = []
            for b in pending:
                block, u = blocks[b], solution[b]
                resting = positions[block][~free[block]]
                grad = (
                    -(self.gram.matvec(u, resting) @ u)
                    + slope[resting]
                    - penalty.rho * penalty.theta[resting]
                )
                joining = resting[grad < -(tolerance[b] or 0.0)]
                if tolerance[b] is not None and joining.numel() == 0:
                    continue  # solved: no left-out weight has a descent direction
                free[joining] = True
                if bool(free[block].any()):  # else every weight at zero, none descending
                    unsolved.append(b)
            chosen = [positions[blocks[b]][free[blocks[b]]] for b in unsolved]
            for group, kernels in self._block_kernels(chosen):
                weights, u, value = self._interior_point(point, kernels, target, slope, penalty)
                for row, i in enumerate(group):
                    b, components = unsolved[i], chosen[i]
                    target[components] = weights[row, : components.numel()]
                    solution[b] = u[row]
                    tolerance[b] = self.options.inner_tol * max(1.0, abs(float(value[row])))
            pending = unsolved
        return target

    def _block_kernels(self, chosen: list[Tensor]) -> list[tuple[list[int], BlockKernels]]:
        """Which blocks' interior points run together, and on what: as one batch in the
        product form of a spectral stack where that is cheap (``BATCHED_BLOCK_FLOPS``), else
        one block at a time through the Gram stack's own reductions."""
        if not chosen:
            return []
        n, spectral = self.gram.n, self.gram.spectral
        if (
            spectral is not None
            and len(chosen) * n * n * padded_width(chosen) * spectral.width <= BATCHED_BLOCK_FLOPS
        ):
            return [(list(range(len(chosen))), FeatureBlockKernels(spectral, chosen))]
        return [([i], LazyBlockKernels(self.gram, c)) for i, c in enumerate(chosen)]

    def _interior_point(
        self,
        point: Evaluation,
        kernels: BlockKernels,
        initial: Tensor,
        slope: Tensor,
        penalty: ConsensusPenalty,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Primal-dual interior point on the convex surrogates of B blocks at once, each over
        its free weights ``kernels.chosen[b]`` with the block's other weights held at zero,
        starting from ``initial`` (indexed like all weights); returns the minimisers (B, K)
        (zero-padded), ``C^-1 y`` there (B, n) and the surrogates' values (B,).

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

        The blocks share nothing but the batch: each keeps its own step lengths, centring
        and stopping, and leaves the batch (its values frozen) when it stops, so each result
        is the one a solve of that block alone reaches. Padding entries hold ``a = 1`` with
        zero kernels, slope, dual and step, so they enter no sum.
        """
        opts, rho = self.options, penalty.rho
        chosen = kernels.chosen
        width = padded_width(chosen)
        device = point.weights.device
        mask = torch.zeros(len(chosen), width, dtype=torch.bool, device=device)
        anchor = torch.zeros(mask.shape, dtype=torch.float64, device=device)  # a_k
        start = torch.ones_like(anchor)
        centre = torch.ones_like(anchor)  # equal to a on the padding: no proximity term there
        slopes = torch.zeros_like(anchor)
        for b, components in enumerate(chosen):
            k = components.numel()
            mask[b, :k] = True
            anchor[b, :k] = point.weights[components]
            start[b, :k] = initial[components]
            centre[b, :k] = penalty.theta[components]
            slopes[b, :k] = slope[components]
        sizes = mask.sum(1).to(torch.float64)
        # k_i(x, x) = 1, so y'y / n is about the weights' total: the interior offset's scale.
        offset = 1e-3 * float(self.y @ self.y) / self.gram.n / sizes
        a = torch.where(mask, start.clamp_min(offset[:, None]), 1.0)
        covariance = kernels.weighted_sum(torch.where(mask, a - anchor, 0.0))
        covariance = self._block_covariance(covariance.add_(point.covariance))
        chol, u, value = self._block_values(covariance, a, slopes, rho, centre)
        v = kernels.matvec(u)
        grad = -(v @ u[..., None]).squeeze(-1) + slopes + rho * (a - centre)
        floor = 1e-3 * value.abs().clamp_min(1.0) / sizes
        dual = torch.maximum(grad, floor[:, None] / a).clamp_min(1e-12).mul_(mask)
        eye = torch.eye(width, dtype=torch.float64, device=device)
        padding = (~mask).to(torch.float64)
        running = torch.ones(len(chosen), dtype=torch.bool, device=device)
        for _ in range(opts.inner_max_iter):
            mu = (a * dual).sum(1) / sizes
            scale = value.abs().clamp_min(1.0)
            running &= ~(
                (mu * sizes <= opts.inner_tol * scale)
                & ((grad - dual).abs().amax(1) <= opts.inner_tol * scale)
            )
            if not bool(running.any()):
                break
            z = torch.linalg.solve_triangular(chol, v.mT.to(chol.dtype), upper=False).double()
            system = 2.0 * (z.mT @ z) + rho * eye + torch.diag_embed(dual / a + padding)
            factor = _cholesky(system, running, "the interior point's Newton system")

            def newton(rhs: Tensor, factor: Tensor = factor) -> Tensor:
                return cholesky_solve(factor, rhs)

            affine_a = newton(-grad)
            affine_dual = -dual - dual / a * affine_a
            mu_affine = (
                (a + _to_boundary(a, affine_a, 1.0)[:, None] * affine_a)
                * (dual + _to_boundary(dual, affine_dual, 1.0)[:, None] * affine_dual)
            ).sum(1) / sizes
            centring = (_centring(mu_affine, mu) * mu)[:, None]  # sigma mu
            correction = (centring - affine_a * affine_dual) / a * mask
            step_a = newton(correction - grad)
            merit_slope = ((grad - centring / a) * step_a).sum(1)
            spoiled = merit_slope >= 0.0  # the correction spoiled descent: plain centring step
            if bool((spoiled & running).any()):
                plain = centring / a * mask
                plain_step = newton(plain - grad)
                correction = torch.where(spoiled[:, None], plain, correction)
                step_a = torch.where(spoiled[:, None], plain_step, step_a)
                merit_slope = torch.where(
                    spoiled, ((grad - plain) * plain_step).sum(1), merit_slope
                )
            # a full step would lower the merit by less than its rounding
            running &= -merit_slope > 1e-13 * scale
            if not bool(running.any()):
                break
            step_dual = correction - dual - dual / a * step_a
            merit = value - centring[:, 0] * torch.log(a).sum(1)
            # A stopped block's step may be garbage (its Newton system need not factor); a zero
            # step makes its candidates its current point exactly, so taking a whole batch of
            # candidates where every searching block accepts needs no merging.
            step_a = torch.where(running[:, None], step_a, 0.0)
            step_sum = kernels.weighted_sum(step_a)
            t = _to_boundary(a, step_a)
            searching, accepted = running.clone(), torch.zeros_like(running)
            while True:
                searching &= t > 1e-8
                if not bool(searching.any()):
                    break
                tried = torch.where(searching, t, 0.0)
                cand = a + tried[:, None] * step_a
                cand_covariance = torch.addcmul(covariance, tried[:, None, None], step_sum)
                cand_chol, cand_u, cand_value = self._block_values(
                    cand_covariance, cand, slopes, rho, centre
                )
                cand_merit = cand_value - centring[:, 0] * torch.log(cand).sum(1)
                better = searching & (cand_merit <= merit + 1e-4 * t * merit_slope)
                searching &= ~better
                candidates = (cand, cand_covariance, cand_chol, cand_u, cand_value)
                if not bool(searching.any()):
                    a, covariance, chol, u, value = candidates
                elif bool(better.any()):  # others backtrack: they keep their current points
                    current = (a, covariance, chol, u, value)
                    a, covariance, chol, u, value = (
                        torch.where(better.view(-1, *[1] * (new.dim() - 1)), new, old)
                        for new, old in zip(candidates, current, strict=True)
                    )
                accepted |= better
                t = torch.where(searching, 0.5 * t, t)
            dual = torch.where(
                accepted[:, None], dual + _to_boundary(dual, step_dual)[:, None] * step_dual, dual
            )
            # no acceptable step at this precision: optimal enough; crawling steps: rounding,
            # not the problem, limits the precision
            running &= accepted & (t >= 1e-6)
            if not bool(running.any()):
                break
            v = kernels.matvec(u)
            grad = -(v @ u[..., None]).squeeze(-1) + slopes + rho * (a - centre)
        # The path ends with inactive weights at about mu / s, zeros of the exact problem.
        a = torch.where((a <= 1e-6 * offset[:, None]) | ~mask, 0.0, a)
        return a, u, value

    def _solve_y(self, covariance: Tensor) -> tuple[Tensor, Tensor]:
        """The Cholesky factor of ``covariance`` (or of each in a batch) and ``C^-1 y``."""
        chol = _cholesky(covariance)
        return chol, cholesky_solve(chol, self.y.expand(covariance.shape[:-1]))

    def _block_covariance(self, covariance: Tensor) -> Tensor:
        """``C(a)`` (noise once; (n, n) or a batch) turned in place into the block models'."""
        if self.block_noise != self.noise_variance:
            covariance.diagonal(dim1=-2, dim2=-1).add_(self.block_noise - self.noise_variance)
        return covariance

    def _solve_model(self, covariance: Tensor) -> tuple[Tensor, Tensor]:
        """Factors of a batch of block-model covariances and their ``C^-1 y``. They need no
        log det, so a lone large one may have a float32 factor with a refined solve
        (``SCAOptions.mixed_precision``)."""
        if (
            self.options.mixed_precision
            and self.gram.n >= MIXED_PRECISION_MIN_POINTS
            and covariance.shape[0] == 1
        ):
            solved = refined_solve(covariance[0], self.y)
            if solved is not None:
                return solved[0][None], solved[1][None]
        return self._solve_y(covariance)

    def _block_values(
        self, covariance: Tensor, a: Tensor, slopes: Tensor, rho: float, centre: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The block models' values at ``a`` (B,), their ``u = C^-1 y`` and factors of ``C``."""
        chol, u = self._solve_model(covariance)
        proximity = 0.5 * rho * (a - centre).square().sum(1)
        return chol, u, u @ self.y + (slopes * a).sum(1) + proximity


def _centring(mu_affine: Tensor, mu: Tensor) -> Tensor:
    """Mehrotra's centring parameter ``(mu_aff / mu)^3``, at most 1, for each block.

    The duals of interior weights shrink geometrically and, over a long solve, can underflow
    to zero (seen on wine1279's 8-bit fit after 145 steps): with ``mu = 0`` no barrier is left
    to centre on, and the step is the affine one.
    """
    ratio = mu_affine / torch.where(mu > 0.0, mu, 1.0)
    return torch.where(mu > 0.0, ratio.pow(3).clamp_max(1.0), 0.0)


def _to_boundary(x: Tensor, step: Tensor, fraction: float = 0.995) -> Tensor:
    """For each row, the longest step up to 1 keeping ``x + t step`` positive, as a fraction
    of the way."""
    # x / step < 0 exactly where the step shrinks x (x > 0): one reduction a row
    nearest = torch.where(step < 0, x / step, -math.inf).amax(-1)
    return (-fraction * nearest).clamp_max(1.0)


def _blocks(size: int, count: int) -> list[slice]:
    count = max(1, min(count, size))
    edges = torch.linspace(0, size, count + 1).round().long().tolist()
    return [slice(edges[i], edges[i + 1]) for i in range(count)]


def _cholesky(matrix: Tensor, needed: Tensor | None = None, what: str | None = None) -> Tensor:
    """The lower Cholesky factor of ``matrix`` (or of each in a batch). Only the batch rows
    ``needed`` (default all) must factor: the others' factors may be garbage. ``what`` names a
    matrix other than a covariance in the error."""
    chol, info = torch.linalg.cholesky_ex(matrix)
    failed = info != 0
    if bool((failed if needed is None else failed & needed).any()):
        raise FloatingPointError(
            f"{what} is not positive definite"
            if what
            else "covariance is not positive definite; the noise variance is too small for the data"
        )
    return chol
