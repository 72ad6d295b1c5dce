"""Users' own regression data: CSV, Parquet, NumPy ``.npz`` and MATLAB ``.mat`` files.

Every problem is a ``DataError`` whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray
    source: str
    feature_names: tuple[str, ...]


def load_table(
    path: Path,
    *,
    target: str | None = None,
    features: list[str] | None = None,
    x_key: str = "X",
    y_key: str = "y",
) -> Dataset:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        if not target:
            raise DataError(f"{path}: name the target column ('target' in the job's [data])")
        names, columns = _read_csv(path) if suffix == ".csv" else _read_parquet(path)
        missing = [c for c in [target, *(features or [])] if c not in names]
        if missing:
            raise DataError(f"{path}: missing column {missing[0]!r} (columns: {', '.join(names)})")
        chosen = features if features is not None else [c for c in names if c != target]
        if not chosen:
            raise DataError(f"{path}: no feature columns besides the target {target!r}")
        x = np.column_stack([_numeric(path, c, columns[c]) for c in chosen])
        y = _numeric(path, target, columns[target])
        return _checked(path, x, y, tuple(chosen))
    if suffix in (".npz", ".mat"):
        arrays = _read_npz(path) if suffix == ".npz" else _read_mat(path)
        for key in (x_key, y_key):
            if key not in arrays:
                raise DataError(f"{path}: no array {key!r} (arrays: {', '.join(sorted(arrays))})")
        x = np.asarray(arrays[x_key], dtype=np.float64)
        x = x[:, None] if x.ndim == 1 else x
        y = np.asarray(arrays[y_key], dtype=np.float64)
        if y.ndim == 2 and 1 in y.shape:
            y = y.ravel()
        if y.ndim != 1:
            raise DataError(f"{path}: {y_key!r} must be one column, got shape {y.shape}")
        if x.ndim != 2:
            raise DataError(f"{path}: {x_key!r} must be a matrix, got shape {x.shape}")
        return _checked(path, x, y, tuple(f"x{i}" for i in range(x.shape[1])))
    raise DataError(f"{path}: unsupported format {suffix!r} (use .csv, .parquet, .npz or .mat)")


def load_split(train: Path, test: Path | None, **options: object) -> tuple[Dataset, Dataset | None]:
    """Load training data and, if given, test data with the same features."""
    train_set = load_table(train, **options)  # type: ignore[arg-type]
    if test is None:
        return train_set, None
    test_set = load_table(test, **options)  # type: ignore[arg-type]
    if test_set.x.shape[1] != train_set.x.shape[1]:
        raise DataError(
            f"{test}: {test_set.x.shape[1]} features, but {train} has {train_set.x.shape[1]}"
        )
    return train_set, test_set


def _read_csv(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text CSV file") from None
    if not rows or not rows[0]:
        raise DataError(f"{path}: empty file (a header row is required)")
    header, body = [h.strip() for h in rows[0]], rows[1:]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(
                f"{path}: row {number} has {len(row)} fields, the header has {len(header)}"
            )
    return header, {name: [row[i] for row in body] for i, name in enumerate(header)}


def _read_parquet(path: Path) -> tuple[list[str], dict[str, list[object]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({exc.__class__.__name__})") from None
    return table.column_names, {name: table.column(name).to_pylist() for name in table.column_names}


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, OSError, ValueError):
        raise DataError(f"{path}: not a readable .npz file") from None


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    import scipy.io

    try:
        return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    except NotImplementedError:
        raise DataError(f"{path}: MATLAB v7.3 files are not supported; re-save with -v7") from None
    except (ValueError, OSError, TypeError):
        raise DataError(f"{path}: not a readable MATLAB .mat file") from None


def _numeric(path: Path, column: str, values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for row, value in enumerate(values, start=2):
        try:
            out[row - 2] = float(value)
        except (TypeError, ValueError):
            raise DataError(
                f"{path}: column {column!r}, row {row}: {value!r} is not a number"
            ) from None
    return out


def _checked(path: Path, x: np.ndarray, y: np.ndarray, names: tuple[str, ...]) -> Dataset:
    if len(y) == 0 or x.shape[0] == 0:
        raise DataError(f"{path}: no data rows")
    if x.shape[1] == 0:
        raise DataError(f"{path}: no feature columns")
    if x.shape[0] != len(y):
        raise DataError(f"{path}: {x.shape[0]} feature rows but {len(y)} targets")
    bad = ~np.isfinite(np.column_stack([x, y]))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        where = "the target" if col == x.shape[1] else f"feature {names[col]!r}"
        raise DataError(
            f"{path}: {int(bad.sum())} NaN or infinite values (first in row {row + 1}, {where})"
        )
    return Dataset(x=x, y=y, source=str(path), feature_names=names)
