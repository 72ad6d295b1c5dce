import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gramfed.platform.benchmarks import bench_slimkl
from gramfed.platform.cli.main import app
from gramfed.platform.jobspec import load_job
from gramfed.workers.estimator import GSMPRegressor

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs write runs/ (results, ledger) under the working folder and create a signing key
    under ~/.gramfed: keep both inside the test's folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _write_job(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(body)
    return path


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("fit", "bench", "demo"):
        assert command in result.output


def test_fit_a_shipped_dataset_writes_results(tmp_path: Path) -> None:
    job = _write_job(
        tmp_path,
        '[job]\nname = "ale"\n[data]\ndataset = "slimkl:ale80"\n'
        "[model]\ncomponents_per_dim = 20\n[admm]\nagents = 2\nbits = 8\nmax_iter = 20\n"
        f'[output]\ndir = "{tmp_path / "out"}"\n',
    )
    result = runner.invoke(app, ["fit", str(job), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 80 and summary["components"] == 80
    assert summary["test_mse"] < 0.1  # y has variance 0.18
    saved = json.loads((tmp_path / "out" / "model.json").read_text())
    assert len(saved["weights"]) == summary["nonzero_weights"]
    predictions = np.loadtxt(tmp_path / "out" / "predictions.csv", delimiter=",", skiprows=1)
    assert predictions.shape == (20, 3)


def test_fit_shows_a_warning_as_one_line(tmp_path: Path) -> None:
    job = _write_job(
        tmp_path,
        '[data]\ndataset = "slimkl:passengerdata"\n[model]\ncomponents_per_dim = 20\n'
        f'[admm]\nagents = 1\nmax_iter = 2\n[output]\ndir = "{tmp_path / "out"}"\n',
    )
    result = runner.invoke(app, ["fit", str(job), "--json"])
    assert result.exit_code == 0, result.output
    assert "warning: the GCV noise estimate" in result.output
    assert "RuntimeWarning" not in result.output and "warnings.warn" not in result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["noise_at_gcv_limit"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[data]\ndataset = "slimkl:ale80"\n[admm]\nbitz = 3\n', "unknown key 'admm.bitz'"),
        ('[data]\ndataset = "slimkl:ale80"\n[admm]\nbits = 64\n', "admm.bits"),
        ('[data]\ndataset = "slimkl:ale80"\n[admm]\nbits = 1\n', "needs 'spacing' = \"uniform\""),
        ('[data]\ndataset = "slimkl:ale80"\n[admm]\nagents = "two"\n', "admm.agents"),
        ('[data]\ndataset = "slimkl:ale80"\n[solver]\nmixed_precision = "often"\n', "solver.mixed"),
        ("[admm]\nagents = 2\n", "data"),
        ('[data]\ndataset = "slimkl:nope"\n', "unknown SLIM-KL dataset 'nope'"),
        ('[data]\ndataset = "slimkl:ale80"\n[admm\n', "not valid TOML"),
    ],
)
def test_bad_job_files_give_one_line_errors(tmp_path: Path, body: str, message: str) -> None:
    result = runner.invoke(app, ["fit", str(_write_job(tmp_path, body))])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_solver_keys_reach_the_estimator(tmp_path: Path) -> None:
    job = _write_job(
        tmp_path,
        '[data]\ndataset = "slimkl:ale80"\n[solver]\nsurrogate = "tangent"\n'
        "mixed_precision = false\n",
    )
    params = load_job(job).estimator_params()
    assert params["surrogate"] == "tangent" and params["mixed_precision"] is False
    assert GSMPRegressor(**params).get_params()["mixed_precision"] is False


def test_missing_job_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fit", str(tmp_path / "absent.toml")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_bench_slimkl_json_has_the_required_fields() -> None:
    result = runner.invoke(
        app, ["bench", "slimkl", "--dataset", "electricitydata", "--bits", "8", "--json"]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip().splitlines()[-1])
    required = {
        "dataset",
        "agents",
        "bits",
        "test_mse",
        "nlpd",
        "fit_seconds",
        "bits_sent",
        "bits_float64_equivalent",
        "reference_test_mse",
        "reference_time_s",
    }
    assert required <= row.keys()
    assert row["dataset"] == "electricitydata" and row["bits"] == 8
    assert row["reference_test_mse"] == pytest.approx(2426.28)
    assert row["bits_float64_equivalent"] > 8 * row["bits_sent"]


def test_bench_unknown_runtime() -> None:
    result = runner.invoke(app, ["bench", "slimkl", "--dataset", "ale80", "--runtime", "mpi"])
    assert result.exit_code == 2 and "--runtime must be 'local' or 'ray'" in result.output


def test_bench_on_ray_without_a_running_ray_is_a_clear_error() -> None:
    import ray

    assert not ray.is_initialized()
    with pytest.raises(RuntimeError, match="runtime 'ray' needs a running Ray"):
        bench_slimkl("ale80", runtime="ray")


def test_bench_unknown_dataset() -> None:
    result = runner.invoke(app, ["bench", "slimkl", "--dataset", "nope"])
    assert result.exit_code == 2 and "unknown dataset 'nope'" in result.output


def test_fit_users_csv_and_refuse_a_bad_one(tmp_path: Path) -> None:
    t = np.arange(40.0)
    y = np.sin(2 * np.pi * 0.1 * t)
    rows = "\n".join(f"{a},{b}" for a, b in zip(t, y, strict=True))
    (tmp_path / "train.csv").write_text("t,y\n" + rows + "\n")
    (tmp_path / "bad.csv").write_text("t,y\n1,2\n2,nan\n")
    settings = "[model]\ncomponents_per_dim = 30\nnoise = 0.01\n[admm]\nagents = 2\nmax_iter = 10\n"
    job = _write_job(
        tmp_path,
        f'[data]\ntrain = "train.csv"\ntarget = "y"\n{settings}'
        f'[output]\ndir = "{tmp_path / "out"}"\n',
    )
    result = runner.invoke(app, ["fit", str(job), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["samples"] == 40
    bad = _write_job(tmp_path, f'[data]\ntrain = "bad.csv"\ntarget = "y"\n{settings}')
    result = runner.invoke(app, ["fit", str(bad)])
    assert result.exit_code == 2
    assert "bad.csv: 1 NaN or infinite values (first in row 2, the target)" in result.output
