"""Exact samplers for discrete Laplace and discrete Gaussian noise.

These follow Canonne, Kamath & Steinke, "The Discrete Gaussian for Differential Privacy"
(NeurIPS 2020), Algorithms 1-3. Every step is integer or rational arithmetic on uniformly random
integers from a ``RandomBits`` source, so the output distribution is exactly the stated one:
there is no floating-point arithmetic whose rounding could depend on the secret value (the
failure of textbook float Laplace noise shown by Mironov, CCS 2012).

Parameters are exact rationals (``fractions.Fraction``); floats convert to them exactly.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from gramfed.privacy.rng import RandomBits, system_bits

_INT64_SAFE = 2**62


def _ratio(value: Fraction | int | float, what: str) -> tuple[int, int]:
    q = Fraction(value)
    if q <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return q.numerator, q.denominator


def bernoulli(p: Fraction | int | float, rng: RandomBits | None = None) -> bool:
    """One draw of Bernoulli(p) for a rational p in [0, 1]: U < n where U is uniform on [0, d)."""
    q = Fraction(p)
    if not 0 <= q <= 1:
        raise ValueError(f"a probability must lie in [0, 1], got {p!r}")
    return (rng or system_bits()).randbelow(q.denominator) < q.numerator


def _bernoulli_exp_le1(n: int, d: int, rng: RandomBits) -> bool:
    """Bernoulli(exp(-n/d)) for 0 <= n/d <= 1 (CKS Algorithm 1, first branch).

    Draw A_k ~ Bernoulli(gamma / k) for k = 1, 2, ... until the first failure at index K. Then
    P[K > k] = gamma^k / k!, so P[K odd] = sum_k (-gamma)^k / k! = exp(-gamma).
    """
    k = 1
    randbelow = rng.randbelow
    while randbelow(d * k) < n:
        k += 1
    return k & 1 == 1


def bernoulli_exp(gamma: Fraction | int | float, rng: RandomBits | None = None) -> bool:
    """One draw of Bernoulli(exp(-gamma)) for a rational gamma >= 0 (CKS Algorithm 1).

    For gamma > 1 it uses exp(-gamma) = exp(-1)^floor(gamma) * exp(-(gamma - floor(gamma))): all
    floor(gamma) draws of Bernoulli(exp(-1)) must succeed, then one of the fractional part.
    """
    q = Fraction(gamma)
    if q < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma!r}")
    return _bernoulli_exp(q.numerator, q.denominator, rng or system_bits())


def _bernoulli_exp(n: int, d: int, rng: RandomBits) -> bool:
    whole, n = divmod(n, d)
    for _ in range(whole):
        if not _bernoulli_exp_le1(1, 1, rng):
            return False
    return _bernoulli_exp_le1(n, d, rng)


def _discrete_laplace(t: int, s: int, rng: RandomBits) -> int:
    """Discrete Laplace with scale t/s: P[X = x] proportional to exp(-|x| s / t) (CKS Algorithm 2).

    U uniform on {0..t-1} is kept with probability exp(-U/t); V counts successes of
    Bernoulli(exp(-1)) before the first failure. X = U + tV then has P[X = x] proportional to
    exp(-x/t) on the non-negative integers, and Y = floor(X/s) has P[Y = y] proportional to
    exp(-y s/t). A fair sign B makes it two-sided; (B = 1, Y = 0) is rejected so that zero is not
    counted twice.
    """
    randbelow = rng.randbelow
    randbits = rng.randbits
    while True:
        u = randbelow(t)
        if not _bernoulli_exp_le1(u, t, rng):
            continue
        v = 0
        while _bernoulli_exp_le1(1, 1, rng):
            v += 1
        y = (u + t * v) // s
        if randbits(1):
            if y == 0:
                continue
            return -y
        return y


def discrete_laplace(scale: Fraction | int | float, rng: RandomBits | None = None) -> int:
    """One draw from the discrete Laplace distribution: P[X = x] proportional to exp(-|x|/scale)."""
    t, s = _ratio(scale, "the discrete Laplace scale")
    return _discrete_laplace(t, s, rng or system_bits())


def _discrete_gaussian(num: int, den: int, rng: RandomBits) -> int:
    """Discrete Gaussian with sigma^2 = num/den (CKS Algorithm 3).

    With t = floor(sigma) + 1, draw Y ~ discrete Laplace(t) and keep it with probability
    exp(-(|Y| - sigma^2/t)^2 / (2 sigma^2)). The kept Y has P[Y = y] proportional to
    exp(-y^2 / (2 sigma^2)) (CKS Theorem 29). In integers:
    (|Y| - sigma^2/t)^2 / (2 sigma^2) = (|Y| t den - num)^2 / (2 num den t^2).
    """
    t = math.isqrt(num // den) + 1
    bottom = 2 * num * den * t * t
    while True:
        y = _discrete_laplace(t, 1, rng)
        a = abs(y) * t * den - num
        if _bernoulli_exp(a * a, bottom, rng):
            return y


def discrete_gaussian(sigma2: Fraction | int | float, rng: RandomBits | None = None) -> int:
    """One draw from N_Z(0, sigma2): P[X = x] proportional to exp(-x^2 / (2 sigma2))."""
    num, den = _ratio(sigma2, "the discrete Gaussian variance parameter sigma^2")
    return _discrete_gaussian(num, den, rng or system_bits())


def _check_int64(bound: float, what: str) -> None:
    if bound >= _INT64_SAFE:
        raise ValueError(f"{what} is too large for 64-bit integer noise")


def discrete_laplace_array(
    scale: Fraction | int | float, size: int, rng: RandomBits | None = None
) -> np.ndarray:
    """``size`` independent discrete Laplace draws as an int64 array."""
    t, s = _ratio(scale, "the discrete Laplace scale")
    _check_int64(60 * t / s, "the discrete Laplace scale")
    source = rng or system_bits()
    return np.fromiter((_discrete_laplace(t, s, source) for _ in range(size)), np.int64, size)


def discrete_gaussian_array(
    sigma2: Fraction | int | float, size: int, rng: RandomBits | None = None
) -> np.ndarray:
    """``size`` independent discrete Gaussian draws as an int64 array."""
    num, den = _ratio(sigma2, "the discrete Gaussian variance parameter sigma^2")
    _check_int64(60 * math.sqrt(num / den), "the discrete Gaussian scale")
    source = rng or system_bits()
    return np.fromiter((_discrete_gaussian(num, den, source) for _ in range(size)), np.int64, size)
