"""A coordinator and participants as real processes on loopback, over mutual TLS."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from gramfed.platform.cli.main import app
from gramfed.platform.federation.gsmp import FederatedGSMP, statistics_plan
from gramfed.platform.federation.local import FederatedJobFile, LocalFederation
from gramfed.platform.federation.participant import KILL_AT_ENV
from gramfed.platform.sketch_files import load_sketches
from gramfed.privacy.ledger import NON_DP, RELEASE, Ledger
from gramfed.workers.dp_gsmp.statistics import pack
from gramfed.workers.sketch.accumulate import accumulate
from gramfed.workers.sketch.spec import SketchSpec

SKETCH = SketchSpec(
    kernel="l2", input_dim=2, seed=7, bandwidth=1.0, repetitions=8, hashes=2, buckets=16
)
Y_RANGE = (-3.0, 3.0)


def records(i: int) -> tuple[np.ndarray, np.ndarray]:
    """Participant i's records: a smooth function of 2 inputs plus noise."""
    rng = np.random.default_rng(i)
    x = rng.normal(size=(240 + 20 * i, 2))
    return x, np.sin(1.5 * x[:, 0]) + 0.5 * x[:, 1] + 0.1 * rng.normal(size=len(x))


def density_job(threshold: int) -> FederatedJobFile:
    sections = {
        "job": {"kind": "sketch_build", "name": "density"},
        "data": {"path": "participants.npz"},  # each participant brings its own
        "sketch": {"kernel": "l2", "bandwidth": 1.0, "repetitions": 8, "hashes": 2,
                   "buckets": 16, "seed": 7},
        "privacy": {"ledger": "unused.db", "key": "unused.key", "dataset": "clinic", "rho": 0.2},
        "output": {"path": "density.gfs"},
    }  # fmt: skip
    return FederatedJobFile("density", sections, 2, threshold, 1000)


def gsmp_job(threshold: int) -> FederatedJobFile:
    sections = {
        "job": {"kind": "dp_gsmp", "name": "gsmp"},
        "data": {"train": "participants.npz"},
        "model": {"components_per_dim": 2, "freq_upper": 0.3, "scale": 0.1, "seed": 5},
        # Little noise, so that comparing predictions below checks the protocol, not the noise
        # (the statistics are checked against the noise's own scale).
        "privacy": {"dataset": "clinic", "epsilon": 2000.0, "delta": 1e-5},
        "dp": {"y_lo": Y_RANGE[0], "y_hi": Y_RANGE[1], "features_per_component": 8},
    }
    return FederatedJobFile("gsmp", sections, 2, threshold, 1000)


def test_five_participants_one_killed_mid_round(tmp_path: Path) -> None:
    data = {f"p{i}": records(i) for i in range(5)}
    fed = LocalFederation.create(
        tmp_path, data, [gsmp_job(3), density_job(3)], dataset="clinic",
        budget_epsilon=3000.0, rounds={"stage_seconds": 6, "gather_seconds": 60,
                                    "heartbeat_seconds": 1},
    )  # fmt: skip
    coordinator, address = fed.start_coordinator()
    victim = "p3"
    members = {
        name: fed.join(name, address, {KILL_AT_ENV: "INPUT"} if name == victim else None)
        for name in data
    }
    outputs = {name: p.communicate(timeout=180) for name, p in members.items()}
    _, err = coordinator.communicate(timeout=60)
    assert coordinator.returncode == 0, err
    assert members[victim].returncode == -9  # SIGKILL: gone between sharing and input
    for name, p in members.items():
        if name != victim:
            assert p.returncode == 0, outputs[name][1]
    survivors = [f"p{i}" for i in (0, 1, 2, 4)]
    x = np.concatenate([data[n][0] for n in survivors])
    y = np.concatenate([data[n][1] for n in survivors])

    # The private GSMP fit (first job, the victim killed in its input stage): the noisy sum is
    # the survivors' pooled statistics within the noise, and the model learned from it predicts
    # like the same learning run in one process on the survivors' exact statistics.
    fit = fed.result("gsmp")
    assert fit["status"] == "done", fit
    assert fit["survivors"] == survivors and fit["dropped"] == [victim]
    model = FederatedGSMP.load(fed.state / "gsmp.json")
    recipe, split = statistics_plan(model.recipe)
    statistics = recipe.statistics(torch.from_numpy(x), torch.from_numpy(y))
    pooled = pack(statistics, split)
    assert np.max(np.abs(model.statistics - pooled)) < 6 * model.noise_sd
    assert np.std(model.statistics - pooled) > 0.5 * model.noise_sd  # the noise is really there
    in_process = FederatedGSMP(model.recipe, pooled, model.noise_sd)
    grid = np.random.default_rng(9).normal(size=(200, 2))
    federated, central = (m.predict(grid).mean.numpy() for m in (model, in_process))
    # What remains is the (small) noise's effect on the learned weights: a few percent.
    assert np.sqrt(np.mean((federated - central) ** 2)) < 0.1 * np.std(central)

    # The merged sketch (second job: the four survivors only).
    result = fed.result("density")
    assert result["status"] == "done", result
    assert result["survivors"] == survivors
    counts = sum(
        np.append(s.values, s.count)
        for s in (accumulate(SKETCH, data[n][0], device="cpu") for n in survivors)
    )
    noisy = np.array(result["sum"])
    assert noisy[-1] != 0 and counts[-1] == len(x)
    sd = result["noise_sd"]
    assert math.isclose(sd, math.sqrt(4 * eval_fraction(result["noise_sigma2_each"])))
    assert np.max(np.abs(noisy - counts)) < 6 * sd  # within noise; masks removed exactly
    assert np.std(noisy - counts) > 0.3 * sd  # and the noise is really there
    (sketch,) = load_sketches(Path(result["sketch_file"]))
    assert sketch.spec == SKETCH and np.array_equal(sketch.values, noisy[:-1])
    assert len(sketch.provenance) == 4

    # Each participant's own ledger: one DP release per job (the victim's was never sent).
    for name in survivors:
        ledger = Ledger(tmp_path / name / "ledger.db")
        assert len(ledger.entries(kinds=(RELEASE,))) == 2
        assert not ledger.entries(kinds=(NON_DP,))


