"""DP classification by class densities: one sketch per class, predict the densest class.

The class sketches come from one gate release (``release_sketches`` with the class labels as
groups): each record lies in one class, so the whole set costs what one sketch costs. Labels are
public (the set of classes, not who is in which). Prediction is post-processing.

Denoising with public rows (``public=``): a class's exact sums ``S_c = Phi_c' 1`` lie in the span
of the features of its records. When public rows (never the private ones) represent the data,
that span is close to the span of their features ``P`` (m, size), and projecting the released
sums on it, ``P' (P P')^+ P S~_c``, keeps the signal while removing the noise orthogonal to it:
a score's noise sd drops from ``sigma |phi(y)|`` to ``sigma |proj phi(y)|``. It reads only the
release and public data, so it is post-processing too. For LSH sketches ``P`` is never formed:
``P v`` gathers counts, ``P' z`` scatters them, and ``P P'`` counts shared buckets. The cost
grows like m^3 in the m public rows: a thousand or so is plenty when class densities are smooth.

``rank=k`` keeps only the k leading directions of that span, the top kernel principal components
of the public rows (the leading eigenvectors of ``P P'``): a score's noise then lives in k
dimensions instead of m, while the class sums, which are smooth functions of the data, keep
most of their mass there. k trades that noise against the bias of dropping the rest; it is
public (a choice made on public or held-out data, never on the evaluation data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from gramfed.workers.device import resolve_device
from gramfed.workers.sketch.accumulate import (
    QUERY_CHUNK_BYTES,
    ChunkHook,
    SketchSums,
    as_inputs,
    chunk_rows,
    featuriser,
    grouped_sums,
    rff_cosines,
)
from gramfed.workers.sketch.rff import RandomFourierFeatures, pair_product
from gramfed.workers.sketch.sketch import Sketch
from gramfed.workers.sketch.spec import SketchMismatch, SketchSpec


def accumulate_by_label(
    spec: SketchSpec,
    x: np.ndarray | Tensor,
    y: np.ndarray | Sequence[object],
    labels: Sequence[str],
    *,
    device: str | torch.device | None = "auto",
    rows_per_chunk: int | None = None,
    on_chunk: ChunkHook | None = None,
) -> dict[str, SketchSums]:
    """Exact sums of the rows of each class; ``labels`` are the public class names.

    A label with no rows gets zero sums (its count is then pure noise once released), and a row
    whose label is not listed is refused: dropping it silently would change the data. One pass
    over the rows sums every class (``grouped_sums``).
    """
    # Group by the distinct values, naming only those: str() per row costs more than hashing a
    # million rows.
    names, group = _distinct(np.asarray(y))
    unknown = sorted(set(names) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the declared classes {list(labels)}")
    inputs = as_inputs(x, spec)
    if group.size != inputs.shape[0]:
        raise ValueError(f"{inputs.shape[0]} rows but {group.size} labels")
    # Values with equal names (1 and "1") are one class.
    position = {label: i for i, label in enumerate(labels)}
    code = np.array([position[name] for name in names], dtype=np.int64)[group.ravel()]
    feature = featuriser(spec, resolve_device(device))
    sums = grouped_sums(
        feature, inputs, torch.from_numpy(code), len(labels), rows_per_chunk, on_chunk
    )
    return dict(zip(labels, sums, strict=True))


def _distinct(raw: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The names of the distinct values of ``raw`` in order, and each entry's index among them.

    Integer labels in a range of up to 2^20 are counted (``bincount``, 5 ms for a million
    rows) instead of sorted (``np.unique``, 26 ms); values of mixed types do not sort, their
    names do.
    """
    if raw.dtype.kind in "iu" and raw.size and int(raw.max()) - int(raw.min()) < 1 << 20:
        low = int(raw.min())
        # Modulo 2^64, the difference is right for any integer dtype (uint64 included).
        offset = np.subtract(raw.ravel(), raw.min(), dtype=np.int64, casting="unsafe")
        present = np.bincount(offset) > 0
        names = [str(low + k) for k in np.flatnonzero(present).tolist()]
        return names, (np.cumsum(present) - 1)[offset]
    try:
        values, group = np.unique(raw, return_inverse=True)
    except TypeError:
        values, group = np.unique(raw.astype(str), return_inverse=True)
    return [str(v) for v in values.tolist()], group


def class_spec(sketches: Mapping[str, Sketch]) -> tuple[list[str], SketchSpec]:
    """The class labels and the spec every class sketch shares; fewer than two classes, or
    sketches that do not match, are refused."""
    if len(sketches) < 2:
        raise ValueError("classification needs sketches of at least two classes")
    labels = list(sketches)
    spec = sketches[labels[0]].spec
    for sketch in sketches.values():
        spec.require_compatible(sketch.spec, "classify with")
    return labels, spec


