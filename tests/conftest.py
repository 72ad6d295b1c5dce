from pathlib import Path

import numpy as np
import pytest
import torch

from gramfed.privacy import keys
from gramfed.workers.kernels.gsmp import GSMPGrid


def dense_stack(grid: GSMPGrid, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Direct transcription of the GSMP formula, one sub-kernel at a time."""
    tau = x1[:, None, :] - x2[None, :, :]
    out = []
    for mu, v in zip(grid.means, grid.scales, strict=True):
        k = torch.exp(-2 * torch.pi**2 * tau**2 * v**2) * torch.cos(2 * torch.pi * mu * tau)
        out.append(k.prod(-1))
    return torch.stack(out)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def toy_regression(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(48, dtype=np.float64)[:, None]  # evenly spaced, like the SLIM-KL series
    y = np.sin(2 * np.pi * 0.08 * x[:, 0]) + 0.5 * np.cos(2 * np.pi * 0.21 * x[:, 0])
    return x, y + 0.1 * rng.standard_normal(len(y))


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    """A fresh Ed25519 ledger signing key (0600) with its public key beside it."""
    path = tmp_path / "keys" / "ledger.key"
    keys.generate(path)
    return path
