"""Random Fourier features for the Gaussian kernel in cos/sin pairs: sums of sensitivity ~sqrt(2).

Bochner: for ``w ~ N(0, I / h^2)``, ``E[cos(w'(x - y))] = exp(-|x - y|^2 / (2 h^2))``. With D / 2
frequencies ``w_1 .. w_{D/2}``, each distributed so, the features are the pairs
``sqrt(2 / D) (cos w_p'x, sin w_p'x)``, so ``phi(x)' phi(y) = (2 / D) sum_p cos(w_p'(x - y))``
and ``E[phi(x)' phi(y)] = k(x, y)``: then ``phi(y)' S / n`` with ``S = sum_i phi(x_i)`` is an
unbiased estimate of the KDE ``(1/n) sum_i k(x_i, y)``. The frequencies come from the spec's
public seed; the cosines of all pairs come first, then their sines.

Two designs draw the frequencies (``SketchSpec.frequencies``); each frequency is N(0, I / h^2)
in both, so both estimates are unbiased, and only the joint law differs:

* ``iid``: independent draws (Rahimi and Recht 2007).
* ``orthogonal`` (default): blocks of d' (the featurised dimension) mutually orthogonal
  directions, the columns of independent Haar-random rotations (QR of a Gaussian matrix with
  the signs of R's diagonal, Mezzadri 2007), times radii stratified over the D / 2 frequencies
  in order: ``r_p = F^-1((p + U_p) / (D / 2)) / h`` for p = 0 .. D/2 - 1, with F the chi
  distribution's CDF on d' degrees of freedom and U_p independent uniforms. A frequency is then
  a uniform direction times a radius from the p-th of D / 2 equally likely strata of the chi
  law, independent of it, so the average over p of ``E cos(w_p'z)`` is ``E cos(w'z)`` for
  ``w ~ N(0, I / h^2)``: the kernel estimate (an average over p) is unbiased, although single
  frequencies are not N(0, I / h^2). Orthogonal directions (Yu et al., NeurIPS 2016) and
  stratified radii make the frequencies' errors cancel instead of adding up;
  ``bench/sketch_error.py`` measures the KDE error at 3.7-26x below the ``iid`` design's.

The designs differ in the approximation term of the stated error bound (``query``): iid
frequencies give Hoeffding's over D / 2 independent terms; the orthogonal design's terms are
dependent, and McDiarmid's inequality over the independent rotations and U_p gives a term
``sqrt(min(d', D / 2) + 1)`` times wider.

Fixed-point sums. The build (``accumulate``) does not sum the float32 features as they are: it
rounds every unscaled cosine and sine to the nearest multiple of 2^-g (``FEATURE_GRID_BITS`` g =
12, ``to_fixed_point``), an integer of magnitude at most 2^g in grid units. Float32 sums of up to
2^(24 - g) such rows (``FIXED_POINT_ROWS``) are then exact in any order, and so are their float64
totals (below 2^53 units), so the sums are exact functions of the records: a record adds its own
``q(phi(x))`` and nothing else, whatever the other records, the chunking or the thread count.
That needs the record's features to depend on it alone, so the products that form the angles
(and the projection) are taken in blocks of one fixed shape (``products``): a BLAS rounds a
product's rows by its shape, which the chunking and a neighbouring dataset's size change. A
floating-point sum's rounding would depend on the other records and fall outside the
sensitivity below. (Another device computes its own cosines: the same holds on it, with its
own bits.) The one rounding left, the float64 scaling of the exact totals (two
roundings), moves S by at most 2^-52 |S|_2 <= 2^-52 (1 + 2^-12) n on either dataset, inside the
bound's slack below (5e-5 in the norm of (q(phi(x)), 1)) for fewer than 10^11 records.

Sensitivity (privacy unit one record, add/remove neighbours). Adding or removing x changes the
released vector (S, n) by (q(phi(x)), 1). A pair contributes ``(2 / D)(cos^2 + sin^2) = 2 / D`` to
``|phi(x)|_2^2``, so ``|phi(x)|_2 = 1`` for any input and with no clipping; and
``|cos t| + |sin t| <= sqrt(2)`` gives ``|phi(x)|_1 <= (D / 2) sqrt(2) sqrt(2 / D) = sqrt(D)``.
In float32 (u = 2^-24) the cosine c and sine s of the same argument are each within 4u of the
exact values (``tests/test_sketch.py`` checks the library's), so ``c^2 + s^2 <= 1 + 8 sqrt(2) u
+ 32 u^2``. Rounding to the grid moves each by at most h = 2^-(g + 1), so a pair of the sums
contributes at most ``(|c| + h)^2 + (|s| + h)^2 <= c^2 + s^2 + 2 sqrt(2) (1 + 4u) h + 2 h^2 <=
1 + 3.46e-4 < 1 + 2^-11`` times 2 / D (g = 12), and ``|q(c)| + |q(s)| <= sqrt(2) (1 + 4u) + 2h``.
Hence ``|q(phi(x))|_2^2 <= 1 + 2^-11`` and:

* L2 sensitivity of (S, n): sqrt(|q(phi(x))|_2^2 + 1) <= sqrt(2 + 2^-11)   (Gaussian mechanism);
* L1 sensitivity of (S, n): |q(phi(x))|_1 + 1 <= sqrt(D) (1 + 2^-12) + 1   (Laplace mechanism,
  as in the construction of Wagner et al., ICML 2023, kept for comparison).

The grid costs the estimates little: ``phi(y)'`` times the sums of q moves by at most
``(2 / D) sum_p (|c_p(y)| + |s_p(y)|) h n <= sqrt(2) (1 + 4u) h n``, so a KDE estimate by at most
``sqrt(2) (1 + 4u) 2^-13`` (``GRID_ERROR``, 1.7e-4; ``query`` adds it to its bound), and the
noise by a factor sqrt(1 + 2^-12) at equal budget.

Single features ``sqrt(2 / D) cos(w'x + b)`` with random phases b only bound ``|phi|_2^2`` by 2,
which costs sqrt(3 / 2) in noise for the same guarantee; pairs are also the lower-variance
estimate of the Gaussian kernel (Sutherland and Schneider, UAI 2015). The L2 bound does not grow
with D while the L1 bound grows like sqrt(D); that is why the Gaussian release is far less noisy
at equal epsilon for any delta > 0.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from scipy.stats import chi
from torch import Tensor

from gramfed.workers.sketch.products import row_stable_mm
from gramfed.workers.sketch.projection import project, projection_matrix
from gramfed.workers.sketch.spec import SketchSpec, public_stream

FLOAT32_ROUNDOFF = 2.0**-24
FEATURE_GRID_BITS = 12  # the summed cosines and sines are multiples of 2^-12
FIXED_POINT_ROWS = 2 ** (24 - FEATURE_GRID_BITS)  # rows whose float32 grid sums stay exact
L2_SENSITIVITY = math.sqrt(2.0 + 2.0**-11)  # |q(phi)|^2 <= 1 + 2^-11, plus the count
# The grid's largest effect on a KDE estimate, sqrt(2) (1 + 4u) h with h = 2^-13.
GRID_ERROR = math.sqrt(2.0) * (1.0 + 4.0 * FLOAT32_ROUNDOFF) * 2.0 ** -(FEATURE_GRID_BITS + 1)


def l1_sensitivity(features: int) -> float:
    """L1 sensitivity of (S, n): sqrt(D) (1 + 2^-12) + 1 (see the module docstring)."""
    return math.sqrt(features) * (1.0 + 2.0**-FEATURE_GRID_BITS) + 1.0


def to_fixed_point(halves: Tensor) -> Tensor:
    """Round float32 cosines and sines (of ``unscaled``) in place to integers in units of
    2^-g, g = ``FEATURE_GRID_BITS``: the fixed-point features whose sums are exact (module
    docstring). Multiplying by 2^g is exact, and torch rounds half to even."""
    return halves.mul_(2.0**FEATURE_GRID_BITS).round_()


class RandomFourierFeatures:
    """phi(x) = sqrt(2 / D) [cos(W x), sin(W x)] for a gaussian ``SketchSpec``, on one device;
    W (d, D / 2) holds the frequencies as columns.

    Features are float32 (|phi_j| <= sqrt(2 / D), well inside float32's range and precision);
    the build sums them on a fixed-point grid (``to_fixed_point``), queries use them as they are.
    """

    def __init__(self, spec: SketchSpec, device: torch.device) -> None:
        if not spec.is_rff:
            raise ValueError(f"random Fourier features need the gaussian kernel, not {spec.kernel}")
        self.spec = spec
        self.device = device
        self.projection = projection_matrix(spec, device)
        self.weights = torch.tensor(frequencies(spec), dtype=torch.float32, device=device)
        self.scale = math.sqrt(2.0 / spec.features)

    def __call__(self, x: Tensor) -> Tensor:
        """Features (n, D) of inputs (n, d): the cosines, then the sines."""
        cosines, sines = self.unscaled(x)
        return torch.cat((cosines, sines), dim=1).mul_(self.scale)

    def unscaled(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """``cos(W x)`` and ``sin(W x)`` stacked (2, n, D / 2), of float32 inputs (n, d): the
        features without their scale, each half contiguous.

        Both halves are taken of the same float32 arguments, so a pair's squares sum to 1 up
        to the functions' own rounding, whatever the argument's size (the sensitivity rests on
        it; computing the sine as a shifted cosine would round the shifted argument anew).
        Separate halves rather than the two halves of (n, D) rows: torch's sine and cosine run
        1.5x (one thread) to 6x (two threads, D = 256) slower over strided half rows on a CPU.
        Sums and products with a fixed matrix (``pair_product``) take the scale afterwards,
        once, instead of one pass over every feature; ``out`` (2, n, D / 2) reuses a buffer,
        which spares a fresh allocation (and its page faults) per chunk.
        """
        inputs = project(x, self.projection)
        if out is None:
            out = torch.empty(
                2, inputs.shape[0], self.weights.shape[1], dtype=inputs.dtype, device=inputs.device
            )
        cosines, sines = out[0], out[1]
        row_stable_mm(inputs, self.weights, out=cosines)
        torch.sin(cosines, out=sines)
        cosines.cos_()
        return out


def pair_product(halves: Tensor, matrix: Tensor, out: Tensor | None = None) -> Tensor:
    """``[cos, sin] @ matrix`` of the stacked halves (2, n, D / 2) of ``unscaled`` with a (D,) or
    (D, k) ``matrix`` whose rows follow the features' order (cosines, then sines)."""
    half = halves.shape[2]
    first = torch.matmul(halves[0], matrix[:half], out=out)
    if matrix.ndim == 1:
        return first.addmv_(halves[1], matrix[half:])
    return first.addmm_(halves[1], matrix[half:])


@functools.lru_cache(maxsize=8)
def frequencies(spec: SketchSpec) -> np.ndarray:
    """The (d', D / 2) frequencies of a gaussian spec as columns, by its design (module
    docstring), from its public seed; read-only, computed once per spec (a class-by-class build
    and the models that read its release all featurise with the same spec)."""
    w = _draw_frequencies(spec)
    w.flags.writeable = False
    return w


def _draw_frequencies(spec: SketchSpec) -> np.ndarray:
    assert spec.bandwidth is not None
    dim, count = spec.featurised_dim, spec.features // 2
    if spec.frequencies == "iid":
        rng = public_stream(spec.seed, "rff")
        return rng.standard_normal((dim, count)) / spec.bandwidth
    rng = public_stream(spec.seed, "rff-orthogonal")
    # Stratum p's upper tail probability, 1 - (p + U) / M, computed so that it stays above 0
    # (a quantile of exactly 1 would be an infinite radius).
    tail = (np.arange(count - 1, -1, -1) + (1.0 - rng.random(count))) / count
    radii = chi.isf(tail, dim)
    blocks = []
    for start in range(0, count, dim):
        # A reduced QR of a d' x k Gaussian gives the first k columns of a Haar rotation.
        q, r = np.linalg.qr(rng.standard_normal((dim, min(dim, count - start))))
        blocks.append(q * np.sign(np.diag(r)))
    return np.concatenate(blocks, axis=1) * (radii / spec.bandwidth)
