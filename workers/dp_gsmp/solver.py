"""Marginal likelihood, weight learning and posterior in feature space, from statistics only.

With features ``Phi`` (n, D), feature weights ``w = a[component]`` (``a`` the C component
weights: spectral, then the constant and linear ones when present, ``features``) and noise
``s2``, the covariance is ``C = Phi W Phi' + s2 I``. Write the (repaired, positive definite)
``S = Phi'Phi = R R'`` (``R = V diag(sqrt(lambda))`` from its eigenpairs) and
``K = s2 I + R'WR`` (D, D). The determinant lemma and the push-through identity give

    log det C = (n - D) log s2 + log det K,
    t'C^-1 t  = (c - (b'Wb - u'K^-1 u) / s2) / s2,     u = R'Wb,

so the per-agent objective ``F(a) = t'C^-1 t + log det C`` (the one ``LocalProblem`` minimises
over n x n matrices) needs only ``(S, b, c, n)``: after the release, learning is
post-processing. ``K`` is linear in ``w``, so ``F`` is smooth on ``a >= 0`` (no square roots of
weights), and automatic differentiation gives its exact gradient.

``FeatureProblem`` is a sibling of ``gramfed.workers.sca.LocalProblem`` with the interface
``ADMMAgent`` uses (``size``, ``gram.device``, ``solve(start, penalty) -> SCAResult``), so
consensus ADMM with quantized messages runs over released statistics unchanged. Its variables
are the C feature-space weights and, last, the noise variance above a public floor (held at
the floor when the noise is fixed: ``learn_noise=False``). The local
step minimises ``F + lam'a + rho/2 |a - theta|^2`` by L-BFGS-B (bounds ``a >= 0``): a descent
method, so the local objective decreases monotonically, like DSCA's.

The posterior of the weight vector ``beta`` (prior ``N(0, W)``) is Gaussian with covariance
``Sigma = W - W R K^-1 R'W`` and mean ``Sigma b / s2``; predictions at any inputs are
``phi(x)'beta_mean`` and ``phi(x)'Sigma phi(x) + s2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import OptimizeResult, minimize
from torch import Tensor

from gramfed.workers.cholesky import cholesky_solve
from gramfed.workers.dp_gsmp.statistics import SufficientStatistics
from gramfed.workers.posterior import Prediction
from gramfed.workers.sca import ConsensusPenalty, ProgressHook, SCAOptions, SCAResult


@dataclass(frozen=True)
class Factor:
    """``S = root root'`` of repaired statistics, with the rest of them (all public now)."""

    root: Tensor
    cross: Tensor
    yy: float
    count: float

    @classmethod
    def of(cls, stats: SufficientStatistics) -> Factor:
        values, vectors = torch.linalg.eigh(0.5 * (stats.gram + stats.gram.T))
        if float(values.min()) <= 0:
            raise ValueError("statistics must be repaired (positive definite) before solving")
        return cls(vectors * values.sqrt(), stats.cross, stats.yy, stats.count)

    @property
    def dim(self) -> int:
        return int(self.cross.shape[0])


def objective(factor: Factor, feature_weights: Tensor, noise: Tensor) -> Tensor:
    """``t'C^-1 t + log det C`` (see the module docstring); differentiable in both arguments."""
    root, b = factor.root, factor.cross
    wb = feature_weights * b
    k = root.T @ (feature_weights[:, None] * root)
    k.diagonal().add_(noise)
    chol = torch.linalg.cholesky(k)
    u = cholesky_solve(chol, root.T @ wb)
    fit = (b @ wb - (root.T @ wb) @ u) / noise
    quad = (factor.yy - fit) / noise
    logdet = (factor.count - factor.dim) * torch.log(noise) + 2.0 * torch.log(
        torch.diagonal(chol)
    ).sum()
    return quad + logdet


