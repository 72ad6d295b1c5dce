"""The Ray runtime against a real local Ray: same fit as in-process, survives a killed worker,
results only through the gate."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import ray
from typer.testing import CliRunner

from gramfed.platform.benchmarks import bench_slimkl
from gramfed.platform.cli.main import app
from gramfed.platform.datasets import load_slimkl
from gramfed.platform.results import PROVENANCE_SUFFIX
from gramfed.platform.runtime.driver import run_job
from gramfed.platform.runtime.transport import RayTransport
from gramfed.privacy.ledger import Ledger
from gramfed.workers.estimator import GSMPRegressor

PARAMS = {"agents": 2, "components_per_dim": 20, "admm_max_iter": 12}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ale80():
    split = load_slimkl("ale80")
    return split.x_train, split.y_train


class Placement:
    """A transport factory that keeps the transport, so tests can reach its workers."""

    def __init__(self) -> None:
        self.transport: RayTransport | None = None

    def __call__(self, recipe, shards) -> RayTransport:
        self.transport = RayTransport(recipe, shards)
        return self.transport


@pytest.mark.parametrize("bits", [None, 8])
def test_ray_fit_equals_the_in_process_fit(local_ray, ale80, bits) -> None:
    x, y = ale80
    local = GSMPRegressor(**PARAMS, bits=bits).fit(x, y)
    placement = Placement()
    remote = GSMPRegressor(**PARAMS, bits=bits).fit(x, y, transport_factory=placement)
    assert placement.transport is not None
    assert len(set(placement.transport.pids())) == 2 != os.getpid()
    np.testing.assert_allclose(remote.weights_, local.weights_, rtol=1e-9, atol=1e-12)
    assert remote.bits_sent_ == local.bits_sent_
    placement.transport.close()


def test_a_worker_killed_mid_fit_is_rebuilt_and_the_fit_is_unchanged(local_ray, ale80) -> None:
    x, y = ale80
    reference = GSMPRegressor(**PARAMS, bits=8).fit(x, y)
    placement = Placement()
    killed: list[int] = []

    def kill_at_round_3(record) -> None:
        if record.round == 3:
            assert placement.transport is not None
            pid = placement.transport.pids()[1]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    model = GSMPRegressor(**PARAMS, bits=8).fit(
        x, y, on_round=kill_at_round_3, transport_factory=placement
    )
    assert placement.transport is not None
    assert killed and placement.transport.recoveries == 1
    assert placement.transport.pids()[1] != killed[0]  # a new process carries agent 1
    assert len(model.admm_result_.rounds) == len(reference.admm_result_.rounds)
    np.testing.assert_allclose(model.weights_, reference.weights_, rtol=1e-9, atol=1e-12)
    placement.transport.close()


def test_results_are_only_gate_releases_and_the_ledger_verifies(
    local_ray, tmp_path: Path, key_path: Path
) -> None:
    out, ledger = tmp_path / "out", tmp_path / "ledger.sqlite"
    job = tmp_path / "job.toml"
    job.write_text(
        '[job]\nname = "ale"\n[data]\ndataset = "slimkl:ale80"\n[model]\ncomponents_per_dim = 20\n'
        f'[admm]\nagents = 2\nmax_iter = 8\n[output]\ndir = "{out}"\n'
        f'[privacy]\nledger = "{ledger}"\nkey = "{key_path}"\nrecipient = "analyst"\n'
    )
    summary = run_job(job)
    assert summary["distributed"] and summary["admm_rounds"] >= 2
    files = sorted(p.name for p in out.iterdir())
    results = [name for name in files if not name.endswith(PROVENANCE_SUFFIX)]
    assert results == ["model.json", "predictions.csv", "summary.json", "weights.npy"]
    assert files == sorted(results + [name + PROVENANCE_SUFFIX for name in results])
    with Ledger(ledger) as opened:
        for name in results:
            provenance = json.loads((out / (name + PROVENANCE_SUFFIX)).read_text())
            entry = opened.entry(provenance["ledger_id"])
            assert provenance["ledger"] == opened.uuid
            assert entry.hash == provenance["entry_hash"] and entry.kind == "non_dp"
            assert provenance["dp"] is False and entry.body["recipient"] == "analyst"
    verified = CliRunner().invoke(
        app, ["audit", "verify", str(ledger), "--public-key", f"{key_path}.pub"]
    )
    assert verified.exit_code == 0 and "ok: " in verified.output
    weights = np.load(out / "weights.npy")
    assert json.loads((out / "summary.json").read_text())["nonzero_weights"] == np.count_nonzero(
        weights
    )


def test_bench_on_ray_actors_fits_what_the_local_run_fits(local_ray) -> None:
    # One actor an agent, stepping in parallel: the same algorithm, so the same figures (to
    # the rounding of one thread against two; at 8 bits such a difference can flip a random
    # rounding, so the comparison is of float64 messages).
    local = bench_slimkl("electricitydata", device="cpu")
    on_ray = bench_slimkl("electricitydata", device="cpu", runtime="ray")
    assert (local["runtime"], on_ray["runtime"]) == ("local", "ray")
    assert on_ray["test_mse"] == pytest.approx(local["test_mse"], rel=1e-6)
    assert on_ray["admm_rounds"] == local["admm_rounds"]
    assert on_ray["bits_sent"] == local["bits_sent"]


def test_bench_command_on_ray_uses_the_running_ray_and_leaves_it_up(local_ray) -> None:
    result = CliRunner().invoke(
        app, ["bench", "slimkl", "--dataset", "ale80", "--runtime", "ray", "--json"]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["runtime"] == "ray" and row["test_mse"] < row["reference_test_mse"] * 1.1
    assert ray.is_initialized()  # a Ray the command did not start is not shut down
