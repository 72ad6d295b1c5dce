"""``DPGSMPRegressor``: differentially private multiple-kernel GP regression.

Each of ``agents`` shards (one participant's records each) releases its sufficient statistics
once through the privacy gate, charged to its own pool (``statistics``, ``release``). Weight
learning (consensus ADMM over the agents' ``FeatureProblem``s, quantized messages included)
and predictions are computed from the released values only, so they cost nothing; the gate
records them as post-processing with the releases as parents. ``epsilon = inf`` skips the gate
and uses exact statistics: the non-private random-feature model, for comparison.

Pools. Shard j is participant j's dataset and is protected by pool j: with one pool given for
several agents, per-agent pools ``<dataset>.agent<j>`` with the same budget are created. A
record belongs to one participant, so it affects exactly one release (parallel composition).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from gramfed.privacy.accountant import rho_for_epsilon
from gramfed.privacy.budget import PoolSpec
from gramfed.privacy.gate import Gate
from gramfed.privacy.release import Release
from gramfed.workers.admm import ADMMAgent, ADMMOptions, ADMMResult, ConsensusADMM, RoundHook
from gramfed.workers.dp_gsmp.features import RandomFeatures
from gramfed.workers.dp_gsmp.release import mechanism_for, noise_scales, release_statistics
from gramfed.workers.dp_gsmp.solver import FeaturePosterior, FeatureProblem
from gramfed.workers.dp_gsmp.statistics import (
    StatisticsSplit,
    SufficientStatistics,
    TargetRange,
    repair,
    unpack,
)
from gramfed.workers.estimator import NotFittedError, Shard, as_matrix, validate_xy
from gramfed.workers.kernels.gsmp import GSMPGrid
from gramfed.workers.posterior import Prediction
from gramfed.workers.quantize import Spacing
from gramfed.workers.sca import ConsensusPenalty, SCAOptions
from gramfed.workers.transport import InProcessTransport


@dataclass(frozen=True)
class StatisticsRecipe:
    """What an agent needs to compute its statistics: public features and target range."""

    features: RandomFeatures
    target: TargetRange

    def statistics(self, x: Tensor, y: Tensor) -> SufficientStatistics:
        return SufficientStatistics.compute(self.features(x), self.target.encode(y))


StatisticsSource = Callable[
    [StatisticsRecipe, list[Shard]], list[Callable[[], SufficientStatistics]]
]


def local_statistics(
    recipe: StatisticsRecipe, shards: list[Shard]
) -> list[Callable[[], SufficientStatistics]]:
    """Every agent's statistics computed in this process (the default)."""
    return [functools.partial(recipe.statistics, xs, ys) for xs, ys in shards]


@dataclass(frozen=True)
class LearningPlan:
    """Everything public the post-processing needs besides the released vectors."""

    dim: int
    split: StatisticsSplit
    components: Tensor
    eigen_floor: float
    noise_floor: float
    learn_noise: bool
    sca: SCAOptions
    admm: ADMMOptions


@dataclass(frozen=True)
class LearnedModel:
    """Component weights (feature space), noise variance and the pooled posterior."""

    weights: Tensor
    noise_variance: float
    posterior: FeaturePosterior
    admm: ADMMResult | None


def learn(
    plan: LearningPlan, stats: list[SufficientStatistics], on_round: RoundHook | None = None
) -> LearnedModel:
    """Repair, then fit the weights by ADMM (one agent: directly) and form the posterior."""
    repaired = [repair(s, plan.eigen_floor) for s in stats]
    problems = [
        FeatureProblem(s, plan.components, plan.noise_floor, plan.sca, learn_noise=plan.learn_noise)
        for s in repaired
    ]
    pooled = functools.reduce(lambda a, b: a + b, repaired)
    second_moment = max(pooled.yy / pooled.count, 4 * plan.noise_floor)
    start = torch.full((problems[0].size,), 0.5 * second_moment, dtype=torch.float64)
    start[-1] = 0.5 * second_moment - plan.noise_floor if plan.learn_noise else 0.0
    admm_result = None
    if len(problems) == 1:
        penalty = ConsensusPenalty.none(problems[0].size, pooled.device)
        point = problems[0].solve(start, penalty).weights
    else:
        agents = [ADMMAgent(p, plan.admm, index=j) for j, p in enumerate(problems)]
        coordinator = ConsensusADMM(InProcessTransport(agents), problems[0].size, plan.admm, start)
        admm_result = coordinator.run(on_round)
        point = admm_result.weights
    weights, noise = point[:-1], plan.noise_floor + float(point[-1])
    # The sum of repaired statistics is itself consistent (b'S^-1 b is jointly convex and
    # homogeneous, hence subadditive), so the pooled posterior needs no second repair.
    posterior = FeaturePosterior.of(pooled, weights[plan.components], noise)
    return LearnedModel(weights, noise, posterior, admm_result)


