"""``gramfed sketch``: build, merge, query, classify and monitor end to end, and user errors."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gramfed.platform.cli.main import app
from gramfed.privacy.ledger import Ledger

runner = CliRunner()


def write_job(folder: Path, key: Path, name: str, path: str, **extra: str) -> Path:
    sketch = extra.pop("sketch", 'kernel = "gaussian"\nbandwidth = 1.0\nfeatures = 256\nseed = 3')
    data_extra = extra.pop("data", "")
    privacy = extra.pop("privacy", "epsilon = 1.0")
    job = folder / f"{name}.toml"
    job.write_text(
        f'[job]\nname = "{name}"\n[data]\npath = "{path}"\n{data_extra}\n'
        f"[sketch]\n{sketch}\n"
        f'[privacy]\nledger = "{name}.db"\nkey = "{key}"\ndataset = "{name}"\n'
        f"budget_epsilon = 4.0\n{privacy}\n"
        f'[compute]\ndevice = "cpu"\nshards = 3\n[output]\npath = "{name}.gfs"\n'
    )
    return job


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def folder(tmp_path: Path, rng: np.random.Generator) -> Path:
    np.save(tmp_path / "a.npy", rng.standard_normal((1500, 2)))
    np.save(tmp_path / "b.npy", rng.standard_normal((1500, 2)))
    np.save(tmp_path / "same.npy", rng.standard_normal((400, 2)))
    np.save(tmp_path / "shifted.npy", rng.standard_normal((400, 2)) + 1.0)
    return tmp_path


def test_build_merge_query_monitor(folder: Path, key_path: Path) -> None:
    for party in ("a", "b"):
        code, out = invoke(
            "sketch", "build", str(write_job(folder, key_path, party, f"{party}.npy")), "--json"
        )
        assert code == 0, out
        summary = json.loads(out)
        assert "zCDP" in summary["privacy"] and summary["ledger_entry"] >= 1
    assert len(Ledger(folder / "a.db").entries(kinds=("release",))) == 1
    merged = folder / "ab.gfs"
    code, out = invoke(
        "sketch", "merge", str(folder / "a.gfs"), str(folder / "b.gfs"), "-o", str(merged), "--json"
    )
    assert code == 0, out
    assert json.loads(out)["noisy_count"] == pytest.approx(3000, abs=200)
    code, out = invoke("sketch", "query", str(merged), "--points", str(folder / "same.npy"))
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0] == "density,error_bound_0.95" and len(lines) == 401
    density, bound = np.array([line.split(",") for line in lines[1:]], dtype=float).T
    assert 0.05 < density.mean() < 0.6 and np.all(bound > 0)
    code, out = invoke(
        "sketch", "monitor", str(merged), "--batch", str(folder / "same.npy"), "--json"
    )
    assert code == 0 and json.loads(out)["alarm"] is False
    code, out = invoke(
        "sketch", "monitor", str(merged), "--batch", str(folder / "shifted.npy"), "--json"
    )
    assert code == 1 and json.loads(out)["alarm"] is True


def test_class_sketches_classify(folder: Path, key_path: Path, rng: np.random.Generator) -> None:
    x = np.concatenate([rng.normal(-2, 1, (800, 2)), rng.normal(2, 1, (800, 2))])
    y = np.repeat([0, 1], 800)
    np.savez(folder / "train.npz", X=x, y=y)
    np.savez(folder / "test.npz", X=x[::8] + 0.1, y=y[::8])
    job = write_job(
        folder,
        key_path,
        "cls",
        "train.npz",
        sketch='kernel = "l2"\nbandwidth = 2.0\nrepetitions = 64\nhashes = 1\nbuckets = 64\n'
        'classes = ["0", "1"]',
        data='label = "y"',
    )
    code, out = invoke("sketch", "build", str(job), "--json")
    assert code == 0, out
    code, out = invoke(
        "sketch",
        "classify",
        str(folder / "cls.gfs"),
        "--points",
        str(folder / "test.npz"),
        "--label",
        "y",
        "--json",
    )
    assert code == 0, out
    assert json.loads(out)["accuracy"] > 0.9
    np.save(folder / "public.npy", rng.normal(0, 2.2, (200, 2)))
    np.save(folder / "public3.npy", rng.normal(0, 2.2, (200, 3)))
    classify = ["sketch", "classify", str(folder / "cls.gfs"), "--points", str(folder / "test.npz")]
    public = ["--public", str(folder / "public.npy")]
    code, out = invoke(*classify, "--label", "y", "--prior", *public, "--json")
    assert code == 0, out
    assert json.loads(out)["accuracy"] > 0.9
    code, out = invoke(*classify, "--label", "y", *public, "--rank", "20", "--json")
    assert code == 0, out
    assert json.loads(out)["accuracy"] > 0.9
    code, out = invoke(*classify, "--public", str(folder / "public3.npy"))
    one_line_error(code, out, "inputs of shape (n, 2), got (200, 3)")
    code, out = invoke(*classify, "--rank", "5")
    one_line_error(code, out, "rank must be a positive integer with public rows")
    code, out = invoke(*classify, "--rule", "gaussian")
    one_line_error(code, out, "--rule gaussian needs --public rows")
    code, out = invoke(*classify, "--rule", "gaussian", *public)
    one_line_error(code, out, "Gaussian class densities need gaussian (RFF) sketches, not l2")

    job = write_job(
        folder,
        key_path,
        "rff",
        "train.npz",
        sketch='kernel = "gaussian"\nbandwidth = 2.0\nfeatures = 256\nclasses = ["0", "1"]',
        data='label = "y"',
    )
    code, out = invoke("sketch", "build", str(job), "--json")
    assert code == 0, out
    gaussian = ["sketch", "classify", str(folder / "rff.gfs"), "--points", str(folder / "test.npz")]
    code, out = invoke(*gaussian, "--label", "y", "--rule", "gaussian", *public, "--json")
    assert code == 0, out
    assert json.loads(out)["accuracy"] > 0.9
    code, out = invoke(*gaussian, "--rule", "gaussian", *public, "--floor", "-1")
    one_line_error(code, out, "floor must be positive and finite, got -1.0")
    code, out = invoke(*gaussian, "--rule", "gaussian", *public, "--em-steps", "-2")
    one_line_error(code, out, "em_steps must be a non-negative integer, got -2")
    code, out = invoke(
        *gaussian, "--label", "y", "--rule", "gaussian", *public, "--em-steps", "0", "--json"
    )
    assert code == 0 and json.loads(out)["accuracy"] > 0.9, out


def one_line_error(code: int, out: str, fragment: str) -> None:
    assert code == 2, out
    assert "Traceback" not in out and out.startswith("error: ")
    assert fragment in " ".join(out.split())


def test_user_errors_are_one_line(folder: Path, key_path: Path) -> None:
    code, out = invoke("sketch", "build", str(write_job(folder, key_path, "m", "missing.npy")))
    one_line_error(code, out, "missing.npy: no such file")
    bad = folder / "bad.toml"
    bad.write_text('[job]\nname = "x"\n[data]\npth = "a.npy"\n')
    one_line_error(*invoke("sketch", "build", str(bad)), "unknown key 'data.pth'")
    greedy = write_job(folder, key_path, "g", "a.npy", privacy="epsilon = 50.0")
    one_line_error(*invoke("sketch", "build", str(greedy)), "privacy budget exceeded")
    assert not (folder / "g.gfs").exists()
    lsh = write_job(
        folder,
        key_path,
        "c",
        "a.npy",
        sketch='kernel = "angular"\nrepetitions = 8\nhashes = 2',
    )
    assert invoke("sketch", "build", str(lsh))[0] == 0
    a = write_job(folder, key_path, "a", "a.npy")
    assert invoke("sketch", "build", str(a))[0] == 0
    one_line_error(
        *invoke(
            "sketch",
            "merge",
            str(folder / "a.gfs"),
            str(folder / "c.gfs"),
            "-o",
            str(folder / "x.gfs"),
        ),
        "cannot merge incompatible sketches: kernel 'gaussian' != 'angular'",
    )
    iid = write_job(
        folder,
        key_path,
        "i",
        "b.npy",
        sketch='kernel = "gaussian"\nbandwidth = 1.0\nfeatures = 256\nseed = 3\n'
        'frequencies = "iid"',
    )
    assert invoke("sketch", "build", str(iid))[0] == 0
    one_line_error(
        *invoke(
            "sketch",
            "merge",
            str(folder / "a.gfs"),
            str(folder / "i.gfs"),
            "-o",
            str(folder / "x.gfs"),
        ),
        "cannot merge incompatible sketches: frequencies 'orthogonal' != 'iid'",
    )
    hashed = write_job(
        folder,
        key_path,
        "h",
        "a.npy",
        sketch='kernel = "angular"\nrepetitions = 8\nhashes = 2\nfrequencies = "iid"',
    )
    one_line_error(*invoke("sketch", "build", str(hashed)), "describe RFF sketches")
    broken = folder / "broken.gfs"
    broken.write_bytes((folder / "a.gfs").read_bytes()[:-9])
    one_line_error(
        *invoke("sketch", "query", str(broken), "--points", str(folder / "same.npy")),
        "corrupted or truncated",
    )
    np.save(folder / "wide.npy", np.zeros((3, 5)))
    one_line_error(
        *invoke("sketch", "query", str(folder / "a.gfs"), "--points", str(folder / "wide.npy")),
        "shape (n, 2)",
    )
    one_line_error(
        *invoke("sketch", "classify", str(folder / "a.gfs"), "--points", str(folder / "same.npy")),
        "classification needs one per class",
    )
    one_line_error(
        *invoke("sketch", "monitor", str(folder / "c.gfs"), "--batch", str(folder / "same.npy")),
        "needs a gaussian (RFF) reference sketch",
    )
    no_budget = write_job(folder, key_path, "n", "a.npy")
    no_budget.write_text(no_budget.read_text().replace("budget_epsilon = 4.0\n", ""))
    one_line_error(*invoke("sketch", "build", str(no_budget)), "set privacy.budget_epsilon")