class FeatureProblem:
    """One agent's objective over ``[a_1, ..., a_C, s2 - floor]`` from its released statistics.

    ``gram`` is the statistics object: the name ``ADMMAgent`` reads the device from, as it
    does from a ``LocalProblem``'s Gram stack. ``learn_noise=False`` fixes the noise variance
    at ``noise_floor``: the last variable is then bounded to 0.
    """

    def __init__(
        self,
        stats: SufficientStatistics,
        component_of_feature: Tensor,
        noise_floor: float,
        options: SCAOptions | None = None,
        *,
        learn_noise: bool = True,
    ) -> None:
        if not (noise_floor > 0 and math.isfinite(noise_floor)):
            raise ValueError(f"the noise floor must be positive and finite, got {noise_floor}")
        if component_of_feature.shape != (stats.dim,):
            raise ValueError("one component index per feature is needed")
        self.gram = stats
        self.factor = Factor.of(stats)
        self.components = component_of_feature.to(stats.device)
        self.num_components = int(self.components.max()) + 1
        self.size = self.num_components + 1
        self.noise_floor = float(noise_floor)
        self.learn_noise = learn_noise
        self.options = options or SCAOptions()

    def value(self, point: Tensor) -> Tensor:
        """F at ``point`` (component weights, then noise above the floor)."""
        weights = point[: self.num_components][self.components]
        return objective(self.factor, weights, self.noise_floor + point[-1])

    def solve(
        self,
        start: Tensor,
        penalty: ConsensusPenalty,
        progress: ProgressHook | None = None,
    ) -> SCAResult:
        device = self.gram.device
        history: list[float] = []

        def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
            point = torch.tensor(x, dtype=torch.float64, device=device, requires_grad=True)
            total = self.value(point) + penalty.lam.to(device) @ point
            total = total + 0.5 * penalty.rho * (point - penalty.theta.to(device)).square().sum()
            (grad,) = torch.autograd.grad(total, point)
            return float(total.detach()), grad.cpu().numpy()

        def record(intermediate_result: OptimizeResult) -> None:
            history.append(float(intermediate_result.fun))
            if progress is not None:
                progress(len(history), history[-1])

        x0 = start.to(torch.float64).clamp_min(0.0).cpu().numpy()
        if not self.learn_noise:
            x0[-1] = 0.0
        history.append(fun(x0)[0])
        found = minimize(
            fun,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=[(0.0, None)] * self.num_components + [(0.0, None if self.learn_noise else 0.0)],
            callback=record,
            options={"maxiter": self.options.max_iter, "ftol": self.options.tol * 1e-3},
        )
        weights = torch.as_tensor(found.x, dtype=torch.float64, device=device).clamp_min(0.0)
        if float(found.fun) > history[0]:  # never leave the start for a worse point
            weights = torch.as_tensor(x0, dtype=torch.float64, device=device)
        else:
            history.append(float(found.fun))
        return SCAResult(weights=weights, objective_history=history, iterations=int(found.nit))


@dataclass(frozen=True)
class FeaturePosterior:
    """The GP posterior in feature space, from (pooled, repaired) statistics and weights."""

    mean_weights: Tensor
    root_w: Tensor
    chol: Tensor
    feature_weights: Tensor
    noise: float

    @classmethod
    def of(
        cls, stats: SufficientStatistics, feature_weights: Tensor, noise: float
    ) -> FeaturePosterior:
        factor = Factor.of(stats)
        w = feature_weights.to(stats.device, torch.float64)
        root_w = factor.root.T * w  # R'W
        k = root_w @ factor.root
        k.diagonal().add_(noise)
        chol = torch.linalg.cholesky(k)
        wb = w * factor.cross
        mean = wb - root_w.T @ cholesky_solve(chol, root_w @ factor.cross)
        return cls(mean / noise, root_w, chol, w, float(noise))

    def predict(self, phi: Tensor) -> Prediction:
        """Predictive mean and variance of noisy targets at features ``phi`` (m, D)."""
        phi = phi.to(self.chol.device, torch.float64)
        prior = (phi.square() * self.feature_weights).sum(1)
        v = torch.linalg.solve_triangular(self.chol, self.root_w @ phi.T, upper=False)
        variance = prior - v.square().sum(0) + self.noise
        return Prediction(phi @ self.mean_weights, variance.clamp_min(self.noise * 1e-12))
