"""Users' own regression data files, loaded into float64 NumPy arrays.

Formats, chosen by extension: ``.csv`` (header row required), ``.parquet``, ``.npz`` and
``.mat`` (MATLAB up to v7.2). CSV and Parquet files name a ``target`` column and optionally the
``features``; ``.npz`` and ``.mat`` files hold a feature matrix and a target vector under
``x_key`` and ``y_key``.

Every problem raises ``DataError`` with a one-line message ``"<file>: <problem>"``. Rows are
counted from 1 over data rows (a CSV header is not a row); CSV messages add the file line where
it differs.
"""

from __future__ import annotations

import csv
import os
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TABLE_SUFFIXES = (".csv", ".parquet")
ARRAY_SUFFIXES = (".npz", ".mat")

PathLike = str | os.PathLike[str]

__all__ = ["ARRAY_SUFFIXES", "TABLE_SUFFIXES", "DataError", "Dataset", "load_split", "load_table"]

# Long column/key listings would turn a one-line error into a wall of text.
_MAX_LISTED = 20


class DataError(ValueError):
    """A data file that cannot be used; the one-line message names the file and the problem."""


@dataclass(frozen=True)
class Dataset:
    """Features ``x`` (n, P) and targets ``y`` (n,), both float64, read from ``source``."""

    x: np.ndarray
    y: np.ndarray
    source: str
    feature_names: tuple[str, ...]


def load_table(
    path: PathLike,
    *,
    target: str | None,
    features: list[str] | None = None,
    x_key: str = "X",
    y_key: str = "y",
) -> Dataset:
    """Load one data file into float64 arrays.

    ``target`` and ``features`` name CSV/Parquet columns (features default to all but the
    target); ``.npz``/``.mat`` files are read through ``x_key`` and ``y_key`` instead.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return _load_columns(path, suffix, target, features)
    if suffix in ARRAY_SUFFIXES:
        if target is not None or features is not None:
            # Ignoring them would silently train on columns the user did not choose.
            raise DataError(
                f"{path}: 'target' and 'features' name CSV/Parquet columns; a {suffix} file "
                f"is read through its keys (x_key={x_key!r}, y_key={y_key!r})"
            )
        return _load_arrays(path, suffix, x_key, y_key)
    raise DataError(
        f"{path}: unsupported format {suffix or '(no extension)'!r} "
        "(use .csv, .parquet, .npz or .mat)"
    )


def load_split(
    train_path: PathLike,
    test_path: PathLike | None,
    *,
    target: str | None,
    features: list[str] | None = None,
    x_key: str = "X",
    y_key: str = "y",
) -> tuple[Dataset, Dataset | None]:
    """Load training data and, if given, test data with the same feature columns.

    Test columns in another order are put in the training order; different columns are an error.
    """
    options: dict[str, Any] = {
        "target": target,
        "features": features,
        "x_key": x_key,
        "y_key": y_key,
    }
    train = load_table(train_path, **options)
    if test_path is None:
        return train, None
    return train, _aligned(train, load_table(test_path, **options))


# --- CSV and Parquet -------------------------------------------------------------------------


def _load_columns(
    path: Path, suffix: str, target: str | None, features: list[str] | None
) -> Dataset:
    column: Callable[[str], np.ndarray]
    if suffix == ".csv":
        names, cells, lines = _read_csv(path)
        chosen = _select(path, names, target, features)

        def column(name: str) -> np.ndarray:
            return _parse_cells(path, name, cells[name], lines)

    else:
        parquet = _open_parquet(path)
        names = list(parquet.schema_arrow.names)
        chosen = _select(path, names, target, features)
        assert target is not None  # _select refuses a missing target
        table = _read_parquet(path, parquet, [*chosen, target])

        def column(name: str) -> np.ndarray:
            return _arrow_column(path, name, table.column(name))

    assert target is not None
    y = column(target)
    if y.size == 0:
        raise DataError(f"{path}: no data rows")
    x = np.column_stack([column(name) for name in chosen])
    return _finish(path, x, y, tuple(chosen), lambda j: f"column {chosen[j]!r}")


def _select(
    path: Path, names: Sequence[str], target: str | None, features: list[str] | None
) -> list[str]:
    """Validate target/features against the file's columns; return the feature columns."""
    seen: set[str] = set()
    for name in names:
        if not name:
            raise DataError(f"{path}: column {len(seen) + 1} has no name in the header")
        if name in seen:
            raise DataError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)
    if target is None:
        raise DataError(f"{path}: no target column given (columns: {_listing(names)})")
    wanted = [target, *(features or [])]
    missing = [name for name in dict.fromkeys(wanted) if name not in seen]
    if missing:
        label = "column" if len(missing) == 1 else "columns"
        raise DataError(
            f"{path}: missing {label} {', '.join(map(repr, missing))} "
            f"(columns: {_listing(names)}){_header_hint(names)}"
        )
    if features is None:
        chosen = [name for name in names if name != target]
    else:
        if target in features:
            raise DataError(f"{path}: the target {target!r} is also listed in 'features'")
        repeated = [name for i, name in enumerate(features) if name in features[:i]]
        if repeated:
            raise DataError(f"{path}: feature {repeated[0]!r} is listed twice in 'features'")
        chosen = list(features)
    if not chosen:
        why = "'features' is empty" if features is not None else f"only the target {target!r}"
        raise DataError(f"{path}: no feature columns ({why})")
    return chosen


