"""Random Fourier features of the GSMP kernel (and of RBF), with a constant and a linear block.

Spectral block. Sub-kernel ``i`` of the GSMP kernel (``gramfed.workers.kernels.gsmp``) is, by
Bochner's theorem, ``k_i(tau) = E_s[cos(2 pi s'tau)]`` for the spectral density that is a
product over dimensions of symmetric Gaussian pairs: ``s_p = sign_p mu_ip + v_ip eps_p`` with a
fair random sign and ``eps_p ~ N(0, 1)``; indeed ``E cos(2 pi s_p tau_p) = cos(2 pi mu_ip
tau_p) exp(-2 pi^2 v_ip^2 tau_p^2)`` and the dimensions are independent. With ``M`` draws
``s_im`` per sub-kernel, the features of component ``i`` are

    psi_i(x) = [cos(2 pi s_i1'x), ..., cos(2 pi s_iM'x), sin(2 pi s_i1'x), ..., sin(...)]
               / sqrt(A M),

so that ``psi_i(x)'psi_i(x') = (1 / (A M)) sum_m cos(2 pi s_im'(x - x'))``, an unbiased
estimate of ``k_i(x, x') / A`` (a mean of M terms in [-1, 1]: by Hoeffding its error exceeds
``sqrt(2 log(2 / beta) / M) / A`` with probability at most ``beta``), and the whole spectral
block ``psi = [psi_1, ..., psi_A]`` has ``|psi(x)|_2 = 1`` exactly (``cos^2 + sin^2 = 1``).

Constant and linear blocks. A zero-mean stationary kernel with few features represents neither
an offset nor a trend, so two more components are available, each a block of unit norm:

* bias: the constant ``1`` (kernel ``1``);
* linear: ``[z, sqrt(1 - |z|^2)]`` with ``z = x / max(R, |x|_2)``, the input clipped to the
  ball of the declared public radius ``R`` and scaled into the unit ball (kernel
  ``z'z' + sqrt((1 - |z|^2)(1 - |z'|^2))``: linear in x inside the ball, saturating outside;
  the last coordinate pads the block to unit norm and adds a smooth radial term).

The record's feature vector is ``phi = [sqrt(s_r) psi, sqrt(s_b) 1, sqrt(s_l) lin]`` with
fixed public shares ``s_b, s_l >= 0`` and ``s_r = 1 - s_b - s_l > 0``, so

    |phi(x)|_2^2 = s_r |psi|^2 + s_b + s_l |lin|^2 = s_r + s_b + s_l = 1

*exactly*, for every input (huge ones included: a clipped input lies in the unit ball, and
inputs are bounded to ``MAX_INPUT`` before the angles so that they stay finite), and whatever
the data: the per-record bound the sufficient statistics' sensitivity rests on
(``statistics``). A share of 0 leaves its block out. Components are numbered spectral first
(0..A-1), then bias, then linear; feature-space weights ``a_k`` and kernel weights
``alpha_k`` are related by ``alpha_i = a_i s_r / A`` (spectral), ``a s_b`` (bias) and ``a s_l``
(linear): ``kernel_weights``. The shares set how much of the statistics' fixed per-record
norm, and so of their signal against the release noise, each block receives.

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
# Beyond this magnitude float64 angles keep no fractional part, so the spectral features are
# arbitrary anyway; bounding the input keeps them finite (and the norm 1) for any float input.
MAX_INPUT = 1e15


@dataclass(frozen=True)
class RandomFeatures:
    """Frequencies ``(A, M, P)`` in cycles per input unit, optional bias and linear blocks.

    ``bias`` and ``linear`` are the blocks' shares of the unit squared norm (0: absent);
    ``radius`` is the declared public radius of the input ball the linear block clips to.
    Features lie in R^D, D = 2 A M (+ 1 with bias, + P + 1 with linear), of norm 1.
    """

    frequencies: Tensor
    bias: float = 0.0
    linear: float = 0.0
    radius: float = 1.0

    def __post_init__(self) -> None:
        if self.frequencies.ndim != 3 or min(self.frequencies.shape) < 1:
            raise ValueError(
                f"frequencies must be (A, M, P) with every size >= 1, got"
                f" {tuple(self.frequencies.shape)}"
            )
        if not (self.bias >= 0 and self.linear >= 0 and self.bias + self.linear < 1):
            raise ValueError(
                f"the bias and linear shares must be >= 0 with sum below 1, got"
                f" {self.bias} and {self.linear}"
            )
        if not (self.radius > 0 and math.isfinite(self.radius)):
            raise ValueError(f"the input radius must be positive and finite, got {self.radius}")

    @property
    def spectral_components(self) -> int:
        """A, the number of spectral (GSMP or RBF) components."""
        return int(self.frequencies.shape[0])

    @property
    def num_components(self) -> int:
        """Kernel components: A spectral ones, then bias and linear when present."""
        return self.spectral_components + (self.bias > 0) + (self.linear > 0)

    @property
    def per_component(self) -> int:
        return int(self.frequencies.shape[1])

    @property
    def input_dim(self) -> int:
        return int(self.frequencies.shape[2])

    @property
    def spectral_share(self) -> float:
        return 1.0 - self.bias - self.linear

    @property
    def dim(self) -> int:
        """Feature dimension D = 2 A M (+ 1 with bias, + P + 1 with linear)."""
        extra = (self.bias > 0) + (self.linear > 0) * (self.input_dim + 1)
        return 2 * self.spectral_components * self.per_component + extra

    def component_of_feature(self) -> Tensor:
        """Index (D,) of the component each feature belongs to."""
        a = self.spectral_components
        parts = [torch.arange(a).repeat_interleave(2 * self.per_component)]
        if self.bias > 0:
            parts.append(torch.tensor([a]))
        if self.linear > 0:
            parts.append(torch.full((self.input_dim + 1,), a + (self.bias > 0)))
        return torch.cat(parts)

    def kernel_weights(self, feature_weights: Tensor) -> Tensor:
        """Kernel weights alpha (C,) of feature-space weights a (C,): ``a`` times each share."""
        weights = feature_weights.to(torch.float64)
        return weights * self._component_scale().to(weights.device)

    def __call__(self, x: Tensor) -> Tensor:
        """Features (n, D) of inputs (n, P), float64, each row of Euclidean norm 1."""
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"inputs must be (n, {self.input_dim}), got {tuple(x.shape)}")
        x = x.to(torch.float64).clamp(-MAX_INPUT, MAX_INPUT)
        a, m = self.spectral_components, self.per_component
        freqs = self.frequencies.to(x.device, torch.float64).reshape(a * m, -1)
        angles = (TWO_PI * x @ freqs.T).reshape(-1, a, m)
        psi = torch.cat([torch.cos(angles), torch.sin(angles)], dim=2).reshape(x.shape[0], -1)
        blocks = [psi * math.sqrt(self.spectral_share / (a * m))]
        if self.bias > 0:
            blocks.append(torch.full_like(x[:, :1], math.sqrt(self.bias)))
        if self.linear > 0:
            blocks.append(self._linear(x) * math.sqrt(self.linear))
        return torch.cat(blocks, dim=1)

    def _linear(self, x: Tensor) -> Tensor:
        """``[z, sqrt(1 - |z|^2)]``, z the input clipped to the radius-R ball, divided by R."""
        # |x| <= sqrt(P) MAX_INPUT is finite, so z is too, for any positive radius.
        z = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(self.radius)
        pad = (1.0 - z.square().sum(1, keepdim=True)).clamp_min(0.0).sqrt()
        return torch.cat([z, pad], dim=1)

    def _component_scale(self) -> Tensor:
        """Kernel weight per unit feature weight, per component (module docstring)."""
        scale = [self.spectral_share / self.spectral_components] * self.spectral_components
        scale += [s for s in (self.bias, self.linear) if s > 0]
        return torch.tensor(scale, dtype=torch.float64)

    def kernel(self, x1: Tensor, x2: Tensor, weights: Tensor) -> Tensor:
        """The random-feature estimate of ``sum_k weights_k k_k(x1, x2)`` (kernel weights)."""
        feature_weights = weights.to(torch.float64) / self._component_scale()
        scale = feature_weights[self.component_of_feature()].to(x1.device)
        return (self(x1) * scale) @ self(x2).T

    @classmethod
    def gsmp(
        cls,
        grid: GSMPGrid,
        per_component: int,
        seed: int = 0,
        *,
        bias: float = 0.0,
        linear: float = 0.0,
        radius: float = 1.0,
    ) -> RandomFeatures:
        """``per_component`` draws from each sub-kernel's spectral density (see module doc)."""
        if per_component < 1:
            raise ValueError(f"features per component must be >= 1, got {per_component}")
        rng = public_stream(seed, "dp-gsmp-features")
        a, p = grid.num_components, grid.dims
        signs = rng.choice([-1.0, 1.0], size=(a, per_component, p))
        eps = rng.standard_normal((a, per_component, p))
        means = grid.means.cpu().numpy()[:, None, :]
        scales = grid.scales.cpu().numpy()[:, None, :]
        frequencies = torch.from_numpy(signs * means + scales * eps)
        return cls(frequencies, bias, linear, radius)

    @classmethod
    def rbf(
        cls,
        lengthscales: Tensor,
        count: int,
        seed: int = 0,
        *,
        bias: float = 0.0,
        linear: float = 0.0,
        radius: float = 1.0,
    ) -> RandomFeatures:
        """One component: ``exp(-|tau / l|^2 / 2)`` has spectral density ``N(0, 1/(2 pi l)^2)``."""
        if count < 1:
            raise ValueError(f"the feature count must be >= 1, got {count}")
        ls = torch.as_tensor(lengthscales, dtype=torch.float64).reshape(-1)
        if bool((ls <= 0).any()):
            raise ValueError("lengthscales must be positive")
        rng = public_stream(seed, "dp-rbf-features")
        eps = torch.from_numpy(rng.standard_normal((1, count, ls.numel())))
        return cls(eps / (TWO_PI * ls), bias, linear, radius)
