"""``gramfed submit`` and ``gramfed jobs`` against a real Ray head started here (Jobs API)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gramfed.platform.cli.main import app

runner = CliRunner()
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """A head with its dashboard (Jobs API) on a free port; stopped by ending the
    ``ray start --block`` process this fixture started, never by ``ray stop`` (which would
    stop every Ray on the machine)."""
    bin_dir = Path(sys.executable).parent
    dashboard = _free_port()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(
        [
            str(bin_dir / "ray"),
            "start",
            "--head",
            "--block",
            "--port",
            str(_free_port()),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--num-cpus",
            "2",
            "--disable-usage-stats",
            "--include-dashboard",
            "true",
            "--ray-client-server-port",
            str(_free_port()),
            "--temp-dir",
            str(tmp_path_factory.mktemp("ray")),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            pytest.fail(f"ray head exited: {head.stdout.read().decode()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", dashboard), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        os.killpg(head.pid, signal.SIGKILL)
        pytest.fail("the Ray dashboard did not come up within 120 s")
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


def test_submit_runs_the_job_on_the_cluster_and_jobs_commands_see_it(
    ray_head: str, tmp_path: Path, key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "job"
    (folder / "data").mkdir(parents=True)
    x = np.arange(60, dtype=float)
    y = np.sin(2 * np.pi * 0.1 * x) + 0.05 * np.cos(3 * x)
    np.savetxt(
        folder / "data" / "train.csv",
        np.column_stack([x, y]),
        delimiter=",",
        header="x,y",
        comments="",
    )
    out = tmp_path / "out"
    job = folder / "job.toml"
    job.write_text(
        '[job]\nname = "remote"\n[data]\ntrain = "data/train.csv"\ntarget = "y"\n'
        "[model]\ncomponents_per_dim = 10\n[admm]\nagents = 2\nmax_iter = 5\n"
        f'[output]\ndir = "{out}"\n'
        f'[privacy]\nledger = "{tmp_path / "ledger.sqlite"}"\nkey = "{key_path}"\n'
    )
    # Ray 2.60 heads require the token `ray start` wrote to ~/.ray/auth_token; clients send it
    # when RAY_AUTH_MODE=token.
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    submitted = runner.invoke(app, ["submit", str(job), "--address", ray_head, "--wait"])
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip().splitlines()[0]
    assert job_id.startswith("raysubmit_")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed"] and summary["samples"] == 60

    status = runner.invoke(app, ["jobs", "status", job_id, "--address", ray_head])
    assert status.exit_code == 0 and status.stdout.strip() == "SUCCEEDED"
    logs = runner.invoke(app, ["jobs", "logs", job_id, "--address", ray_head])
    assert logs.exit_code == 0 and "remote: round 1/5" in logs.stdout
    listed = runner.invoke(app, ["jobs", "list", "--address", ray_head])
    assert listed.exit_code == 0 and job_id in " ".join(listed.output.split())
    missing = runner.invoke(app, ["jobs", "status", "raysubmit_nope", "--address", ray_head])
    assert missing.exit_code == 2 and "no job 'raysubmit_nope'" in missing.output
