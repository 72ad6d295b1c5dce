"""Federated private GSMP: the public model a job describes, and what the coordinator learns.

A ``dp_gsmp`` job spec (the file ``gramfed run`` takes) becomes a ``GSMPRecipe``: input
dimension, grid, feature count, seed, declared target range and budget split. Every participant
derives the same random features from it, so their packed statistics add up; the coordinator
unmasks only their noisy sum, the pooled statistics of the survivors. Learning the kernel weights
and noise from that sum, and predicting anywhere, are post-processing of the participants'
releases: no participant pays for them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from google.protobuf.json_format import MessageToDict, ParseDict

from gramfed.platform.jobspec import JobSpec
from gramfed.platform.runtime.dp_gsmp import regressor_for
from gramfed.protos import federation_pb2 as pb
from gramfed.workers.admm import ADMMOptions
from gramfed.workers.dp_gsmp.estimator import DPGSMPRegressor, LearningPlan, StatisticsRecipe, learn
from gramfed.workers.dp_gsmp.solver import FeaturePosterior
from gramfed.workers.dp_gsmp.statistics import StatisticsSplit, TargetRange, unpack
from gramfed.workers.posterior import Prediction
from gramfed.workers.sca import SCAOptions


def recipe_to_pb(spec: JobSpec, input_dim: int) -> pb.GSMPRecipe:
    model = regressor_for(spec)
    return pb.GSMPRecipe(
        input_dim=input_dim,
        kernel=model.kernel,
        components_per_dim=model.components_per_dim,
        features_per_component=model.features_per_component,
        freq_lower=model.freq_lower,
        freq_upper=model.freq_upper,
        scale=model.scale,
        sampling=model.sampling,
        lengthscale=model.lengthscale,
        seed=model.seed,
        y_lo=model.target_range[0],
        y_hi=model.target_range[1],
        split=model.split,
        bias_share=model.bias_share,
        linear_share=model.linear_share,
        input_radius=model.input_radius or 0.0,
    )


def _regressor(recipe: pb.GSMPRecipe, **options: Any) -> DPGSMPRegressor:
    if recipe.input_dim < 1:
        raise ValueError("the model needs an input dimension of at least 1")
    return DPGSMPRegressor(
        target_range=(recipe.y_lo, recipe.y_hi),
        kernel=recipe.kernel,  # type: ignore[arg-type]
        components_per_dim=recipe.components_per_dim,
        features_per_component=recipe.features_per_component,
        freq_lower=recipe.freq_lower,
        freq_upper=recipe.freq_upper,
        scale=recipe.scale,
        sampling=recipe.sampling,  # type: ignore[arg-type]
        lengthscale=recipe.lengthscale,
        split=recipe.split,  # type: ignore[arg-type]
        bias_share=recipe.bias_share,
        linear_share=recipe.linear_share,
        input_radius=recipe.input_radius or None,
        seed=recipe.seed,
        **options,
    )


def statistics_plan(recipe: pb.GSMPRecipe) -> tuple[StatisticsRecipe, StatisticsSplit]:
    """Features, target range and budget split of a recipe's release; ``ValueError`` for a
    description no model accepts."""
    model = _regressor(recipe)
    features = model.features_for(recipe.input_dim)
    target = TargetRange(*model.target_range)
    return StatisticsRecipe(features, target), model.split_for(features.dim)


class FederatedGSMP:
    """The model learned from the survivors' noisy pooled statistics; predicts anywhere.

    ``statistics`` is the decoded unmasked sum (pooled packed statistics plus noise) and
    ``noise_sd`` the standard deviation of its summed noise on one coordinate; ``noise`` is
    "learned" or the declared noise variance in target units.
    """

    def __init__(
        self,
        recipe: pb.GSMPRecipe,
        statistics: np.ndarray,
        noise_sd: float,
        *,
        noise: str | float = "learned",
        noise_floor: float = 1e-4,
        eigen_floor: float = 1.0,
    ) -> None:
        self.recipe, self.statistics, self.noise_sd = recipe, statistics, noise_sd
        self.options = {"noise": noise, "noise_floor": noise_floor, "eigen_floor": eigen_floor}
        model = _regressor(recipe, noise=noise, noise_floor=noise_floor)
        self._features = model.features_for(recipe.input_dim)
        self._target = TargetRange(*model.target_range)
        split = model.split_for(self._features.dim)
        floor, learn_noise = model.noise_setting(self._target)
        eigen = eigen_floor * noise_sd / split.gram * math.sqrt(self._features.dim)
        plan = LearningPlan(
            dim=self._features.dim,
            split=split,
            components=self._features.component_of_feature(),
            eigen_floor=max(eigen, 1e-9),
            noise_floor=floor,
            learn_noise=learn_noise,
            sca=SCAOptions(max_iter=model.max_iter, tol=model.tol),
            admm=ADMMOptions(),  # one pooled problem: no consensus rounds
        )
        self._learned = learn(plan, [unpack(statistics, self._features.dim, split)])

    @classmethod
    def learn(
        cls, recipe: pb.GSMPRecipe, spec: JobSpec, statistics: np.ndarray, noise_sd: float
    ) -> FederatedGSMP:
        d = spec.dp
        return cls(
            recipe,
            statistics,
            noise_sd,
            noise=d.noise,
            noise_floor=d.noise_floor,
            eigen_floor=d.eigen_floor,
        )

    @property
    def weights(self) -> np.ndarray:
        """Kernel weights: the spectral components', then the constant's and linear's."""
        return self._features.kernel_weights(self._learned.weights).numpy()

    @property
    def noise_variance(self) -> float:
        return self._learned.noise_variance * self._target.half**2

    @property
    def posterior(self) -> FeaturePosterior:
        return self._learned.posterior

    def predict(self, x: np.ndarray) -> Prediction:
        encoded = self.posterior.predict(self._features(torch.as_tensor(x, dtype=torch.float64)))
        return Prediction(
            self._target.decode(encoded.mean), encoded.variance * self._target.half**2
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": MessageToDict(self.recipe, preserving_proto_field_name=True),
            "statistics": self.statistics.tolist(),
            "noise_sd": self.noise_sd,
            **self.options,
            "weights": self.weights.tolist(),
            "noise_variance": self.noise_variance,
        }

    @classmethod
    def load(cls, path: Path) -> FederatedGSMP:
        """The model of a finished federated ``dp_gsmp`` job (``STATE_DIR/JOB.json``)."""
        record = json.loads(path.read_text())["model"]
        return cls(
            ParseDict(record["recipe"], pb.GSMPRecipe()),
            np.asarray(record["statistics"], dtype=np.float64),
            record["noise_sd"],
            noise=record["noise"],
            noise_floor=record["noise_floor"],
            eigen_floor=record["eigen_floor"],
        )
