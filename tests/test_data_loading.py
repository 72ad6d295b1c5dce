from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io
import scipy.sparse

from gramfed.platform.data import DataError, Dataset, load_split, load_table


def _write(tmp_path: Path, text: str | bytes, name: str = "d.csv") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _fails(path: Path, problem: str, **options: Any) -> str:
    """Loading ``path`` raises a one-line DataError naming the file and ``problem``."""
    options.setdefault("target", None)
    with pytest.raises(DataError) as err:
        load_table(path, **options)
    message = str(err.value)
    assert isinstance(err.value, ValueError)
    assert message.startswith(f"{path}: "), message
    assert problem in message, message
    assert "\n" not in message
    return message


# --- happy paths -----------------------------------------------------------------------------


def test_csv_round_trip(tmp_path: Path) -> None:
    path = _write(tmp_path, "\ufeffa, b ,y\n1,2.5,3\n\n-4e1, 5 ,6\n\n")
    data = load_table(path, target="y")
    assert isinstance(data, Dataset)
    assert data.feature_names == ("a", "b") and data.source == str(path)
    assert data.x.dtype == np.float64 and data.y.dtype == np.float64
    np.testing.assert_array_equal(data.x, [[1, 2.5], [-40, 5]])
    np.testing.assert_array_equal(data.y, [3, 6])


