"""scikit-learn-style estimator: GSMP multiple-kernel GP fitted by consensus ADMM.

Usable with no Ray and no network: by default agents live in this process and talk through
the in-process transport, exchanging only (optionally quantized) bytes. ``AgentRecipe`` is
everything but the data needed to build agent j from its shard, so a remote worker (a Ray
actor, say) builds exactly the agent this process would; ``fit(transport_factory=...)``
places the agents elsewhere without changing the algorithm.
"""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from gramfed.workers.admm import (
    ADMMAgent,
    ADMMOptions,
    ADMMResult,
    ADMMState,
    CheckpointHook,
    ConsensusADMM,
    RoundHook,
)
from gramfed.workers.gram import GramOptions, NoiseAugmentedGram, SubKernelGram
from gramfed.workers.kernels.gsmp import GSMPGrid, GSMPKernel
from gramfed.workers.noise import gcv_noise_estimate
from gramfed.workers.posterior import Prediction, fuse_experts, gp_posterior
from gramfed.workers.quantize import Spacing
from gramfed.workers.sca import LocalProblem, SCAOptions, Surrogate
from gramfed.workers.transport import InProcessTransport, Transport

LEARNED_NOISE_FLOOR = 1e-6  # times var(y): keeps C positive definite when the noise weight is 0

Shard = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class AgentRecipe:
    """How to build an agent from a shard: kernel grid, options and the noise term.

    ``noise_variance`` is the fixed noise, or the floor under the learned noise weight when
    ``learned_noise`` is set. Picklable, so it can travel to the worker that holds the shard.
    """

    grid: GSMPGrid
    gram: GramOptions
    sca: SCAOptions
    admm: ADMMOptions
    noise_variance: float
    learned_noise: bool

    @property
    def size(self) -> int:
        return self.grid.num_components + int(self.learned_noise)

    def build(self, index: int, x: Tensor, y: Tensor) -> ADMMAgent:
        """Agent ``index`` over the shard ``(x, y)``, on the device ``gram`` selects."""
        gram = SubKernelGram(GSMPKernel(self.grid), x, self.gram)
        stack = NoiseAugmentedGram(gram) if self.learned_noise else gram
        problem = LocalProblem(stack, y, self.noise_variance, self.sca)
        return ADMMAgent(problem, self.admm, index=index)


TransportFactory = Callable[[AgentRecipe, list[Shard]], Transport]


def in_process_transport(recipe: AgentRecipe, shards: list[Shard]) -> Transport:
    """Every agent in this process (the default)."""
    return InProcessTransport([recipe.build(j, xs, ys) for j, (xs, ys) in enumerate(shards)])


class NotFittedError(RuntimeError):
    """predict() or a fitted attribute was used before fit()."""


