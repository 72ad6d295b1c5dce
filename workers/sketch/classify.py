"""DP classification by class densities: one sketch per class, predict the densest class.

The class sketches come from one gate release (``release_sketches`` with the class labels as
groups): each record lies in one class, so the whole set costs what one sketch costs. Labels are
public (the set of classes, not who is in which). Prediction is post-processing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from gramfed.workers.device import resolve_device
from gramfed.workers.sketch.accumulate import (
    SketchSums,
    accumulate,
    as_inputs,
    chunk_rows,
    featuriser,
)
from gramfed.workers.sketch.sketch import Sketch
from gramfed.workers.sketch.spec import SketchMismatch, SketchSpec


def accumulate_by_label(
    spec: SketchSpec,
    x: np.ndarray | Tensor,
    y: np.ndarray | Sequence[object],
    labels: Sequence[str],
    **options: object,
) -> dict[str, SketchSums]:
    """Exact sums of the rows of each class; ``labels`` are the public class names.

    A label with no rows gets zero sums (its count is then pure noise once released), and a row
    whose label is not listed is refused: dropping it silently would change the data.
    """
    names = np.asarray([str(v) for v in np.asarray(y).tolist()])
    unknown = sorted(set(names.tolist()) - set(labels))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not among the declared classes {list(labels)}")
    inputs = as_inputs(x, spec)
    if len(names) != inputs.shape[0]:
        raise ValueError(f"{inputs.shape[0]} rows but {len(names)} labels")
    return {
        label: accumulate(spec, inputs[torch.from_numpy(names == label)], **options)  # type: ignore[arg-type]
        for label in labels
    }


class SketchClassifier:
    """Predicts the class whose sketch gives the highest estimated density at a query.

    With ``prior=True`` the densities are weighted by the noisy class proportions, i.e. the
    class of largest estimated joint density (the Bayes rule under the class KDEs).
    """

    def __init__(
        self,
        sketches: Mapping[str, Sketch],
        *,
        prior: bool = False,
        device: str | torch.device | None = "auto",
    ) -> None:
        if len(sketches) < 2:
            raise ValueError("classification needs sketches of at least two classes")
        self.labels = list(sketches)
        first = sketches[self.labels[0]]
        for sketch in sketches.values():
            first.spec.require_compatible(sketch.spec, "classify with")
        self.spec = first.spec
        self.device = resolve_device(device)
        self.feature = featuriser(self.spec, self.device)
        counts = torch.tensor([sketches[c].count for c in self.labels], dtype=torch.float64)
        if bool((counts <= 0).any()):
            bad = [c for c, n in zip(self.labels, counts.tolist(), strict=True) if n <= 0]
            raise SketchMismatch(f"classes {bad} have a non-positive noisy count")
        self.counts = counts
        self.priors = counts / counts.sum() if prior else torch.ones_like(counts)
        dtype = torch.float32 if self.spec.is_rff else torch.float64
        stacked = np.stack([sketches[c].values for c in self.labels], axis=1)
        self.values = torch.tensor(stacked, dtype=dtype, device=self.device)  # (size, C)

    def scores(self, queries: np.ndarray | Tensor) -> Tensor:
        """(m, C) estimated class densities (times the class priors with ``prior=True``)."""
        y = as_inputs(queries, self.spec)
        rows = chunk_rows(self.spec)
        out = []
        for start in range(0, y.shape[0], rows):
            chunk = y[start : start + rows].to(self.device)
            if self.spec.is_rff:
                raw = self.feature(chunk.to(torch.float32)) @ self.values
            else:
                raw = self.values[self.feature(chunk)].mean(1)
            out.append(raw.to(torch.float64).cpu())
        raw_all = torch.cat(out) if out else torch.zeros(0, len(self.labels), dtype=torch.float64)
        density = raw_all / self.counts
        if not self.spec.is_rff and self.spec.kernel != "angular":
            w = self.spec.buckets
            density = (density - 1.0 / w) / (1.0 - 1.0 / w)
        return density * self.priors

    def predict(self, queries: np.ndarray | Tensor) -> np.ndarray:
        """The predicted label of each query."""
        best = self.scores(queries).argmax(1).numpy()
        return np.asarray(self.labels, dtype=object)[best]