def test_csv_chosen_features_keep_their_order(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b,c,y\n1,2,3,4\n5,6,7,8\n")
    data = load_table(path, target="y", features=["c", "a"])
    assert data.feature_names == ("c", "a")
    np.testing.assert_array_equal(data.x, [[3, 1], [7, 5]])


def test_parquet_round_trip(tmp_path: Path) -> None:
    table = pa.table(
        {
            "i": pa.array([1, 2, 3], pa.int32()),
            "f": [0.5, 1.5, 2.5],
            "b": [True, False, True],
            "s": ["1e3", " 2 ", "-3"],
            "t": [10.0, 20.0, 30.0],
            "ignored": ["x", "y", "z"],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    data = load_table(tmp_path / "d.parquet", target="t", features=["i", "f", "b", "s"])
    np.testing.assert_array_equal(data.x, [[1, 0.5, 1, 1000], [2, 1.5, 0, 2], [3, 2.5, 1, -3]])
    np.testing.assert_array_equal(data.y, [10, 20, 30])
    assert data.feature_names == ("i", "f", "b", "s") and data.x.dtype == np.float64


def test_npz_round_trip(tmp_path: Path) -> None:
    x, y = np.arange(6, dtype=np.int64).reshape(3, 2), np.array([1.0, 2.0, 3.0])
    np.savez(tmp_path / "d.npz", X=x, y=y[:, None], other=np.array(["unused"]))
    data = load_table(tmp_path / "d.npz", target=None)
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    assert data.feature_names == ("x0", "x1") and data.x.dtype == np.float64
    np.savez(tmp_path / "v.npz", inputs=np.array([1.0, 2.0]), outputs=np.array([3.0, 4.0]))
    vector = load_table(tmp_path / "v.npz", target=None, x_key="inputs", y_key="outputs")
    assert vector.x.shape == (2, 1)  # a vector of samples is one feature


def test_mat_round_trip(tmp_path: Path) -> None:
    x, y = np.arange(6.0).reshape(3, 2), np.array([1.0, 2.0, 3.0])
    scipy.io.savemat(tmp_path / "d.mat", {"xtrain": x, "ytrain": y[:, None], "note": "text"})
    data = load_table(tmp_path / "d.mat", target=None, x_key="xtrain", y_key="ytrain")
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, y)
    scipy.io.savemat(tmp_path / "s.mat", {"X": scipy.sparse.csc_matrix(x), "y": y[None, :]})
    sparse = load_table(tmp_path / "s.mat", target=None)
    np.testing.assert_array_equal(sparse.x, x)
    np.testing.assert_array_equal(sparse.y, y)


def test_split_puts_test_columns_in_training_order(tmp_path: Path) -> None:
    train = _write(tmp_path, "a,b,y\n1,2,3\n", "train.csv")
    test = _write(tmp_path, "y,b,a\n6,5,4\n", "test.csv")
    train_set, test_set = load_split(train, test, target="y")
    assert test_set is not None
    assert test_set.feature_names == train_set.feature_names == ("a", "b")
    np.testing.assert_array_equal(test_set.x, [[4, 5]])
    only_train, none = load_split(train, None, target="y")
    assert none is None and only_train.feature_names == ("a", "b")


# --- files that cannot be read ---------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    _fails(tmp_path / "absent.csv", "no such file", target="y")


def test_directory_is_not_a_data_file(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    _fails(tmp_path / "dir.csv", "not a regular file", target="y")


@pytest.mark.parametrize(("name", "shown"), [("d.xlsx", "'.xlsx'"), ("data", "'(no extension)'")])
def test_unsupported_format(tmp_path: Path, name: str, shown: str) -> None:
    path = _write(tmp_path, "a,y\n1,2\n", name)
    message = _fails(path, f"unsupported format {shown}")
    assert ".csv, .parquet, .npz or .mat" in message


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("bad.npz", b"not a zip archive", "not a readable .npz archive"),
        ("bad.parquet", b"not parquet", "not a readable Parquet file"),
        ("bad.mat", b"\x00" * 16, "not a readable MATLAB .mat file"),
        ("bad.csv", b"a,y\n\xff\xfe,1\n", "not UTF-8 text"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: bytes, problem: str) -> None:
    target = "y" if name.endswith((".csv", ".parquet")) else None
    _fails(_write(tmp_path, content, name), problem, target=target)


def test_npy_saved_under_npz_name(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with path.open("wb") as f:
        np.save(f, np.zeros(3))
    _fails(path, "holds a single .npy array, not an .npz archive")


def test_matlab_v73_asks_for_v7(tmp_path: Path) -> None:
    # v7.3 files are HDF5 behind a MATLAB header whose version field (bytes 124-127) is 0x0200.
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116, b" ")
    path = _write(tmp_path, header + b"\x00" * 8 + b"\x00\x02IM" + b"\x00" * 512, "v73.mat")
    _fails(path, "MATLAB v7.3 (HDF5) files are not supported; re-save it in MATLAB with")


# --- columns and keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "options", "problem"),
    [
        ("a,y\n1,2\n", {"target": "z"}, "missing column 'z' (columns: a, y)"),
        ("a,y\n1,2\n", {"target": "y", "features": ["a", "q", "r"]}, "missing columns 'q', 'r'"),
        ("a,y\n1,2\n", {}, "no target column given (columns: a, y)"),
        ("a;b;y\n1;2;3\n", {"target": "y"}, "the file does not look comma-separated"),
        ("1,2\n3,4\n", {"target": "y"}, "the first row looks like data, but a header row"),
        ("a,a,y\n1,2,3\n", {"target": "y"}, "column 'a' appears twice in the header"),
        ("a,,y\n1,2,3\n", {"target": "y"}, "column 2 has no name in the header"),
        ("a,y\n1,2\n", {"target": "y", "features": ["a", "y"]}, "target 'y' is also listed"),
        ("a,b,y\n1,2,3\n", {"target": "y", "features": ["a", "a"]}, "'a' is listed twice"),
    ],
)
def test_csv_column_errors(tmp_path: Path, text: str, options: dict, problem: str) -> None:
    _fails(_write(tmp_path, text), problem, **options)


def test_parquet_missing_column_lists_available(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1.0], "t": [2.0]}), tmp_path / "d.parquet")
    _fails(tmp_path / "d.parquet", "missing column 'y' (columns: a, t)", target="y")