class DPGSMPRegressor:
    """Random-feature GSMP (or RBF) GP from differentially private sufficient statistics.

    ``target_range`` is the declared public range of y (values outside are clipped).
    ``components_per_dim`` and ``features_per_component`` set the reduced GSMP grid
    (A = P * Q components) and M; the spectral features number 2 A M, and the released noise
    grows with the feature dimension D (``bench/dp_gsmp.py`` derives a rule for it).
    ``kernel="rbf"`` uses one RBF component of ``lengthscale`` instead.

    A constant component (``bias_share`` of each record's unit feature norm, 1 feature) and,
    when the public ``input_radius`` is declared, a linear component (``linear_share``, P + 1
    features) on the inputs clipped to that ball join the spectral ones, their weights learned
    with the others (``features``): with few features a zero-mean stationary kernel fits
    neither the targets' offset from the declared range's centre nor a trend. The radius must
    be public (a declared domain bound, or sqrt(P) for inputs standardised with public
    statistics, as ``bench/dp_gsmp.py`` does), never measured on the private inputs.
    ``bias_share = 0`` leaves the constant out. The default shares (0.2, 0.7; spectral block
    0.1) were the better of those tried on validation splits of the benchmark's training sets
    at epsilon in [0.5, 8]; they matter only under noise (without it, the learned weights
    absorb any fixed scale). ``split="predictive"`` shares the release's budget between the
    statistics for the least posterior-mean error (``statistics``).

    ``noise="learned"`` learns the noise variance by marginal likelihood above ``noise_floor``
    (encoded units, ``[-1, 1]`` targets); a float fixes it, in the target's units, as
    ``GSMPRegressor(noise=...)`` does. It must then be public (declared, never estimated from
    the private targets). Why it matters: when D approaches or exceeds n, the features span
    every training target and a dense grid absorbs white noise, so the learned noise falls to
    the floor and the posterior interpolates. On ale80 (n = 80, D = 640) that gives test MSE
    0.21 at epsilon = inf, against 0.030 with the noise fixed at the exact model's value and
    0.0245 for the exact GSMP (which fixes it by GCV); the exact GSMP with learned noise
    degrades the same way (0.056).
    """

    def __init__(
        self,
        *,
        target_range: tuple[float, float],
        agents: int = 1,
        kernel: Literal["gsmp", "rbf"] = "gsmp",
        components_per_dim: int = 4,
        features_per_component: int = 8,
        freq_lower: float = 0.0,
        freq_upper: float = 0.5,
        scale: float = 1e-3,
        sampling: Literal["uniform", "random"] = "uniform",
        lengthscale: float = 1.0,
        bias_share: float = 0.2,
        linear_share: float = 0.7,
        input_radius: float | None = None,
        bits: int | None = None,
        step: float | None = None,
        quantizer_spacing: Spacing = "log",
        error_feedback: bool = False,
        admm_max_iter: int = 50,
        rho0: float = 1e-2,
        max_iter: int = 500,
        tol: float = 1e-9,
        split: Literal["predictive", "error_minimising", "uniform"] = "predictive",
        eigen_floor: float = 1.0,
        noise_floor: float = 1e-4,
        noise: Literal["learned"] | float = "learned",
        seed: int = 0,
    ) -> None:
        self.target_range = target_range
        self.agents = agents
        self.kernel = kernel
        self.components_per_dim = components_per_dim
        self.features_per_component = features_per_component
        self.freq_lower = freq_lower
        self.freq_upper = freq_upper
        self.scale = scale
        self.sampling = sampling
        self.lengthscale = lengthscale
        self.bias_share = bias_share
        self.linear_share = linear_share
        self.input_radius = input_radius
        self.bits = bits
        self.step = step
        self.quantizer_spacing = quantizer_spacing
        self.error_feedback = error_feedback
        self.admm_max_iter = admm_max_iter
        self.rho0 = rho0
        self.max_iter = max_iter
        self.tol = tol
        self.split = split
        self.eigen_floor = eigen_floor
        self.noise_floor = noise_floor
        self.noise = noise
        self.seed = seed

    # -- fitting --------------------------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        epsilon: float,
        delta: float,
        gate: Gate | None = None,
        pool: str | PoolSpec | Sequence[str | PoolSpec] | None = None,
        requester: str = "dp-gsmp",
        statistics_source: StatisticsSource = local_statistics,
        on_round: RoundHook | None = None,
    ) -> DPGSMPRegressor:
        """Release every agent's statistics once (``epsilon``, ``delta`` each), then learn.

        ``epsilon = math.inf``: exact statistics, no gate (the non-private reference).
        """
        x_arr, y_arr = validate_xy(X, y)
        private = _check_privacy(epsilon, delta, gate, pool)
        if not 1 <= self.agents <= len(y_arr) // 2:
            raise ValueError(
                f"agents must be between 1 and n/2 = {len(y_arr) // 2} for {len(y_arr)} samples,"
                f" got {self.agents}"
            )
        target = TargetRange(*self.target_range)
        noise_floor, learn_noise = self.noise_setting(target)
        started = time.perf_counter()
        self.features_ = self.features_for(x_arr.shape[1])
        recipe = StatisticsRecipe(self.features_, target)
        shards = [
            (torch.from_numpy(xs), torch.from_numpy(ys))
            for xs, ys in zip(
                np.array_split(x_arr, self.agents), np.array_split(y_arr, self.agents), strict=True
            )
        ]
        computations = statistics_source(recipe, shards)
        dim = self.features_.dim
        split = self.split_for(dim)
        self.releases_: list[Release] = []
        if private:
            assert gate is not None and pool is not None
            mechanism = mechanism_for(rho_for_epsilon(epsilon, delta), dim)
            self.noise_scales_ = noise_scales(mechanism, split)
            floor = self.eigen_floor * self.noise_scales_.gram * math.sqrt(dim)
            for j, (target, compute) in enumerate(
                zip(_agent_pools(gate, pool, self.agents), computations, strict=True)
            ):
                self.releases_.append(
                    release_statistics(
                        gate,
                        target,
                        compute,
                        mechanism=mechanism,
                        split=split,
                        requester=requester,
                        description=f"DP-GSMP sufficient statistics of agent {j} (D = {dim})",
                    )
                )
            self.gate_: Gate | None = gate
        else:
            self.noise_scales_ = None
            floor = 1e-9
            self.gate_ = None
        plan = LearningPlan(
            dim=dim,
            split=split,
            components=self.features_.component_of_feature(),
            eigen_floor=floor,
            noise_floor=noise_floor,
            learn_noise=learn_noise,
            sca=SCAOptions(max_iter=self.max_iter, tol=self.tol),
            admm=ADMMOptions(
                max_iter=self.admm_max_iter,
                rho0=self.rho0,
                bits=self.bits,
                step=self.step,
                spacing=self.quantizer_spacing,
                error_feedback=self.error_feedback,
                seed=self.seed,
            ),
        )
        if private:
            assert gate is not None

            def learn_from_releases(*vectors: np.ndarray) -> LearnedModel:
                return learn(plan, [unpack(v, dim, split) for v in vectors], on_round)

            self.model_release_: Release | None = gate.postprocess(
                learn_from_releases,
                *self.releases_,
                description="DP-GSMP weights and posterior learned from released statistics",
                requester=requester,
            )
            self.model_ = self.model_release_.value
        else:
            self.model_release_ = None
            self.model_ = learn(plan, [compute() for compute in computations], on_round)
        self.fit_seconds_ = time.perf_counter() - started
        return self

    def split_for(self, dim: int) -> StatisticsSplit:
        """The budget split of the released statistics for D = ``dim`` features."""
        if self.split == "predictive":
            return StatisticsSplit.predictive()
        if self.split == "error_minimising":
            return StatisticsSplit.error_minimising(dim)
        if self.split == "uniform":
            return StatisticsSplit.uniform(dim)
        raise ValueError(
            f"split must be 'predictive', 'error_minimising' or 'uniform', got {self.split!r}"
        )

    def noise_setting(self, target: TargetRange) -> tuple[float, bool]:
        """The noise floor in encoded units, and whether the noise is learned above it."""
        if self.noise == "learned":
            return self.noise_floor, True
        if isinstance(self.noise, str) or not (self.noise > 0 and math.isfinite(self.noise)):
            raise ValueError(f"noise must be 'learned' or a positive number, got {self.noise!r}")
        return float(self.noise) / target.half**2, False

    def features_for(self, dims: int) -> RandomFeatures:
        """The public random-feature map for inputs of ``dims`` columns."""
        blocks: dict[str, float] = {"bias": self.bias_share}
        if self.input_radius is not None:
            blocks.update(linear=self.linear_share, radius=self.input_radius)
        if self.kernel == "rbf":
            return RandomFeatures.rbf(
                torch.full((dims,), float(self.lengthscale)),
                self.features_per_component,
                self.seed,
                **blocks,
            )
        if self.kernel != "gsmp":
            raise ValueError(f"kernel must be 'gsmp' or 'rbf', got {self.kernel!r}")
        grid = GSMPGrid.default(
            dims,
            self.components_per_dim,
            freq_bounds=(self.freq_lower, self.freq_upper),
            scale=self.scale,
            sampling=self.sampling,
            seed=self.seed,
        )
        return RandomFeatures.gsmp(grid, self.features_per_component, self.seed, **blocks)

    # -- fitted model ---------------------------------------------------------------------------
    @property
    def weights_(self) -> np.ndarray:
        """Kernel weights: the A spectral components', then the constant's and linear's."""
        self._check_fitted()
        return self.features_.kernel_weights(self.model_.weights).numpy()

    @property
    def noise_variance_(self) -> float:
        """Noise variance in the target's units."""
        self._check_fitted()
        return self.model_.noise_variance * TargetRange(*self.target_range).half ** 2

    def predict_distribution(self, X: np.ndarray) -> Prediction:
        """Posterior predictive at ``X`` in the target's units (post-processing, free)."""
        self._check_fitted()
        x = torch.from_numpy(as_matrix(X, "X"))
        if x.shape[1] != self.features_.input_dim:
            raise ValueError(
                f"X has {x.shape[1]} features but the model was fitted on"
                f" {self.features_.input_dim}"
            )
        target = TargetRange(*self.target_range)
        encoded = self.model_.posterior.predict(self.features_(x))
        return Prediction(target.decode(encoded.mean), encoded.variance * target.half**2)

    def predict(
        self, X: np.ndarray, return_std: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        dist = self.predict_distribution(X)
        if return_std:
            return dist.mean.numpy(), dist.std.numpy()
        return dist.mean.numpy()

    def release_predictions(self, X: np.ndarray, *, requester: str = "dp-gsmp") -> Release:
        """Predictions at ``X`` as a post-processing release of the fitted model (free)."""
        self._check_fitted()
        if self.model_release_ is None or self.gate_ is None:
            raise ValueError("a model fitted with epsilon = inf has no releases to derive from")

        def predictions(model: LearnedModel) -> dict[str, Any]:
            dist = self.predict_distribution(X)
            return {"mean": dist.mean.numpy(), "std": dist.std.numpy()}

        return self.gate_.postprocess(
            predictions,
            self.model_release_,
            description=f"DP-GSMP predictions at {len(as_matrix(X, 'X'))} inputs",
            requester=requester,
        )

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError("this DPGSMPRegressor is not fitted yet; call fit(X, y) first")


def _check_privacy(epsilon: float, delta: float, gate: Gate | None, pool: object) -> bool:
    """True for a private fit; raise on parameters no fit can use."""
    if not (epsilon > 0):
        raise ValueError(f"epsilon must be positive (or inf for no privacy), got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    if math.isinf(epsilon):
        return False
    if gate is None or pool is None:
        raise ValueError("a private fit needs the privacy gate and a budget pool")
    return True


def _agent_pools(
    gate: Gate, pool: str | PoolSpec | Sequence[str | PoolSpec], agents: int
) -> list[str | PoolSpec]:
    """One pool per agent: as given, or derived from one pool (``<dataset>.agent<j>``)."""
    if isinstance(pool, str | PoolSpec):
        if agents == 1:
            return [pool]
        spec = pool if isinstance(pool, PoolSpec) else gate.ledger.pool(pool)
        return [
            gate.create_pool(
                PoolSpec(f"{spec.dataset}.agent{j}", spec.budget, spec.unit, delta=spec.delta)
            )
            for j in range(agents)
        ]
    pools = list(pool)
    if len(pools) != agents:
        raise ValueError(f"give one pool per agent: {agents} agents, {len(pools)} pools")
    return pools