class GSMPRegressor:
    """Sparse multiple-kernel GP regression with the GSMP kernel (the SLIM-KL method).

    ``agents`` contiguous shards each solve their local problem by DSCA; consensus ADMM
    joins them. ``bits`` (or ``step``) quantizes every message, on a log grid by default
    (``quantizer_spacing``: each weight kept to a fixed fraction of itself). ``noise="gcv"``
    fixes the noise variance by the smoothing-spline GCV estimate; ``noise="learned"`` adds it
    to the consensus weights (an identity component above a floor of ``1e-6 var(y)``, started
    at the GCV estimate) so marginal likelihood chooses it; a float fixes it directly. Where the
    GCV minimum sits at its limit of least smoothing (``noise_at_gcv_limit_``; a nearly
    noiseless series), a fit with ``noise="gcv"`` warns: the covariance is then nearly
    singular. A dense GSMP grid can tile the whole spectrum and so absorb white noise itself:
    the learned noise is then weakly identified and may fall to the floor, with the kernel
    carrying it.
    ``surrogate`` is DSCA's block model (``gramfed.workers.sca``): the authors' (default) or
    the exact tangent bound; ``mixed_precision`` lets its interior point factor in float32 with
    float64-accurate refined solves on shards of 1,024 points or more. ``prediction`` chooses
    the pooled posterior or the fusion of per-agent posteriors.
    """

    def __init__(
        self,
        *,
        agents: int = 2,
        bits: int | None = None,
        step: float | None = None,
        quantizer_spacing: Spacing = "log",
        error_feedback: bool = False,
        components_per_dim: int | None = None,
        freq_lower: float = 0.0,
        freq_upper: float = 0.5,
        scale: float = 1e-3,
        sampling: Literal["uniform", "random"] = "uniform",
        noise: Literal["gcv", "learned"] | float = "gcv",
        admm_max_iter: int = 100,
        rho0: float = 1e-10,
        sca_max_iter: int = 100,
        blocks: int = 4,
        surrogate: Surrogate = "reference",
        mixed_precision: bool = True,
        tol: float = 1e-3,
        prediction: Literal["pooled", "fused"] = "pooled",
        device: str = "auto",
        memory_budget: int = 4 << 30,
        seed: int = 0,
    ) -> None:
        self.agents = agents
        self.bits = bits
        self.step = step
        self.quantizer_spacing = quantizer_spacing
        self.error_feedback = error_feedback
        self.components_per_dim = components_per_dim
        self.freq_lower = freq_lower
        self.freq_upper = freq_upper
        self.scale = scale
        self.sampling = sampling
        self.noise = noise
        self.admm_max_iter = admm_max_iter
        self.rho0 = rho0
        self.sca_max_iter = sca_max_iter
        self.blocks = blocks
        self.surrogate = surrogate
        self.mixed_precision = mixed_precision
        self.tol = tol
        self.prediction = prediction
        self.device = device
        self.memory_budget = memory_budget
        self.seed = seed

    # -- scikit-learn protocol ------------------------------------------------------------------
    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> GSMPRegressor:
        valid = set(self._param_names())
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for GSMPRegressor")
            setattr(self, name, value)
        return self

    # -- fitting --------------------------------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        on_round: RoundHook | None = None,
        *,
        transport_factory: TransportFactory = in_process_transport,
        checkpoint: CheckpointHook | None = None,
        resume_from: ADMMState | None = None,
    ) -> GSMPRegressor:
        """Fit the consensus weights.

        ``transport_factory`` places the agents (default: in this process); ``checkpoint`` and
        ``resume_from`` are passed to ``ConsensusADMM.run`` (the factory's transport must then
        have its agents restored to the same round).
        """
        x_arr, y_arr = validate_xy(X, y)
        if not 1 <= self.agents <= len(y_arr) // 2:
            raise ValueError(
                f"agents must be between 1 and n/2 = {len(y_arr) // 2} for {len(y_arr)} samples, "
                f"got {self.agents}"
            )
        learned = self.noise == "learned"
        self.noise_at_gcv_limit_ = False
        if self.noise in ("gcv", "learned"):
            estimate = gcv_noise_estimate(y_arr)
            self.noise_variance_ = estimate.variance
            self.noise_at_gcv_limit_ = estimate.at_least_smoothing
            if estimate.at_least_smoothing and not learned:
                warnings.warn(
                    f"the GCV noise estimate {estimate.variance:.3g} "
                    f"({estimate.variance / float(np.var(y_arr)):.1e} of var(y)) sits at its limit "
                    "of least smoothing: the smoother found no noise to remove, so the covariance "
                    "is nearly singular and the fit may not settle; pass noise=<variance> if you "
                    "know the noise level",
                    RuntimeWarning,
                    stacklevel=2,
                )
        elif isinstance(self.noise, str):
            raise ValueError(f"noise must be 'gcv', 'learned' or a number, got {self.noise!r}")
        else:
            self.noise_variance_ = float(self.noise)
        noise_floor = LEARNED_NOISE_FLOOR * float(np.var(y_arr)) if learned else 0.0
        self.grid_ = GSMPGrid.default(
            x_arr.shape[1],
            self.components_per_dim,
            freq_bounds=(self.freq_lower, self.freq_upper),
            scale=self.scale,
            sampling=self.sampling,
            seed=self.seed,
        )
        admm_options = ADMMOptions(
            max_iter=self.admm_max_iter,
            rho0=self.rho0,
            bits=self.bits,
            step=self.step,
            spacing=self.quantizer_spacing,
            error_feedback=self.error_feedback,
            seed=self.seed,
        )
        recipe = AgentRecipe(
            grid=self.grid_,
            gram=GramOptions(device=self.device, memory_budget=self.memory_budget),
            sca=SCAOptions(
                max_iter=self.sca_max_iter,
                tol=self.tol,
                blocks=self.blocks,
                surrogate=self.surrogate,
                mixed_precision=self.mixed_precision,
            ),
            admm=admm_options,
            noise_variance=noise_floor if learned else self.noise_variance_,
            learned_noise=learned,
        )
        started = time.perf_counter()
        self.shards_ = [
            (torch.from_numpy(xs), torch.from_numpy(ys))
            for xs, ys in zip(
                np.array_split(x_arr, self.agents), np.array_split(y_arr, self.agents), strict=True
            )
        ]
        start = torch.zeros(recipe.size, dtype=torch.float64)
        if learned:
            start[-1] = max(self.noise_variance_ - noise_floor, 0.0)
        transport = transport_factory(recipe, self.shards_)
        coordinator = ConsensusADMM(transport, recipe.size, admm_options, start)
        self.admm_result_: ADMMResult = coordinator.run(
            on_round, checkpoint=checkpoint, resume_from=resume_from
        )
        self.fit_seconds_ = time.perf_counter() - started
        consensus = self.admm_result_.weights.numpy()
        self.weights_ = consensus[: self.grid_.num_components].copy()
        if learned:
            self.noise_variance_ = noise_floor + float(consensus[-1])
        self.x_train_, self.y_train_ = torch.from_numpy(x_arr), torch.from_numpy(y_arr)
        return self

    @property
    def kernel_(self) -> GSMPKernel:
        self._check_fitted()
        return GSMPKernel(self.grid_, torch.from_numpy(self.weights_))

    @property
    def bits_sent_(self) -> int:
        self._check_fitted()
        return self.admm_result_.bits_sent

    def predict_distribution(self, X: np.ndarray, mode: str | None = None) -> Prediction:
        self._check_fitted()
        x_test = torch.from_numpy(as_matrix(X, "X"))
        if x_test.shape[1] != self.x_train_.shape[1]:
            raise ValueError(
                f"X has {x_test.shape[1]} features but the model was fitted on "
                f"{self.x_train_.shape[1]}"
            )
        kernel = self.kernel_
        if (mode or self.prediction) == "fused":
            return fuse_experts(
                [
                    gp_posterior(kernel, xs, ys, self.noise_variance_, x_test)
                    for xs, ys in self.shards_
                ]
            )
        return gp_posterior(kernel, self.x_train_, self.y_train_, self.noise_variance_, x_test)

    def predict(
        self, X: np.ndarray, return_std: bool = False, mode: str | None = None
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        dist = self.predict_distribution(X, mode)
        if return_std:
            return dist.mean.numpy(), dist.std.numpy()
        return dist.mean.numpy()

    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError("this GSMPRegressor is not fitted yet; call fit(X, y) first")


def as_matrix(X: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def validate_xy(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x_arr = as_matrix(X, "X")
    y_arr = np.asarray(y, dtype=np.float64)
    if y_arr.ndim == 2 and y_arr.shape[1] == 1:
        y_arr = y_arr[:, 0]
    if y_arr.ndim != 1:
        raise ValueError(f"y must be 1-D, got shape {y_arr.shape}")
    if len(y_arr) != len(x_arr):
        raise ValueError(f"X has {len(x_arr)} rows but y has {len(y_arr)} values")
    if not np.all(np.isfinite(y_arr)):
        raise ValueError("y contains NaN or infinite values")
    return x_arr, y_arr


def as_tensor(values: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(values, dtype=np.float64))
