"""Fixed-point encoding of real-valued query answers onto a power-of-two grid.

Real answers are rounded to integers in units of ``2**exponent``, integer noise is added, and the
result is scaled back. Scaling by a power of two is exact in binary floating point, and integers
below 2^53 are exact doubles, so the output is a deterministic function of the noisy integer:
no rounding in the noise path can depend on the secret value.

Rounding changes the sensitivity. If two answers differ by at most S in L2 (or L1) norm, their
rounded images differ coordinate-wise by at most ``|a_j - a'_j| + 1`` grid units, so by at most
``S / 2**exponent + sqrt(dim)`` units in L2 (triangle inequality) and ``S / 2**exponent + dim``
in L1. Those inflated sensitivities enter every privacy map.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from gramfed.privacy.errors import MechanismError

DEFAULT_BITS = 20  # the sensitivity spans about 2^20 grid units
_EXACT_LIMIT = 2**52


def default_exponent(*scales: float) -> int:
    """Grid exponent so that the smallest given scale spans about 2^20 units."""
    smallest = min(scales)
    if not (smallest > 0 and math.isfinite(smallest)):
        raise MechanismError("noise scale and sensitivity must be positive and finite")
    return math.floor(math.log2(smallest)) - DEFAULT_BITS


def grid(exponent: int) -> Fraction:
    """The grid step 2**exponent as an exact fraction."""
    return Fraction(2) ** exponent


def ceil_sqrt(n: int) -> int:
    """Smallest integer >= sqrt(n)."""
    r = math.isqrt(n)
    return r if r * r == n else r + 1


def l2_units(sensitivity: float, exponent: int, dim: int) -> Fraction:
    """Upper bound on the L2 distance of rounded neighbouring answers, in grid units."""
    return Fraction(sensitivity) / grid(exponent) + ceil_sqrt(dim)


def l1_units(sensitivity: float, exponent: int, dim: int) -> Fraction:
    """Upper bound on the L1 distance of rounded neighbouring answers, in grid units."""
    return Fraction(sensitivity) / grid(exponent) + dim


def encode(values: np.ndarray, exponent: int) -> np.ndarray:
    """Round finite reals to the grid, as int64 grid units."""
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise MechanismError("the query answer contains NaN or infinity")
    units = np.rint(np.ldexp(x, -exponent))
    if units.size and np.max(np.abs(units)) >= _EXACT_LIMIT:
        raise MechanismError("the query answer is too large for the fixed-point grid")
    return units.astype(np.int64)


def decode(units: np.ndarray, exponent: int) -> np.ndarray:
    """Scale integer grid units back to reals; exact while |units| < 2^53."""
    u = np.asarray(units, dtype=np.int64)
    if u.size and np.max(np.abs(u)) >= 2 * _EXACT_LIMIT:
        raise MechanismError("the noisy answer left the exactly representable range")
    return np.ldexp(u.astype(np.float64), exponent)
