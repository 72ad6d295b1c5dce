"""GP posterior from fitted GSMP weights: pooled, and local-fused (product of experts)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gramfed.workers.cholesky import cholesky_solve
from gramfed.workers.kernels.base import Kernel


@dataclass(frozen=True)
class Prediction:
    """Predictive mean and variance of noisy targets (latent variance + noise)."""

    mean: Tensor
    variance: Tensor

    @property
    def std(self) -> Tensor:
        return self.variance.sqrt()


def gp_posterior(
    kernel: Kernel, x_train: Tensor, y_train: Tensor, noise_variance: float, x_test: Tensor
) -> Prediction:
    """Exact posterior: one Cholesky of K + s2 I, the cross tile, then triangular solves."""
    k_train = kernel(x_train, x_train)
    k_train.diagonal().add_(noise_variance)
    chol, info = torch.linalg.cholesky_ex(k_train)
    if int(info) != 0:
        raise FloatingPointError("training covariance is not positive definite")
    k_cross = kernel(x_test, x_train)
    mean = k_cross @ cholesky_solve(chol, y_train)
    v = torch.linalg.solve_triangular(chol, k_cross.T, upper=False)
    variance = kernel.diag(x_test) - v.square().sum(0) + noise_variance
    return Prediction(mean, variance.clamp_min(noise_variance * 1e-12))


def fuse_experts(predictions: list[Prediction]) -> Prediction:
    """Inverse-variance (product-of-experts) fusion of per-agent predictions."""
    precision = torch.stack([1.0 / p.variance for p in predictions])
    means = torch.stack([p.mean for p in predictions])
    variance = 1.0 / precision.sum(0)
    return Prediction((precision * means).sum(0) * variance, variance)


def mse(prediction: Prediction, y: Tensor) -> float:
    return float((prediction.mean - y).square().mean())


def nlpd(prediction: Prediction, y: Tensor) -> float:
    """Mean negative log predictive density of ``y`` under independent Gaussians."""
    var = prediction.variance
    return float(
        (0.5 * torch.log(2 * math.pi * var) + (y - prediction.mean).square() / (2 * var)).mean()
    )
