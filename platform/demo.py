"""The federated half of ``gramfed demo``: the whole platform on one machine.

Three power plants (the shipped cccp9500 set split three ways) join a coordinator on loopback
over mutual TLS, each with its own budget, ledger and policy. The coordinator runs two jobs from
ordinary job files: a private GSMP fit (epsilon 1 per plant) and a Gaussian kernel density
sketch of the plants' operating conditions (epsilon 1). It learns only the securely aggregated,
noised sums. At the end, plant p0's privacy officer gets the audit report of its ledger.

Inputs are standardised with public constants (the sensors' published ranges, not the private
data), and the target range is the plant's rated output, declared up front.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gramfed.platform.audit_report import render
from gramfed.platform.datasets import load_slimkl
from gramfed.platform.federation.gsmp import FederatedGSMP
from gramfed.platform.federation.local import FederatedJobFile, LocalFederation
from gramfed.platform.jobspec import JobSpec
from gramfed.platform.runtime.dp_gsmp import regressor_for
from gramfed.privacy import keys
from gramfed.privacy.report import build_report

PLANTS = ("p0", "p1", "p2")
# Temperature (C), exhaust vacuum (cm Hg), ambient pressure (mbar), relative humidity (%):
# the centres and half-widths of the sensors' published ranges.
SENSOR_CENTRES = np.array([20.0, 54.0, 1013.0, 63.0])
SENSOR_HALF_WIDTHS = np.array([20.0, 29.0, 23.0, 38.0])
RATED_OUTPUT_MW = (420.0, 500.0)
INPUT_RADIUS = 4.0  # standardised readings within the sensors' ranges lie in [-2, 2]^4


def standardise(x: np.ndarray) -> np.ndarray:
    return 2.0 * (x - SENSOR_CENTRES) / SENSOR_HALF_WIDTHS


def jobs() -> list[FederatedJobFile]:
    gsmp = {
        "job": {"kind": "dp_gsmp", "name": "output-model"},
        "data": {"dataset": "slimkl:cccp9500"},  # centrally: `gramfed run`; here: the plants'
        "model": {"components_per_dim": 1, "freq_upper": 0.25, "scale": 0.16, "seed": 1},
        "privacy": {"dataset": "plant", "epsilon": 1.0, "delta": 1e-5},
        "dp": {"y_lo": RATED_OUTPUT_MW[0], "y_hi": RATED_OUTPUT_MW[1],
               "features_per_component": 8, "input_radius": INPUT_RADIUS},
    }  # fmt: skip
    sketch = {
        "job": {"kind": "sketch_build", "name": "conditions"},
        "data": {"path": "plant.npz"},
        "sketch": {"kernel": "gaussian", "bandwidth": 1.0, "features": 1024, "seed": 2},
        "privacy": {"ledger": "ledger.db", "key": "ledger.key", "dataset": "plant",
                    "epsilon": 1.0, "delta": 1e-6},
        "output": {"path": "conditions.gfs"},
    }  # fmt: skip
    return [
        FederatedJobFile("output-model", gsmp, 4, threshold=2, max_records=5000),
        FederatedJobFile("conditions", sketch, 4, threshold=2, max_records=5000),
    ]


def run_federated_demo(root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Set up, run the coordinator and the plants as processes, and write p0's audit report."""
    if root.exists():
        shutil.rmtree(root)
    data = load_slimkl("cccp9500")
    x, y = standardise(data.x_train), data.y_train
    parts = np.array_split(np.random.default_rng(0).permutation(len(x)), len(PLANTS))
    plants = {name: (x[rows], y[rows]) for name, rows in zip(PLANTS, parts, strict=True)}
    fed = LocalFederation.create(
        root, plants, jobs(), dataset="plant", budget_epsilon=3.0,
        rounds={"stage_seconds": 60, "gather_seconds": 60, "heartbeat_seconds": 2},
    )  # fmt: skip
    log(f"project CA, coordinator and {len(PLANTS)} plants set up in {root}")
    coordinator, address = fed.start_coordinator()
    log(f"coordinator listening on {address} (mutual TLS)")
    members = {name: fed.join(name, address) for name in PLANTS}
    for name, process in members.items():
        _, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"plant {name} failed: {err.strip().splitlines()[-1:]}")
        log(f"plant {name} done")
    _, err = coordinator.communicate(timeout=120)
    if coordinator.returncode != 0:
        raise RuntimeError(f"the coordinator failed: {err.strip().splitlines()[-1:]}")

    fit = fed.result("output-model")
    sketch = fed.result("conditions")
    model = FederatedGSMP.load(fed.state / "output-model.json")
    x_test = standardise(data.x_test)
    mse = float(np.mean((model.predict(x_test).mean.numpy() - data.y_test) ** 2))
    # The same job file's model, fitted in one process on the pooled data without noise.
    central = regressor_for(JobSpec.model_validate(jobs()[0].sections))
    central.agents = 1
    central.fit(x, y, epsilon=math.inf, delta=1e-5)
    exact_mse = float(np.mean((central.predict(x_test) - data.y_test) ** 2))
    report = root / "p0-audit.html"
    trusted = keys.load_public(keys.public_path(root / "p0" / "ledger.key"))
    report.write_text(render(build_report(root / "p0" / "ledger.db", trusted), "html"))
    return {
        "root": str(root),
        "survivors": fit["survivors"],
        "test_mse": mse,
        "test_mse_without_privacy": exact_mse,
        "test_variance": float(np.var(data.y_test)),
        "sketch_file": sketch["sketch_file"],
        "sketch_noisy_count": sketch["noisy_count"],
        "records": len(x),
        "audit_report": str(report),
    }
