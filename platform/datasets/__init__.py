"""Datasets shipped with gramfed.

``slimkl/`` holds the 16 regression sets of the SLIM-KL paper's public code and the
authors' own stored results; ``slimkl/PROVENANCE.md`` says where they come from.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import scipy.io

SLIMKL_DATASETS: tuple[str, ...] = (
    "electricitydata",
    "passengerdata",
    "hoteldata",
    "employmentdata",
    "unemployment",
    "clay",
    "CO2",
    "ECG_signal",
    "ale80",
    "airfoil600",
    "cccp1000",
    "cccp9500",
    "toxicity436",
    "concrete824",
    "water800",
    "wine1279",
)


@dataclass(frozen=True)
class TrainTestSplit:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _slimkl_dir() -> Path:
    return Path(str(resources.files(__package__).joinpath("slimkl")))


def load_slimkl(name: str) -> TrainTestSplit:
    """Load one shipped SLIM-KL dataset as float64 arrays (x: n x P, y: n)."""
    if name not in SLIMKL_DATASETS:
        raise KeyError(
            f"unknown SLIM-KL dataset {name!r}; choose from {', '.join(SLIMKL_DATASETS)}"
        )
    mat = scipy.io.loadmat(_slimkl_dir() / f"{name}.mat")

    def as_x(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        return a.reshape(-1, 1) if a.ndim == 1 else a

    return TrainTestSplit(
        name=name,
        x_train=as_x(mat["xtrain"]),
        y_train=np.asarray(mat["ytrain"], dtype=np.float64).ravel(),
        x_test=as_x(mat["xtest"]),
        y_test=np.asarray(mat["ytest"], dtype=np.float64).ravel(),
    )


SERIES_TEST_POINTS = 20  # the authors score every 1-D series on its first 20 test points


def slimkl_authors_split(name: str) -> TrainTestSplit:
    """The split the authors scored their stored results on (their ``d2sca.m``).

    The 1-D series are scored on the first 20 test points only (ECG_signal has 39,
    passengerdata 21), and CO2's last training point is moved to the head of its test set
    (480 training points, 21 test points). The multi-dimensional sets are scored on their
    whole test sets, as stored.
    """
    split = load_slimkl(name)
    if split.x_train.shape[1] != 1:
        return split
    x_train, y_train, x_test, y_test = split.x_train, split.y_train, split.x_test, split.y_test
    keep = SERIES_TEST_POINTS
    if name == "CO2":
        x_test, y_test = np.vstack([x_train[-1:], x_test]), np.concatenate([y_train[-1:], y_test])
        x_train, y_train = x_train[:-1], y_train[:-1]
        keep += 1
    return TrainTestSplit(name, x_train, y_train, x_test[:keep], y_test[:keep])


def slimkl_reference_rows() -> list[dict[str, str]]:
    """The authors' stored runs (``reference_results.csv``), one dict per row."""
    with open(_slimkl_dir() / "reference_results.csv", newline="") as f:
        return list(csv.DictReader(f))


@dataclass(frozen=True)
class ReferenceFigure:
    test_mse: float
    time_s: float
    method: str


def slimkl_reference(name: str) -> ReferenceFigure | None:
    """The figure to beat: the authors' lowest two-agent ADMM test MSE, with its time.

    wine1279 has only quantized two-agent runs, so those count; water800 and cccp9500
    have no two-agent run and return None.
    """
    method = "gsmp_quantized_admm" if name == "wine1279" else "gsmp_admm"
    rows = [
        r
        for r in slimkl_reference_rows()
        if r["dataset"] == name and r["method"] == method and r["agents"] == "2" and r["test_mse"]
    ]
    if not rows:
        return None
    best = min(rows, key=lambda r: float(r["test_mse"]))
    return ReferenceFigure(float(best["test_mse"]), float(best["time_s"]), method)