def test_long_column_lists_are_cut(tmp_path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(30))
    message = _fails(
        _write(tmp_path, header + "\n" + ",".join("0" * 30) + "\n"), "c19, ...", target="y"
    )
    assert "(10 more)" in message and "c25" not in message


@pytest.mark.parametrize("suffix", [".npz", ".mat"])
def test_missing_array_key_lists_available(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    arrays = {"xtrain": np.zeros((2, 1)), "ytrain": np.zeros((2, 1))}
    np.savez(path, **arrays) if suffix == ".npz" else scipy.io.savemat(path, arrays)
    _fails(path, "no key 'X' (keys: xtrain, ytrain)")
    _fails(path, "no key 'y' (keys: xtrain, ytrain)", x_key="xtrain")


def test_column_options_are_refused_for_array_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.zeros((2, 1)), y=np.zeros(2))
    _fails(tmp_path / "d.npz", "'target' and 'features' name CSV/Parquet columns", target="y")
    _fails(tmp_path / "d.npz", "x_key='X', y_key='y'", features=["a"])


# --- contents --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a,y\n1,2\n3,nan\n", "1 NaN or infinite values (first in row 2, the target)"),
        (
            "a,b,y\n1,2,3\n4,inf,6\nnan,0,-inf\n",
            "3 NaN or infinite values (first in row 2, column 'b')",
        ),
    ],
)
def test_csv_nan_and_inf_are_counted_and_located(tmp_path: Path, text: str, problem: str) -> None:
    _fails(_write(tmp_path, text), problem, target="y")


def test_npz_nan_is_located_in_the_matrix(tmp_path: Path) -> None:
    x = np.zeros((4, 3))
    x[2, 1] = np.nan
    x[3, 0] = np.inf
    np.savez(tmp_path / "d.npz", X=x, y=np.zeros(4))
    _fails(tmp_path / "d.npz", "2 NaN or infinite values (first in row 3, column 2 of 'X')")


def test_csv_ragged_row(tmp_path: Path) -> None:
    path = _write(tmp_path, "a,b,y\n1,2,3\n\n4,5\n")
    _fails(path, "row 2 (line 4) has 2 fields, expected 3 as in the header", target="y")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a,y\n1,2\nx1,3\n", "row 2 (line 3), column 'a': 'x1' is not a number"),
        ("a,y\n1, \n", "row 1 (line 2), column 'y': empty cell, not a number"),
        ('a,y\n1,"1,5"\n', "column 'y': '1,5' is not a number"),
    ],
)
def test_csv_non_numeric_cells(tmp_path: Path, text: str, problem: str) -> None:
    _fails(_write(tmp_path, text), problem, target="y")


@pytest.mark.parametrize(
    ("column", "problem"),
    [
        (pa.array(["1", "two"]), "row 2, column 'a': 'two' is not a number"),
        (pa.array([1.0, None]), "row 2, column 'a': missing value (null), not a number"),
        (pa.array(["u", "v"]).dictionary_encode(), "row 1, column 'a': 'u' is not a number"),
        (pa.array([1, 2], pa.timestamp("ms")), "column 'a' holds timestamp[ms] values"),
    ],
)
def test_parquet_non_numeric_values(tmp_path: Path, column: pa.Array, problem: str) -> None:
    pq.write_table(pa.table({"a": column, "y": [1.0, 2.0]}), tmp_path / "d.parquet")
    _fails(tmp_path / "d.parquet", problem, target="y")


@pytest.mark.parametrize(
    ("x", "problem"),
    [
        (np.array([["a", "b"]]), "'X' holds MATLAB cells, structs or text, not numbers"),
        (np.array([[1 + 2j]]), "'X' holds complex numbers"),
        (np.array([[None]], dtype=object), "'X' holds Python objects"),
    ],
)
def test_npz_non_numeric_arrays(tmp_path: Path, x: np.ndarray, problem: str) -> None:
    np.savez(tmp_path / "d.npz", X=x, y=np.zeros(x.shape[0]))
    _fails(tmp_path / "d.npz", problem)


