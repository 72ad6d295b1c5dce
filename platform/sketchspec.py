"""Sketch jobs: the TOML specification of ``gramfed sketch build`` and the files it reads.

Example::

    [job]
    name = "reference"

    [data]
    path = "train.csv"           # .csv / .parquet (header), .npy or .npz (x_key, y_key)
    features = ["a", "b"]        # CSV/Parquet columns (default: all but the label column)
    label = "class"              # column with the class of each row (for class sketches)

    [sketch]
    kernel = "gaussian"          # gaussian | laplacian | l2 | angular
    bandwidth = 0.8              # or: bandwidth_public = "public.npy" (median rule)
    features = 4096              # gaussian (RFF); LSH kernels: repetitions, hashes, buckets
    seed = 1
    classes = ["0", "1"]         # optional: one sketch per class, released together

    [privacy]
    ledger = "ledger.db"
    key = "~/.gramfed/ledger.key"
    dataset = "customers"        # the budget pool is DATASET:record
    budget_epsilon = 4.0         # creates the pool if it does not exist
    epsilon = 1.0                # this release (delta from the pool unless given)

    [output]
    path = "reference.gfs"

The bandwidth is public: a number, or the median rule on a *public* data file. It is never
tuned on the private data, which would make it depend on them without paying for it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, model_validator

from gramfed.platform.data import DataError, load_table
from gramfed.platform.specfile import load_toml_model
from gramfed.workers.sketch.spec import SketchSpec


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSection(_Section):
    kind: Literal["sketch_build"] = "sketch_build"
    name: str = Field("sketch", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")


class DataSection(_Section):
    path: Path
    features: list[str] | None = None
    label: str | None = None
    x_key: str = "X"
    y_key: str = "y"


class SketchSection(_Section):
    kernel: Literal["gaussian", "laplacian", "l2", "angular"]
    bandwidth: PositiveFloat | None = None
    bandwidth_public: Path | None = None
    features: int = Field(0, ge=0, le=1 << 20)
    repetitions: int = Field(0, ge=0, le=1 << 16)
    hashes: int = Field(0, ge=0, le=64)
    buckets: int = Field(0, ge=0)
    projection_dim: int | None = Field(None, ge=1)
    frequencies: Literal["orthogonal", "iid"] | None = None
    seed: int = Field(0, ge=0, le=2**63 - 1)
    noise: Literal["gaussian", "laplace"] = "gaussian"
    classes: list[str] | None = Field(None, min_length=2)

    @model_validator(mode="after")
    def _one_bandwidth(self) -> SketchSection:
        if self.kernel != "angular" and (self.bandwidth is None) == (self.bandwidth_public is None):
            raise ValueError("give exactly one of 'bandwidth' or 'bandwidth_public'")
        return self


class PrivacySection(_Section):
    ledger: Path
    key: Path
    dataset: str = Field(min_length=1)
    epsilon: PositiveFloat | None = None
    delta: float | None = Field(None, gt=0, lt=1)
    rho: PositiveFloat | None = None
    budget_epsilon: PositiveFloat | None = None
    budget_delta: float = Field(1e-6, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_request(self) -> PrivacySection:
        if (self.epsilon is None) == (self.rho is None):
            raise ValueError("give exactly one of 'epsilon' (with optional 'delta') or 'rho'")
        if self.rho is not None and self.delta is not None:
            raise ValueError("'delta' goes with 'epsilon', not with 'rho'")
        return self


class ComputeSection(_Section):
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    shards: int = Field(1, ge=1, le=4096)


class OutputSection(_Section):
    path: Path


class SketchJob(_Section):
    job: JobSection = JobSection()
    data: DataSection
    sketch: SketchSection
    privacy: PrivacySection
    compute: ComputeSection = ComputeSection()
    output: OutputSection

    @model_validator(mode="after")
    def _labels_for_classes(self) -> SketchJob:
        if (self.sketch.classes is None) != (self.data.label is None):
            raise ValueError("class sketches need both 'sketch.classes' and 'data.label'")
        return self

    def sketch_spec(self, input_dim: int) -> SketchSpec:
        s = self.sketch
        bandwidth = s.bandwidth
        if s.bandwidth_public is not None:
            bandwidth = median_bandwidth(load_points(s.bandwidth_public).x)
        return SketchSpec(
            kernel=s.kernel,
            input_dim=input_dim,
            seed=s.seed,
            bandwidth=None if s.kernel == "angular" else bandwidth,
            features=s.features,
            repetitions=s.repetitions,
            hashes=s.hashes,
            buckets=s.buckets,
            projection_dim=s.projection_dim,
            frequencies=s.frequencies,
        )


def load_sketch_job(path: Path) -> SketchJob:
    """Read and validate a sketch job; relative paths resolve against the job file's folder."""
    job = load_toml_model(path, SketchJob)
    base = path.parent

    def resolve(p: Path) -> Path:
        p = p.expanduser()
        return p if p.is_absolute() else base / p

    updates = {
        "data": job.data.model_copy(update={"path": resolve(job.data.path)}),
        "privacy": job.privacy.model_copy(
            update={"ledger": resolve(job.privacy.ledger), "key": resolve(job.privacy.key)}
        ),
        "output": job.output.model_copy(update={"path": resolve(job.output.path)}),
    }
    if job.sketch.bandwidth_public is not None:
        public = resolve(job.sketch.bandwidth_public)
        updates["sketch"] = job.sketch.model_copy(update={"bandwidth_public": public})
    return job.model_copy(update=updates)


