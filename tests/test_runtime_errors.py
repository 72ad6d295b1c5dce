"""Users' mistakes around the runtime: one line, exit code 2, nothing written or spent."""

import socket
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gramfed.platform.cli.main import app
from gramfed.platform.jobspec import PrivacySection
from gramfed.platform.results import ResultsWriter, open_privacy
from gramfed.privacy.errors import ForgedRelease
from gramfed.privacy.ledger import Ledger

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _job(tmp_path: Path, extra: str = "", data: str = 'dataset = "slimkl:ale80"') -> Path:
    job = tmp_path / "job.toml"
    job.write_text(f"[data]\n{data}\n[model]\ncomponents_per_dim = 10\n{extra}")
    return job


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text


def test_run_with_an_unreachable_address_names_it(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    _one_line_error(
        runner.invoke(app, ["run", str(_job(tmp_path)), "--address", address]),
        f"cannot reach the Ray cluster at {address}",
    )
    _one_line_error(
        runner.invoke(app, ["run", str(_job(tmp_path)), "--address", "nowhere"]),
        "bad Ray address 'nowhere'",
    )


@pytest.mark.parametrize("command", [["submit", "JOB"], ["jobs", "list"], ["jobs", "status", "x"]])
def test_cluster_commands_with_an_unreachable_address_name_it(tmp_path: Path, command) -> None:
    address = f"http://127.0.0.1:{_closed_port()}"
    args = [str(_job(tmp_path)) if part == "JOB" else part for part in command]
    _one_line_error(
        runner.invoke(app, [*args, "--address", address]),
        f"cannot reach the Ray cluster at {address}",
    )


def test_cluster_commands_need_an_address() -> None:
    _one_line_error(
        runner.invoke(app, ["jobs", "list"]), "Missing option '--address'", "RAY_ADDRESS"
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[job]\nkind = "sketch"\n', "unknown job kind 'sketch'; known kinds: dp_gsmp, gsmp_fit"),
        ("[privacy]\nledgr = 'x'\n", "unknown key 'privacy.ledgr'; did you mean 'privacy.ledger'?"),
        ("[privacy]\ndelta = 1e-6\n", "'delta' needs 'epsilon'"),
    ],
)
def test_bad_specs_fail_before_anything_starts(tmp_path: Path, extra: str, message: str) -> None:
    _one_line_error(runner.invoke(app, ["run", str(_job(tmp_path, extra))]), message)
    assert not (tmp_path / "runs").exists()


def test_missing_data_file_is_named_and_nothing_is_released(tmp_path: Path) -> None:
    job = _job(tmp_path, data='train = "absent.csv"\ntarget = "y"')
    _one_line_error(runner.invoke(app, ["fit", str(job)]), "absent.csv")
    _one_line_error(
        runner.invoke(app, ["submit", str(job), "--address", "http://127.0.0.1:1"]), "absent.csv"
    )
    ledger = tmp_path / "runs" / "ledger.sqlite"
    if ledger.exists():  # the pool may exist; no result was released from it
        with Ledger(ledger) as opened:
            assert {e.kind for e in opened.entries()} <= {"pool"}


def test_submit_refuses_data_outside_the_job_folder(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("x,y\n1,2\n")
    folder = tmp_path / "jobs"
    folder.mkdir()
    job = _job(folder, data='train = "../data.csv"\ntarget = "y"')
    _one_line_error(
        runner.invoke(app, ["submit", str(job), "--address", "http://127.0.0.1:1"]),
        "lies outside the job's folder",
    )


def test_resume_without_a_checkpoint_is_refused(tmp_path: Path, key_path: Path) -> None:
    job = _job(tmp_path, f'[privacy]\nkey = "{key_path}"\n')
    _one_line_error(runner.invoke(app, ["run", str(job), "--resume"]), "nothing to resume")


def test_a_pool_that_does_not_trust_the_recipient_refuses_before_the_fit(
    tmp_path: Path, key_path: Path
) -> None:
    section = PrivacySection(ledger=tmp_path / "l.sqlite", key=key_path, recipient="owner")
    open_privacy(section, "ale", "test", exact_releases=True)
    job = _job(
        tmp_path,
        f'[privacy]\nledger = "{tmp_path / "l.sqlite"}"\nkey = "{key_path}"\n'
        'recipient = "stranger"\ndataset = "ale"\n',
    )
    _one_line_error(
        runner.invoke(app, ["fit", str(job)]),
        "does not trust recipient 'stranger'",
        "trusted: owner",
    )
    assert not (tmp_path / "runs").exists()


def test_a_missing_signing_key_is_created_and_announced(tmp_path: Path) -> None:
    job = _job(tmp_path, "[admm]\nmax_iter = 3\n")
    result = runner.invoke(app, ["fit", str(job), "--json"])
    assert result.exit_code == 0, result.output
    key = tmp_path / "home" / ".gramfed" / "ledger.key"
    assert key.exists() and (key.stat().st_mode & 0o077) == 0
    assert "created a ledger signing key" in result.output
    assert (tmp_path / "runs" / "ledger.sqlite").exists()


def test_results_writer_takes_only_releases(tmp_path: Path) -> None:
    writer = ResultsWriter(tmp_path / "out")
    with pytest.raises(ForgedRelease):
        writer.write("weights.npy", np.zeros(3))  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()