def test_mat_cell_array_is_not_numbers(tmp_path: Path) -> None:
    cells = np.empty((2, 1), dtype=object)
    cells[0, 0], cells[1, 0] = "a", "b"
    scipy.io.savemat(tmp_path / "d.mat", {"X": cells, "y": np.zeros((2, 1))})
    _fails(tmp_path / "d.mat", "'X' holds MATLAB cells, structs or text, not numbers")


@pytest.mark.parametrize(
    ("text", "options", "problem"),
    [
        ("", {"target": "y"}, "empty file (a header row naming the columns is required)"),
        ("\n\n", {"target": "y"}, "empty file"),
        ("a,y\n", {"target": "y"}, "no data rows"),
        ("y\n1\n", {"target": "y"}, "no feature columns (only the target 'y')"),
        ("a,y\n1,2\n", {"target": "y", "features": []}, "no feature columns ('features' is empty)"),
    ],
)
def test_csv_empty_data(tmp_path: Path, text: str, options: dict, problem: str) -> None:
    _fails(_write(tmp_path, text), problem, **options)


@pytest.mark.parametrize(
    ("x", "y", "problem"),
    [
        (np.zeros((0, 2)), np.zeros(0), "no data rows"),
        (np.zeros((3, 0)), np.zeros(3), "no feature columns"),
        (np.zeros((3, 2)), np.zeros(4), "'X' has 3 rows but 'y' has 4 values"),
        (np.zeros((2, 3)), np.zeros(3), "'X' has 2 rows but 'y' has 3 values; is 'X' transposed?"),
        (np.zeros((3, 2)), np.zeros((3, 2)), "'y' has 2 columns (shape (3, 2)); it must be one"),
        (np.zeros((2, 2, 2)), np.zeros(2), "'X' must be a matrix with one row per sample"),
    ],
)
def test_npz_shapes(tmp_path: Path, x: np.ndarray, y: np.ndarray, problem: str) -> None:
    np.savez(tmp_path / "d.npz", X=x, y=y)
    _fails(tmp_path / "d.npz", problem)


def test_mat_y_with_two_columns(tmp_path: Path) -> None:
    scipy.io.savemat(tmp_path / "d.mat", {"X": np.zeros((3, 2)), "y": np.zeros((3, 2))})
    _fails(tmp_path / "d.mat", "'y' has 2 columns")


# --- train/test ------------------------------------------------------------------------------


def test_split_refuses_different_columns(tmp_path: Path) -> None:
    train = _write(tmp_path, "a,b,y\n1,2,3\n", "train.csv")
    test = _write(tmp_path, "a,c,y\n1,3,4\n", "test.csv")
    with pytest.raises(DataError) as err:
        load_split(train, test, target="y")
    assert str(err.value) == (
        f"{test}: feature columns differ from {train}: missing 'b'; not in training data 'c'"
    )


def test_split_refuses_different_widths(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", X=np.zeros((3, 2)), y=np.zeros(3))
    np.savez(tmp_path / "test.npz", X=np.zeros((3, 1)), y=np.zeros(3))
    with pytest.raises(DataError) as err:
        load_split(tmp_path / "train.npz", tmp_path / "test.npz", target=None)
    assert str(err.value) == (
        f"{tmp_path / 'test.npz'}: 1 feature columns, but {tmp_path / 'train.npz'} has 2"
    )


def test_split_reports_the_test_file_own_errors(tmp_path: Path) -> None:
    train = _write(tmp_path, "a,y\n1,2\n", "train.csv")
    test = _write(tmp_path, "a,y\n1,oops\n", "test.csv")
    with pytest.raises(DataError, match=r"test\.csv: row 1 \(line 2\), column 'y': 'oops'"):
        load_split(train, test, target="y")
