"""A whole federation on one machine: a project CA, a coordinator and participants as separate
processes on loopback over mutual TLS. ``gramfed demo`` runs one; the tests and benchmarks
use the same set-up, so they exercise exactly what a user starts by hand.

Layout under ``root``::

    pki/                      the project CA, issued certificates, allowlist
    coordinator.toml          listen address, TLS files, rounds, [[jobs]] by job file
    jobs/NAME.toml            job files (the ones `gramfed run` / `gramfed sketch build` take)
    state/                    the coordinator's checkpoints and results
    NAME/data.npz             each participant's records (X, y)
    NAME/policy.toml          its budget, ledger and signing key
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gramfed.platform.federation import pki
from gramfed.privacy import keys

Sections = Mapping[str, Mapping[str, Any]]


def toml_text(sections: Sections, top: Mapping[str, Any] | None = None) -> str:
    """TOML for flat sections of strings, numbers, booleans and lists of them."""
    lines = [f"{k} = {json.dumps(v)}" for k, v in (top or {}).items()]
    for name, values in sections.items():
        lines += ["", f"[{name}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    return "\n".join(lines).lstrip("\n") + "\n"


@dataclass
class FederatedJobFile:
    """A job file and its ``[[jobs]]`` entry: threshold, record bound, input columns."""

    name: str
    sections: Sections
    input_dim: int
    threshold: int
    max_records: int


@dataclass
class LocalFederation:
    root: Path
    participants: list[str]
    gramfed: str = field(default_factory=lambda: str(Path(sys.executable).parent / "gramfed"))

    @classmethod
    def create(
        cls,
        root: Path,
        data: Mapping[str, tuple[np.ndarray, np.ndarray]],
        jobs: list[FederatedJobFile],
        *,
        dataset: str,
        budget_epsilon: float = 4.0,
        rounds: Mapping[str, Any] | None = None,
    ) -> LocalFederation:
        """Write the CA, certificates, participants' data and policies, jobs and configuration."""
        pki.init(root / "pki")
        pki.issue(root / "pki", "coordinator", server=True)
        for name, (x, y) in data.items():
            pki.issue(root / "pki", name)
            folder = root / name
            folder.mkdir(parents=True)
            keys.generate(folder / "ledger.key")
            np.savez(folder / "data.npz", X=x, y=y)
            (folder / "policy.toml").write_text(
                toml_text(
                    {},
                    {
                        "dataset": dataset,
                        "ledger": "ledger.db",
                        "key": "ledger.key",
                        "budget_epsilon": budget_epsilon,
                    },
                )
            )
        (root / "jobs").mkdir()
        entries = []
        for job in jobs:
            (root / "jobs" / f"{job.name}.toml").write_text(toml_text(job.sections))
            entries.append(
                "\n".join(
                    [
                        "[[jobs]]",
                        f'spec = "jobs/{job.name}.toml"',
                        f"input_dim = {job.input_dim}",
                        f"threshold = {job.threshold}",
                        f"max_records = {job.max_records}",
                    ]
                )
            )
        issued = "pki/issued"
        config = toml_text(
            {
                "tls": {
                    "cert": f"{issued}/coordinator.crt",
                    "key": f"{issued}/coordinator.key",
                    "ca": "pki/ca.crt",
                    "allowlist": f"pki/{pki.ALLOWLIST}",
                },
                "rounds": {"quorum": 2, "participants": len(data), **(rounds or {})},
            },
            {"listen": "127.0.0.1:0", "state_dir": "state", "linger_seconds": 1.5},
        )
        (root / "coordinator.toml").write_text(config + "\n" + "\n\n".join(entries) + "\n")
        return cls(root, list(data))

    @property
    def state(self) -> Path:
        return self.root / "state"

    def start_coordinator(self, timeout: float = 60.0) -> tuple[subprocess.Popen, str]:
        """``gramfed coordinator serve`` in its own process; returns it and its address."""
        listening = self.state / "listening"
        listening.unlink(missing_ok=True)
        process = subprocess.Popen(
            [self.gramfed, "coordinator", "serve", "--config", str(self.root / "coordinator.toml")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while not listening.exists():
            if process.poll() is not None:
                raise RuntimeError(f"the coordinator stopped: {process.communicate()[1][-2000:]}")
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the coordinator did not start listening")
            time.sleep(0.1)
        return process, listening.read_text().strip()

    def join_args(self, name: str, address: str) -> list[str]:
        folder, issued = self.root / name, self.root / "pki" / "issued"
        return [
            self.gramfed, "participant", "join", "--coordinator", address,
            "--data", str(folder / "data.npz"), "--target", "y",
            "--policy", str(folder / "policy.toml"),
            "--cert", str(issued / f"{name}.crt"), "--key", str(issued / f"{name}.key"),
            "--ca", str(self.root / "pki" / "ca.crt"),
        ]  # fmt: skip

    def join(
        self, name: str, address: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        """``gramfed participant join`` for ``name`` in its own process."""
        return subprocess.Popen(
            self.join_args(name, address),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def result(self, job: str) -> dict[str, Any]:
        return json.loads((self.state / f"{job}.json").read_text())
