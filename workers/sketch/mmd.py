"""Data-quality monitoring: sketch MMD between a private reference and a new batch.

The reference's owner releases one RFF sketch; anyone holding it can test whether a new batch
(m rows, their own data) comes from the reference distribution, without the reference ever
leaving its owner. The statistic is the squared distance of mean embeddings in RFF space,

    T = | S~ / n~ - (1/m) sum_j phi(z_j) |^2,

a biased estimate of MMD^2 for the Gaussian kernel. Under the null (same distribution P) the
difference is approximately Gaussian (central limit theorem over records) with covariance
``Sigma (1/n + 1/m) + (v / n^2) I + (v / n^2) mu mu'``: Sigma the covariance of phi(x) under
P, v the released noise variance per coordinate, the last term the count noise. So T is close
to a weighted sum of chi-square variables. The threshold is its (1 - level) quantile, by Monte
Carlo, with Sigma and mu estimated on the batch (under the null it comes from P). Everything
is computed from the release and the batch: post-processing.

Estimating Sigma on the batch errs on the safe side: the plug-in covariance keeps the mean of
T (its trace is unbiased) but inflates its spread (E tr(Sigma_hat^2) exceeds tr(Sigma^2) by
about tr(Sigma)^2 / m), so the threshold is if anything too high and the false-alarm rate at or
below ``level``, the more so for small batches (bench/sketch_monitor.py measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gramfed.workers.device import resolve_device
from gramfed.workers.sketch.accumulate import as_inputs, chunk_rows, featuriser
from gramfed.workers.sketch.sketch import Sketch

DEFAULT_LEVEL = 0.05
NULL_DRAWS = 4_000
DRAWS_PER_CHUNK = 500


@dataclass(frozen=True)
class MonitorResult:
    """Outcome of one check: the statistic, the threshold at ``level``, and the decision."""

    statistic: float
    threshold: float
    level: float
    batch_size: int
    alarm: bool

    def to_json(self) -> dict[str, object]:
        return {
            "statistic": self.statistic,
            "threshold": self.threshold,
            "level": self.level,
            "batch_size": self.batch_size,
            "alarm": self.alarm,
        }


def _batch_features(sketch: Sketch, batch: np.ndarray | Tensor, device: torch.device) -> Tensor:
    feature = featuriser(sketch.spec, device)
    z = as_inputs(batch, sketch.spec)
    rows = chunk_rows(sketch.spec)
    parts = [
        feature(z[s : s + rows].to(device, torch.float32)).to(torch.float64)
        for s in range(0, z.shape[0], rows)
    ]
    return torch.cat(parts)


def monitor(
    reference: Sketch,
    batch: np.ndarray | Tensor,
    *,
    level: float = DEFAULT_LEVEL,
    seed: int = 0,
    device: str | torch.device | None = "auto",
) -> MonitorResult:
    """Test ``batch`` against the released ``reference`` sketch at false-alarm rate ``level``.

    ``seed`` drives the Monte Carlo quantile of the null distribution only.
    """
    if not reference.spec.is_rff:
        raise ValueError(
            f"monitoring needs a gaussian (RFF) reference sketch, got {reference.spec.kernel}"
        )
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    n = reference.count
    if n <= 0:
        raise ValueError(f"the reference sketch's noisy count is {n:.3g}; nothing to compare")
    dev = resolve_device(device)
    phi = _batch_features(reference, batch, dev)
    m = phi.shape[0]
    if m < 2:
        raise ValueError("the batch needs at least two rows")
    reference_mean = torch.tensor(reference.values, device=dev) / n
    batch_mean = phi.mean(0)
    statistic = float((reference_mean - batch_mean).square().sum())

    noise = reference.noise.variance / n**2
    threshold = _null_quantile(
        phi - batch_mean, 1.0 / n + 1.0 / m, noise, float(batch_mean.square().sum()), level, seed
    )
    return MonitorResult(statistic, threshold, level, m, statistic > threshold)


def _null_quantile(
    centred: Tensor, sampling: float, noise: float, mean_sq: float, level: float, seed: int
) -> float:
    """The (1 - level) quantile of T under the null, by Monte Carlo.

    A draw of N(0, Sigma_hat) is ``centred' g / sqrt(m - 1)`` with g ~ N(0, I_m), so no
    eigendecomposition is needed; the noise terms are chi-square with D and 1 degrees of
    freedom (isotropic noise, and count noise along mu).
    """
    m, dim = centred.shape
    generator = torch.Generator(device=centred.device).manual_seed(seed)
    draws = []
    for start in range(0, NULL_DRAWS, DRAWS_PER_CHUNK):
        rows = min(DRAWS_PER_CHUNK, NULL_DRAWS - start)
        g = torch.randn(rows, m, generator=generator, device=centred.device, dtype=centred.dtype)
        draws.append((g @ centred).square().sum(1).cpu() * (sampling / (m - 1)))
    rng = np.random.default_rng(seed)
    total = torch.cat(draws).numpy()
    total += noise * (rng.chisquare(dim, NULL_DRAWS) + mean_sq * rng.chisquare(1, NULL_DRAWS))
    return float(np.quantile(total, 1.0 - level))
