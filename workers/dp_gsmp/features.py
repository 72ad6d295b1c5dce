"""Random Fourier features of the GSMP kernel (and of RBF), normalised per record.

Sub-kernel ``i`` of the GSMP kernel (``gramfed.workers.kernels.gsmp``) is, by Bochner's
theorem, ``k_i(tau) = E_s[cos(2 pi s'tau)]`` for the spectral density that is a product over
dimensions of symmetric Gaussian pairs: ``s_p = sign_p mu_ip + v_ip eps_p`` with a fair random
sign and ``eps_p ~ N(0, 1)``; indeed ``E cos(2 pi s_p tau_p) = cos(2 pi mu_ip tau_p)
exp(-2 pi^2 v_ip^2 tau_p^2)`` and the dimensions are independent. With ``M`` draws ``s_im``
per sub-kernel, the features of component ``i`` are

    phi_i(x) = [cos(2 pi s_i1'x), ..., cos(2 pi s_iM'x), sin(2 pi s_i1'x), ..., sin(...)]
               / sqrt(A M),

so that ``phi_i(x)'phi_i(x') = (1 / (A M)) sum_m cos(2 pi s_im'(x - x'))``, an unbiased
estimate of ``k_i(x, x') / A`` (a mean of M terms in [-1, 1]: by Hoeffding its error exceeds
``sqrt(2 log(2 / beta) / M) / A`` with probability at most ``beta``). The record's whole
feature vector ``phi(x) = [phi_1(x), ..., phi_A(x)]`` has ``|phi(x)|_2 = 1`` *exactly*
(``cos^2 + sin^2 = 1``), for every input and without clipping: the per-record bound the
sufficient statistics' sensitivity rests on (``statistics``). Kernel weights ``alpha_i`` and
feature-space weights ``a_i`` are related by ``alpha_i = a_i / A``.

The draws come from a public seed (``public_stream``), so every shard and every party
computes identical features from the configuration alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from gramfed.workers.kernels.gsmp import GSMPGrid
from gramfed.workers.sketch.spec import public_stream

TWO_PI = 2.0 * math.pi


@dataclass(frozen=True)
class RandomFeatures:
    """Frequencies ``(A, M, P)`` in cycles per input unit; features in R^(2 A M), unit norm."""

    frequencies: Tensor

    def __post_init__(self) -> None:
        if self.frequencies.ndim != 3 or min(self.frequencies.shape) < 1:
            raise ValueError(
                f"frequencies must be (A, M, P) with every size >= 1, got"
                f" {tuple(self.frequencies.shape)}"
            )

    @property
    def num_components(self) -> int:
        return int(self.frequencies.shape[0])

    @property
    def per_component(self) -> int:
        return int(self.frequencies.shape[1])

    @property
    def input_dim(self) -> int:
        return int(self.frequencies.shape[2])

    @property
    def dim(self) -> int:
        """Feature dimension D = 2 A M."""
        return 2 * self.num_components * self.per_component

    def component_of_feature(self) -> Tensor:
        """Index (D,) of the component each feature belongs to."""
        return torch.arange(self.num_components).repeat_interleave(2 * self.per_component)

    def __call__(self, x: Tensor) -> Tensor:
        """Features (n, D) of inputs (n, P), float64, each row of Euclidean norm 1."""
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"inputs must be (n, {self.input_dim}), got {tuple(x.shape)}")
        a, m = self.num_components, self.per_component
        freqs = self.frequencies.to(x.device, torch.float64).reshape(a * m, -1)
        angles = (TWO_PI * x.to(torch.float64) @ freqs.T).reshape(-1, a, m)
        phi = torch.cat([torch.cos(angles), torch.sin(angles)], dim=2)
        return phi.reshape(x.shape[0], -1) / math.sqrt(a * m)

    def kernel(self, x1: Tensor, x2: Tensor, weights: Tensor) -> Tensor:
        """The random-feature estimate of ``sum_i weights_i k_i(x1, x2)`` (kernel weights)."""
        scale = self.num_components * weights.to(torch.float64)[self.component_of_feature()]
        return (self(x1) * scale.to(x1.device)) @ self(x2).T

    @classmethod
    def gsmp(cls, grid: GSMPGrid, per_component: int, seed: int = 0) -> RandomFeatures:
        """``per_component`` draws from each sub-kernel's spectral density (see module doc)."""
        if per_component < 1:
            raise ValueError(f"features per component must be >= 1, got {per_component}")
        rng = public_stream(seed, "dp-gsmp-features")
        a, p = grid.num_components, grid.dims
        signs = rng.choice([-1.0, 1.0], size=(a, per_component, p))
        eps = rng.standard_normal((a, per_component, p))
        means = grid.means.cpu().numpy()[:, None, :]
        scales = grid.scales.cpu().numpy()[:, None, :]
        return cls(torch.from_numpy(signs * means + scales * eps))

    @classmethod
    def rbf(cls, lengthscales: Tensor, count: int, seed: int = 0) -> RandomFeatures:
        """One component: ``exp(-|tau / l|^2 / 2)`` has spectral density ``N(0, 1/(2 pi l)^2)``."""
        if count < 1:
            raise ValueError(f"the feature count must be >= 1, got {count}")
        ls = torch.as_tensor(lengthscales, dtype=torch.float64).reshape(-1)
        if bool((ls <= 0).any()):
            raise ValueError("lengthscales must be positive")
        rng = public_stream(seed, "dp-rbf-features")
        eps = torch.from_numpy(rng.standard_normal((1, count, ls.numel())))
        return cls(eps / (TWO_PI * ls))