def _header_hint(names: Sequence[str]) -> str:
    if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
        return "; the file does not look comma-separated"
    if names and all(_is_number(name) for name in names):
        return "; the first row looks like data, but a header row naming the columns is required"
    return ""


def _read_csv(path: Path) -> tuple[list[str], dict[str, list[str]], list[int]]:
    """Header, cells by column, and the file line where each data row starts."""
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    line = 1
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark that would
        # otherwise become part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for record in reader:
                if record:  # blank lines (often trailing) carry no data
                    if header is None:
                        header = [name.strip() for name in record]
                    else:
                        rows.append(record)
                        lines.append(line)
                line = reader.line_num + 1
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the CSV file as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: line {line}: malformed CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    if header is None:
        raise DataError(f"{path}: empty file (a header row naming the columns is required)")
    for number, (row, start) in enumerate(zip(rows, lines, strict=True), start=1):
        if len(row) != len(header):
            raise DataError(
                f"{path}: row {number} (line {start}) has {len(row)} fields, "
                f"expected {len(header)} as in the header"
            )
    cells = {name: [row[i] for row in rows] for i, name in enumerate(header)}
    return header, cells, lines


def _parse_cells(
    path: Path, name: str, cells: Sequence[str | None], lines: Sequence[int] | None
) -> np.ndarray:
    try:
        return np.fromiter(map(float, cells), dtype=np.float64, count=len(cells))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass  # find the offending cell below; the fast path cannot say which one it was
    for i, cell in enumerate(cells):
        if not _is_number(cell):
            where = f"row {i + 1}" + (f" (line {lines[i]})" if lines is not None else "")
            what = (
                "empty cell, not a number"
                if cell is None or not cell.strip()
                else f"{cell!r} is not a number"
            )
            raise DataError(f"{path}: {where}, column {name!r}: {what}")
    raise AssertionError("unreachable: every cell parsed on the slow path")


def _is_number(text: str | None) -> bool:
    try:
        float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def _open_parquet(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({_reason(exc)})") from None


def _read_parquet(path: Path, parquet: Any, columns: list[str]) -> Any:
    try:
        return parquet.read(columns=columns)
    except Exception as exc:  # as above: corrupt pages surface only when read
        raise DataError(f"{path}: not a readable Parquet file ({_reason(exc)})") from None


def _arrow_column(path: Path, name: str, column: Any) -> np.ndarray:
    import pyarrow as pa

    kind = column.type
    if pa.types.is_dictionary(kind):  # categorical columns, e.g. written from pandas
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _parse_cells(path, name, column.to_pylist(), None)
    numeric = (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
    )
    if not numeric:
        raise DataError(f"{path}: column {name!r} holds {kind} values, not numbers")
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy())[0]) + 1
        raise DataError(f"{path}: row {row}, column {name!r}: missing value (null), not a number")
    return np.asarray(column.to_numpy(), dtype=np.float64)


# --- npz and mat -----------------------------------------------------------------------------


def _load_arrays(path: Path, suffix: str, x_key: str, y_key: str) -> Dataset:
    read = _read_npz if suffix == ".npz" else _read_mat
    raw_x, raw_y = read(path, [x_key, y_key])
    x = _numeric_array(path, x_key, raw_x)
    y = _numeric_array(path, y_key, raw_y)
    if x.ndim == 1:
        x = x[:, None]  # a vector of samples is one feature
    if x.ndim != 2:
        raise DataError(
            f"{path}: {x_key!r} must be a matrix with one row per sample, got shape {x.shape}"
        )
    if y.ndim == 2 and 1 in y.shape:
        y = y.ravel()  # MATLAB stores vectors as (n, 1) or (1, n)
    if y.ndim != 1:
        detail = f"{y.shape[1]} columns" if y.ndim == 2 else f"{y.ndim} dimensions"
        raise DataError(
            f"{path}: {y_key!r} has {detail} (shape {y.shape}); it must be one target column"
        )
    if x.shape[0] != y.size:
        hint = f"; is {x_key!r} transposed?" if x.shape[1] == y.size else ""
        raise DataError(
            f"{path}: {x_key!r} has {x.shape[0]} rows but {y_key!r} has {y.size} values{hint}"
        )
    if y.size == 0:
        raise DataError(f"{path}: no data rows")
    names = tuple(f"x{j}" for j in range(x.shape[1]))
    return _finish(path, x, y, names, lambda j: f"column {j + 1} of {x_key!r}")


