"""A coordinator and participants as real processes on loopback, over mutual TLS."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from gramfed.platform.cli.main import app
from gramfed.platform.federation import pki
from gramfed.platform.federation.participant import KILL_AT_ENV
from gramfed.privacy import keys
from gramfed.privacy.ledger import NON_DP, RELEASE, Ledger
from gramfed.workers.sketch.accumulate import accumulate
from gramfed.workers.sketch.spec import SketchSpec

GRAMFED = str(Path(sys.executable).parent / "gramfed")
JOB = {
    "name": "density",
    "dataset": "clinic",
    "rho": 0.2,
    "max_records": 1000,
    "kernel": "l2",
    "input_dim": 2,
    "bandwidth": 1.0,
    "repetitions": 8,
    "hashes": 2,
    "buckets": 16,
    "seed": 7,
}


def federation(root: Path, n: int, *, threshold: int, stage_seconds: float = 4.0) -> None:
    """A PKI, a coordinator configuration, and n participant folders with data and policy."""
    pki.init(root / "pki")
    pki.issue(root / "pki", "coord", server=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"p{i}"
        pki.issue(root / "pki", name)
        folder = root / name
        folder.mkdir()
        keys.generate(folder / "ledger.key")
        np.save(folder / "data.npy", rng.normal(size=(150 + 10 * i, 2)))
        (folder / "policy.toml").write_text(
            'dataset = "clinic"\nledger = "ledger.db"\nkey = "ledger.key"\nbudget_epsilon = 4.0\n'
        )
    job = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**JOB, "threshold": threshold}.items())
    (root / "coord.toml").write_text(
        f"""listen = "127.0.0.1:0"
state_dir = "state"
linger_seconds = 1.5
[tls]
cert = "pki/issued/coord.crt"
key = "pki/issued/coord.key"
ca = "pki/ca.crt"
allowlist = "pki/allowlist.json"
[rounds]
quorum = 2
participants = {n}
gather_seconds = 60
stage_seconds = {stage_seconds}
heartbeat_seconds = 1
[[jobs]]
{job}
"""
    )


def start_coordinator(root: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [GRAMFED, "coordinator", "serve", "--config", str(root / "coord.toml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    listening = root / "state" / "listening"
    deadline = time.monotonic() + 60
    while not listening.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the coordinator did not start"
        time.sleep(0.1)
    return process, listening.read_text().strip()


def participant_args(root: Path, name: str, address: str) -> list[str]:
    data, policy = root / name / "data.npy", root / name / "policy.toml"
    head = [GRAMFED, "participant", "join", "--coordinator", address]
    return [*head, "--data", str(data), "--policy", str(policy)]


def join(
    root: Path, name: str, address: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    issued = root / "pki" / "issued"
    tls = [issued / f"{name}.crt", issued / f"{name}.key", root / "pki" / "ca.crt"]
    flags = [
        x
        for flag, path in zip(("--cert", "--key", "--ca"), tls, strict=True)
        for x in (flag, str(path))
    ]
    return subprocess.Popen(
        [*participant_args(root, name, address), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_five_participants_one_killed_mid_round(tmp_path: Path) -> None:
    federation(tmp_path, 5, threshold=3)
    coordinator, address = start_coordinator(tmp_path)
    victim = "p3"
    members = {
        f"p{i}": join(tmp_path, f"p{i}", address, {KILL_AT_ENV: "INPUT"} if i == 3 else None)
        for i in range(5)
    }
    outputs = {name: p.communicate(timeout=120) for name, p in members.items()}
    _, err = coordinator.communicate(timeout=60)
    assert coordinator.returncode == 0, err
    assert members[victim].returncode == -9  # SIGKILL: gone between sharing and input
    for name, p in members.items():
        if name != victim:
            assert p.returncode == 0, outputs[name][1]
    result = json.loads((tmp_path / "state" / "density.json").read_text())
    assert result["status"] == "done", result
    survivors = [f"p{i}" for i in (0, 1, 2, 4)]
    assert result["survivors"] == survivors and result["dropped"] == [victim]

    # The same sketch computed in one process on the survivors' data, without noise.
    spec = SketchSpec(
        kernel="l2", input_dim=2, seed=7, bandwidth=1.0, repetitions=8, hashes=2, buckets=16
    )
    exact = sum(
        np.append(s.values, s.count)
        for s in (accumulate(spec, np.load(tmp_path / n / "data.npy"), device="cpu")
                  for n in survivors)
    )  # fmt: skip
    noisy = np.array(result["sum"])
    assert noisy[-1] != 0 and exact[-1] == sum(150 + 10 * i for i in (0, 1, 2, 4))
    sd = math.sqrt(len(survivors) * float(eval_fraction(result["noise_sigma2_each"])))
    assert np.max(np.abs(noisy - exact)) < 6 * sd  # within noise; masks removed exactly
    assert np.std(noisy - exact) > 0.3 * sd  # and the noise is really there

    # Each participant's own ledger: one DP release each (the victim's, if any, was never sent).
    for name in survivors:
        ledger = Ledger(tmp_path / name / "ledger.db")
        assert len(ledger.entries(kinds=(RELEASE,))) == 1
        assert not ledger.entries(kinds=(NON_DP,))


def eval_fraction(text: str) -> float:
    num, _, den = text.partition("/")
    return int(num) / int(den or 1)


def test_plaintext_needs_loopback_and_a_flag(tmp_path: Path) -> None:
    federation(tmp_path, 1, threshold=2)
    config = (tmp_path / "coord.toml").read_text()
    (tmp_path / "open.toml").write_text(
        config.replace('listen = "127.0.0.1:0"', 'listen = "0.0.0.0:0"\nplaintext = true')
    )
    runner = CliRunner()
    served = runner.invoke(app, ["coordinator", "serve", "--config", str(tmp_path / "open.toml")])
    assert served.exit_code == 2 and "loopback only" in served.output
    joined = runner.invoke(
        app, [*participant_args(tmp_path, "p0", "10.1.2.3:5")[1:], "--plaintext"]
    )
    assert joined.exit_code == 2 and "loopback address" in joined.output
    mixed = [*participant_args(tmp_path, "p0", "127.0.0.1:5")[1:], "--plaintext", "--ca", "x"]
    assert "takes no --cert" in runner.invoke(app, mixed).output
    missing = runner.invoke(app, participant_args(tmp_path, "p0", "127.0.0.1:5")[1:])
    assert missing.exit_code == 2 and "needs --cert, --key and --ca" in missing.output
    for result in (served, joined, missing):
        assert "Traceback" not in result.output
