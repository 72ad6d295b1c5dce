from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io

from gramfed.platform.data import DataError, load_split, load_table


def _csv(tmp_path: Path, text: str, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_round_trip(tmp_path: Path) -> None:
    data = load_table(_csv(tmp_path, "a,b,y\n1,2,3\n4,5,6\n"), target="y")
    assert data.feature_names == ("a", "b")
    np.testing.assert_array_equal(data.x, [[1, 2], [4, 5]])
    np.testing.assert_array_equal(data.y, [3, 6])


def test_parquet_npz_mat_round_trip(tmp_path: Path) -> None:
    x, y = np.arange(6.0).reshape(3, 2), np.array([1.0, 2.0, 3.0])
    pq.write_table(pa.table({"a": x[:, 0], "b": x[:, 1], "t": y}), tmp_path / "d.parquet")
    np.savez(tmp_path / "d.npz", X=x, y=y)
    scipy.io.savemat(tmp_path / "d.mat", {"xtrain": x, "ytrain": y[:, None]})
    for data in (
        load_table(tmp_path / "d.parquet", target="t"),
        load_table(tmp_path / "d.npz"),
        load_table(tmp_path / "d.mat", x_key="xtrain", y_key="ytrain"),
    ):
        np.testing.assert_array_equal(data.x, x)
        np.testing.assert_array_equal(data.y, y)


@pytest.mark.parametrize(
    ("text", "options", "message"),
    [
        ("a,y\n1,2\n", {"target": "z"}, "missing column 'z' (columns: a, y)"),
        ("a,y\n1,2\n3\n", {"target": "y"}, "row 3 has 1 fields, the header has 2"),
        ("a,y\n1,nan\n", {"target": "y"}, "1 NaN or infinite values (first in row 1, the target)"),
        ("a,y\ninf,1\n", {"target": "y"}, "feature 'a'"),
        ("a,y\nx,1\n", {"target": "y"}, "column 'a', row 2: 'x' is not a number"),
        ("a,y\n", {"target": "y"}, "no data rows"),
        ("", {"target": "y"}, "empty file"),
        ("y\n1\n", {"target": "y"}, "no feature columns"),
        ("a,y\n1,2\n", {}, "name the target column"),
    ],
)
def test_csv_errors_name_file_and_problem(
    tmp_path: Path, text: str, options: dict, message: str
) -> None:
    path = _csv(tmp_path, text)
    with pytest.raises(DataError) as err:
        load_table(path, **options)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_table(tmp_path / "absent.csv", target="y")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unsupported format '\.xlsx'"):
        load_table(tmp_path / "d.xlsx")
    (tmp_path / "bad.npz").write_text("not a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz"):
        load_table(tmp_path / "bad.npz")
    (tmp_path / "bad.parquet").write_text("nope")
    with pytest.raises(DataError, match="not a readable Parquet"):
        load_table(tmp_path / "bad.parquet", target="y")


def test_npz_key_and_shape_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", X=np.zeros((3, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match="3 feature rows but 4 targets"):
        load_table(tmp_path / "a.npz")
    with pytest.raises(DataError, match=r"no array 'features' \(arrays: X, y\)"):
        load_table(tmp_path / "a.npz", x_key="features")
    np.savez(tmp_path / "b.npz", X=np.zeros((3, 2)), y=np.zeros((3, 2)))
    with pytest.raises(DataError, match="must be one column"):
        load_table(tmp_path / "b.npz")


def test_train_test_feature_mismatch(tmp_path: Path) -> None:
    train = _csv(tmp_path, "a,b,y\n1,2,3\n", "train.csv")
    test = _csv(tmp_path, "a,y\n1,3\n", "test.csv")
    with pytest.raises(DataError, match=r"1 features, but .*train\.csv has 2"):
        load_split(train, test, target="y")