def _read_npz(path: Path, keys: list[str]) -> list[Any]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        # Without pickle, np.load reports a non-archive as a refused pickle (ValueError).
        raise DataError(f"{path}: not a readable .npz archive") from None
    if isinstance(archive, np.ndarray):
        raise DataError(
            f"{path}: holds a single .npy array, not an .npz archive; "
            f"save one with np.savez(path, {keys[0]}=..., {keys[1]}=...)"
        )
    with archive:
        available = list(archive.files)
        out = []
        for key in keys:
            if key not in available:
                raise DataError(f"{path}: no key {key!r} (keys: {_listing(available)})")
            try:
                out.append(archive[key])
            except ValueError:
                # allow_pickle=False refuses object arrays; loading them could run code.
                raise DataError(
                    f"{path}: {key!r} holds Python objects; save numeric arrays only"
                ) from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise DataError(f"{path}: {key!r} is unreadable ({_reason(exc)})") from None
    return out


def _read_mat(path: Path, keys: list[str]) -> list[Any]:
    import scipy.io

    try:
        available = [name for name, _, _ in scipy.io.whosmat(path)]
        missing = [key for key in keys if key not in available]
        if missing:
            raise DataError(f"{path}: no key {missing[0]!r} (keys: {_listing(available)})")
        contents = scipy.io.loadmat(path, variable_names=keys)
    except DataError:
        raise
    except NotImplementedError:
        # scipy reads v4 to v7.2; v7.3 files are HDF5 underneath.
        raise DataError(
            f"{path}: MATLAB v7.3 (HDF5) files are not supported; "
            "re-save it in MATLAB with save(..., '-v7')"
        ) from None
    except Exception as exc:  # scipy's readers raise many types for damaged files
        raise DataError(f"{path}: not a readable MATLAB .mat file ({_reason(exc)})") from None
    return [contents[key] for key in keys]


def _numeric_array(path: Path, key: str, value: Any) -> np.ndarray:
    if hasattr(value, "toarray"):  # MATLAB sparse matrices load as scipy.sparse
        value = value.toarray()
    array = np.asarray(value)
    if array.dtype.kind == "c":
        raise DataError(f"{path}: {key!r} holds complex numbers; regression needs real values")
    if array.dtype.kind not in "biuf":
        what = "MATLAB cells, structs or text" if array.dtype.kind in "OUSV" else array.dtype
        raise DataError(f"{path}: {key!r} holds {what}, not numbers")
    return array.astype(np.float64)


# --- shared ----------------------------------------------------------------------------------


def _finish(
    path: Path,
    x: np.ndarray,
    y: np.ndarray,
    names: tuple[str, ...],
    describe: Callable[[int], str],
) -> Dataset:
    if x.shape[1] == 0:
        raise DataError(f"{path}: no feature columns")
    x_ok, y_ok = np.isfinite(x), np.isfinite(y)
    if not (x_ok.all() and y_ok.all()):
        bad = ~np.column_stack([x_ok, y_ok])
        row, col = (int(i) for i in np.argwhere(bad)[0])
        where = "the target" if col == x.shape[1] else describe(col)
        raise DataError(
            f"{path}: {int(bad.sum())} NaN or infinite values (first in row {row + 1}, {where})"
        )
    return Dataset(
        x=np.ascontiguousarray(x, dtype=np.float64),
        y=np.ascontiguousarray(y, dtype=np.float64),
        source=str(path),
        feature_names=names,
    )


def _aligned(train: Dataset, test: Dataset) -> Dataset:
    if test.feature_names == train.feature_names:
        return test
    tables = all(Path(d.source).suffix.lower() in TABLE_SUFFIXES for d in (train, test))
    if not tables:
        raise DataError(
            f"{test.source}: {len(test.feature_names)} feature columns, "
            f"but {train.source} has {len(train.feature_names)}"
        )
    missing = [name for name in train.feature_names if name not in test.feature_names]
    extra = [name for name in test.feature_names if name not in train.feature_names]
    if missing or extra:
        parts = [f"missing {', '.join(map(repr, missing))}"] if missing else []
        parts += [f"not in training data {', '.join(map(repr, extra))}"] if extra else []
        raise DataError(
            f"{test.source}: feature columns differ from {train.source}: {'; '.join(parts)}"
        )
    order = [test.feature_names.index(name) for name in train.feature_names]
    return Dataset(
        x=np.ascontiguousarray(test.x[:, order]),
        y=test.y,
        source=test.source,
        feature_names=train.feature_names,
    )


def _listing(names: Sequence[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f", ... ({more} more)" if more > 0 else "")


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # keep the message on one line
    if len(text) > 120:
        text = text[:117] + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