class Points:
    """Rows to sketch or query, and their labels when asked for."""

    def __init__(self, x: np.ndarray, labels: np.ndarray | None) -> None:
        self.x = x
        self.labels = labels


def load_points(
    path: Path,
    *,
    features: list[str] | None = None,
    label: str | None = None,
    x_key: str = "X",
    y_key: str = "y",
) -> Points:
    """Points from a file; with ``label`` (a column, or ``y_key`` of an .npz) their classes.

    Labelled tables go through ``gramfed.platform.data.load_table``; unlabelled CSV files are
    read column by column with the same kind of one-line errors.
    """
    suffix = path.suffix.lower()
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if suffix == ".npy":
        if label is not None:
            raise DataError(f"{path}: a .npy file holds no labels; use .npz or a table")
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            raise DataError(f"{path}: not a readable .npy array") from None
        return Points(_matrix(path, x), None)
    if suffix == ".npz" and label is None:
        with np.load(path, allow_pickle=False) as archive:
            if x_key not in archive:
                raise DataError(f"{path}: no array {x_key!r} (has: {', '.join(archive.files)})")
            return Points(_matrix(path, archive[x_key]), None)
    if label is not None or suffix != ".csv":
        table = load_table(
            path,
            target=label if suffix in (".csv", ".parquet") else None,
            features=features if suffix in (".csv", ".parquet") else None,
            x_key=x_key,
            y_key=y_key,
        )
        return Points(table.x, table.y if label is not None else None)
    return Points(_read_csv_points(path, features), None)


def class_names(labels: np.ndarray) -> np.ndarray:
    """Labels as text; integral numbers without a decimal point ("3", not "3.0")."""
    return np.asarray([str(int(v)) if float(v).is_integer() else str(v) for v in labels])


def median_bandwidth(public: np.ndarray, sample: int = 2000) -> float:
    """The median rule on public data: median pairwise distance / sqrt(2)."""
    rows = public[np.random.default_rng(0).permutation(len(public))[:sample]]
    diff = rows[:, None, :] - rows[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))[np.triu_indices(len(rows), 1)]
    h = float(np.median(dist)) / math.sqrt(2.0)
    if not h > 0:
        raise DataError("the public data have a zero median distance; give a bandwidth")
    return h


def _matrix(path: Path, x: np.ndarray) -> np.ndarray:
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"{path}: expected a non-empty (rows, columns) matrix, got {x.shape}")
    if x.dtype.kind not in "iuf":
        raise DataError(f"{path}: expected numbers, got {x.dtype}")
    if not np.all(np.isfinite(x)):
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise DataError(f"{path}: NaN or infinite values (first in row {row + 1})")
    return np.ascontiguousarray(x, dtype=np.float64)


def _read_csv_points(path: Path, features: list[str] | None) -> np.ndarray:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"{path}: empty file")
    header, body = rows[0], rows[1:]
    chosen = features or header
    missing = [c for c in chosen if c not in header]
    if missing:
        raise DataError(f"{path}: missing column {missing[0]!r} (columns: {', '.join(header)})")
    index = [header.index(c) for c in chosen]
    try:
        x = np.array([[float(row[i]) for i in index] for row in body], dtype=np.float64)
    except (ValueError, IndexError):
        bad = next(
            n for n, row in enumerate(body, 2) if len(row) <= max(index) or not _numbers(row, index)
        )
        raise DataError(f"{path}: line {bad}: not a row of numbers") from None
    return _matrix(path, x)


def _numbers(row: list[str], index: list[int]) -> bool:
    try:
        [float(row[i]) for i in index]
    except ValueError:
        return False
    return True