class SketchClassifier:
    """Predicts the class whose sketch gives the highest estimated density at a query.

    With ``prior=True`` the densities are weighted by the noisy class proportions, i.e. the
    class of largest estimated joint density (the Bayes rule under the class KDEs). The joint
    density ``(raw_c / n_c) (n_c / N)`` is ``raw_c / N``, so its argmax needs no count at all
    and its value only a positive total N. That matters for LSH sketches, whose count carries
    the same noise as every bucket (sd growing like sqrt(R)): with many repetitions and small
    classes a noisy count can be negative while the class's scores, averaged over the R
    repetitions, are still accurate. ``public`` rows denoise the class sums, on their ``rank``
    leading directions if given (module docstring).
    """

    def __init__(
        self,
        sketches: Mapping[str, Sketch],
        *,
        prior: bool = False,
        public: np.ndarray | Tensor | None = None,
        rank: int | None = None,
        device: str | torch.device | None = "auto",
    ) -> None:
        self.labels, self.spec = class_spec(sketches)
        self.device = resolve_device(device)
        self.feature = featuriser(self.spec, self.device)
        counts = torch.tensor([sketches[c].count for c in self.labels], dtype=torch.float64)
        if not prior and bool((counts <= 0).any()):
            bad = [c for c, n in zip(self.labels, counts.tolist(), strict=True) if n <= 0]
            raise SketchMismatch(
                f"classes {bad} have a non-positive noisy count; prior=True needs only a"
                " positive total"
            )
        self.counts = counts
        self.prior = prior
        stacked = np.stack([sketches[c].values for c in self.labels], axis=1).astype(np.float64)
        if rank is not None and (public is None or isinstance(rank, bool) or rank < 1):
            raise ValueError(f"rank must be a positive integer with public rows, got {rank!r}")
        if public is not None:
            stacked = self._public_span(as_inputs(public, self.spec), stacked, rank)
        if isinstance(self.feature, RandomFourierFeatures):
            # phi(y)' S = [cos, sin](W y)' (scale S): the scale goes into the sums once.
            stacked = stacked * self.feature.scale
            dtype = torch.float32
        else:
            dtype = torch.float64
        self.values = torch.tensor(stacked, dtype=dtype, device=self.device)  # (size, C)

    def scores(self, queries: np.ndarray | Tensor) -> Tensor:
        """(m, C) estimated class densities (times the class priors with ``prior=True``)."""
        raw = self._numerators(queries)
        if not self.prior:
            return raw / self.counts
        total = float(self.counts.sum())
        if total <= 0:
            raise SketchMismatch(
                f"the classes' noisy counts sum to {total:.3g}: no joint density to report"
                " (predict still works)"
            )
        return raw / total

    def predict(self, queries: np.ndarray | Tensor) -> np.ndarray:
        """The predicted label of each query."""
        scores = self._numerators(queries) if self.prior else self.scores(queries)
        return np.asarray(self.labels, dtype=object)[scores.argmax(1).numpy()]

    def _public_span(self, public: Tensor, values: np.ndarray, rank: int | None) -> np.ndarray:
        """``values`` (size, C) projected on the span of the public rows' features (on its
        ``rank`` leading directions if given)."""
        if public.shape[0] < 1:
            raise ValueError("give at least one public row to denoise with")
        v = torch.as_tensor(values, dtype=torch.float64)
        if isinstance(self.feature, RandomFourierFeatures):
            p = self.feature(public.to(self.device, torch.float32)).to("cpu", torch.float64)
            return (p.T @ _pseudo_solve(p @ p.T, p @ v, rank)).numpy()
        index = self.feature(public).cpu()  # (m, R) flat bucket positions
        gram = _shared_buckets(index, self.spec.buckets)
        pv = v[index].sum(1)  # (m, C)
        z = _pseudo_solve(gram, pv, rank)
        out = torch.zeros_like(v)
        out.index_add_(0, index.reshape(-1), z.repeat_interleave(index.shape[1], 0))
        return out.numpy()

    def _numerators(self, queries: np.ndarray | Tensor) -> Tensor:
        """(m, C) noisy kernel sums of each class at each query: the densities times n_c."""
        y = as_inputs(queries, self.spec)
        if isinstance(self.feature, RandomFourierFeatures):
            rows = chunk_rows(self.spec, QUERY_CHUNK_BYTES)
            out = [
                pair_product(halves, self.values).to(torch.float64).cpu()
                for _, halves in rff_cosines(self.feature, y, rows)
            ]
            raw = torch.cat(out) if out else torch.zeros(0, len(self.labels), dtype=torch.float64)
        else:
            raw = self.feature.mean_lookup(self.values, y, chunk_rows(self.spec))
        if not self.spec.is_rff and self.spec.kernel != "angular":
            # Remove the hash collisions' share 1/W of each class's counts (see ``lsh``).
            w = self.spec.buckets
            raw = (raw - self.counts / w) / (1.0 - 1.0 / w)
        return raw


def leading_eigenpairs(gram: Tensor, rank: int | None = None) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric positive semi-definite ``gram``
    above its numerical rank (public rows can repeat, so it can be singular), the ``rank``
    largest of them if given."""
    values, vectors = torch.linalg.eigh(gram)  # ascending
    keep = values > values.max() * gram.shape[0] * torch.finfo(gram.dtype).eps
    if rank is not None:
        keep[: max(0, gram.shape[0] - rank)] = False
    return values[keep], vectors[:, keep]


def _pseudo_solve(gram: Tensor, rhs: Tensor, rank: int | None = None) -> Tensor:
    """``gram^+ rhs`` by the eigendecomposition (a few times cheaper than an SVD-based
    least-squares solve and as exact on the range). With ``rank`` only the ``rank`` largest
    eigenvalues are inverted: ``P' gram_k^+ P`` projects on the top ``rank`` directions."""
    values, vectors = leading_eigenpairs(gram, rank)
    return vectors @ ((vectors.T @ rhs) / values[:, None])


def _shared_buckets(index: Tensor, buckets: int, block_elements: int = 1 << 24) -> Tensor:
    """(m, m) number of repetitions in which two rows share a bucket: ``P P'`` for the one-hot
    bucket matrix P (m, R W), formed a block of repetitions at a time."""
    m, reps = index.shape
    per_block = max(1, block_elements // (m * buckets))
    gram = torch.zeros(m, m, dtype=torch.float64)
    for start in range(0, reps, per_block):
        local = index[:, start : start + per_block] - start * buckets
        onehot = torch.zeros(m, local.shape[1] * buckets, dtype=torch.float32)
        onehot.scatter_(1, local, 1.0)
        gram += (onehot @ onehot.T).to(torch.float64)
    return gram