def eval_fraction(text: str) -> float:
    num, _, den = text.partition("/")
    return int(num) / int(den or 1)


def test_plaintext_needs_loopback_and_a_flag(tmp_path: Path) -> None:
    fed = LocalFederation.create(tmp_path, {"p0": records(0)}, [density_job(2)], dataset="clinic")
    config = (tmp_path / "coordinator.toml").read_text()
    (tmp_path / "open.toml").write_text(
        config.replace('listen = "127.0.0.1:0"', 'listen = "0.0.0.0:0"\nplaintext = true')
    )
    runner = CliRunner()
    served = runner.invoke(app, ["coordinator", "serve", "--config", str(tmp_path / "open.toml")])
    assert served.exit_code == 2 and "loopback only" in served.output

    def without_tls(address: str) -> list[str]:
        args = fed.join_args("p0", address)[1:]
        return args[: args.index("--cert")]

    joined = runner.invoke(app, [*without_tls("10.1.2.3:5"), "--plaintext"])
    assert joined.exit_code == 2 and "loopback address" in joined.output
    mixed = [*without_tls("127.0.0.1:5"), "--plaintext", "--ca", "x"]
    assert "takes no --cert" in runner.invoke(app, mixed).output
    missing = runner.invoke(app, without_tls("127.0.0.1:5"))
    assert missing.exit_code == 2 and "needs --cert, --key and --ca" in missing.output
    for result in (served, joined, missing):
        assert "Traceback" not in result.output


def test_restarted_coordinator_and_participant_resume(tmp_path: Path) -> None:
    first, second = density_job(2), density_job(2)
    second.name = "density2"
    second.sections = {**second.sections, "job": {"kind": "sketch_build", "name": "density2"}}
    data = {f"p{i}": records(i) for i in range(3)}
    fed = LocalFederation.create(
        tmp_path, data, [first, second], dataset="clinic", budget_epsilon=12.0,
        rounds={"stage_seconds": 5, "gather_seconds": 20, "heartbeat_seconds": 1},
    )  # fmt: skip
    coordinator, address = fed.start_coordinator()
    # p2 dies while sharing keys in the first round (nothing of it released), then comes back.
    members = {n: fed.join(n, address) for n in ("p0", "p1")}
    doomed = fed.join("p2", address, {KILL_AT_ENV: "SHARE"})
    assert doomed.wait(timeout=60) == -9
    members["p2"] = fed.join("p2", address)
    done = fed.state / "density.json"
    deadline = time.monotonic() + 120
    while not done.exists():
        assert coordinator.poll() is None, coordinator.communicate()
        assert time.monotonic() < deadline, "the first job did not finish"
        time.sleep(0.1)
    coordinator.kill()  # the coordinator dies between (or during) jobs
    coordinator.wait()
    first_result = done.read_text()
    used = json.loads((fed.state / "rounds.json").read_text())

    # Restarted on the same port (a real deployment listens on a fixed one): the participants,
    # still retrying their pulls, find it again and take part in the second job.
    config = fed.root / "coordinator.toml"
    config.write_text(config.read_text().replace('"127.0.0.1:0"', json.dumps(address)))
    coordinator, again = fed.start_coordinator()
    assert again == address
    outputs = {name: p.communicate(timeout=180) for name, p in members.items()}
    _, err = coordinator.communicate(timeout=60)
    assert coordinator.returncode == 0, err
    for name, p in members.items():
        assert p.returncode == 0, (outputs[name][1], err)
    assert done.read_text() == first_result  # the finished job was not run again
    second_result = fed.result("density2")
    assert second_result["status"] == "done", second_result
    assert second_result["survivors"] == ["p0", "p1", "p2"]
    assert second_result["round"] > used.get("density2", 0)  # never a round number reused
    assert "done in an earlier run" in err
    for name in data:  # one release per job that finished with the participant in it
        ledger = Ledger(tmp_path / name / "ledger.db")
        releases = [e.body["description"] for e in ledger.entries(kinds=(RELEASE,))]
        assert sum("density2" in d for d in releases) >= 1
        took_part = name in json.loads(first_result)["survivors"]
        assert sum("density round" in d for d in releases) == int(took_part)
