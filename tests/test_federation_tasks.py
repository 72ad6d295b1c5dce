"""What a participant computes for a federated job: vectors, grids, sensitivities (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gramfed.platform.cli.main import app
from gramfed.platform.federation import tasks
from gramfed.platform.federation.jobs import FederatedJob
from gramfed.platform.federation.local import toml_text
from gramfed.platform.federation.participant import Participant, Policy
from gramfed.platform.sketchspec import Points
from gramfed.privacy import fixedpoint, keys
from gramfed.protos import federation_pb2 as pb
from gramfed.workers.sketch.classify import accumulate_by_label
from gramfed.workers.sketch.rff import L2_SENSITIVITY as RFF_SENSITIVITY

CLASSES = {
    "job": {"kind": "sketch_build", "name": "classes"},
    "data": {"path": "unused.npz", "label": "y"},
    "sketch": {"kernel": "gaussian", "bandwidth": 1.0, "features": 64, "seed": 3,
               "classes": ["0", "1", "2"]},
    "privacy": {"ledger": "l.db", "key": "l.key", "dataset": "clinic", "epsilon": 1.0},
    "output": {"path": "classes.gfs"},
}  # fmt: skip


def entry(tmp_path: Path, sections: dict, **options: int) -> FederatedJob:
    path = tmp_path / "job.toml"
    path.write_text(toml_text(sections))
    settings = {"input_dim": 2, "threshold": 2, "max_records": 500, **options}
    return FederatedJob(spec=path, **settings)


def test_class_sketch_vectors_sum_to_the_pooled_class_sums(tmp_path: Path) -> None:
    job = entry(tmp_path, CLASSES).load().description
    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=(n, 2)), rng.integers(0, 3, n).astype(float)) for n in (80, 120)]
    total = sum(tasks.local_vector(job, x, y) for x, y in parts)
    decoded = tasks.decode(job, total)
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts]).astype(int).astype(str)
    spec = tasks.rules(job).sketch
    sums = accumulate_by_label(spec, x, y, ["0", "1", "2"], device="cpu")
    exact = np.concatenate([np.append(sums[c].values, sums[c].count) for c in "012"])
    grid = 2.0 ** tasks.rules(job).exponent
    assert decoded.shape == exact.shape == (3 * 65,)
    assert np.max(np.abs(decoded - exact)) <= 2 * 0.5 * grid  # two roundings to the grid
    assert decoded[64] == exact[64] == sum(y == "0")


def test_sensitivities_include_the_rounding(tmp_path: Path) -> None:
    rff = entry(tmp_path, CLASSES).load().description
    m, e = tasks.rules(rff).dim, tasks.rules(rff).exponent
    bound = fixedpoint.l2_units(RFF_SENSITIVITY, e, m)
    assert tasks.rules(rff).mechanism.sensitivity == pytest.approx(float(bound))
    # the grid keeps the rounding term within 1/64 to 1/32 of the scaled sensitivity
    assert fixedpoint.ceil_sqrt(m) <= 2 * (RFF_SENSITIVITY / 2.0**e) / tasks.ROUNDING_SHARE
    lsh = {**CLASSES, "sketch": {"kernel": "l2", "bandwidth": 1.0, "repetitions": 8,
                                 "hashes": 2, "buckets": 16}}  # fmt: skip
    lsh["data"] = {"path": "unused.npz"}
    counts = entry(tmp_path, lsh).load().description
    assert tasks.rules(counts).exponent == 0
    assert tasks.rules(counts).mechanism.sensitivity == pytest.approx(3.0)  # sqrt(R + 1), R = 8


def test_a_participant_over_the_record_bound_computes_nothing(tmp_path: Path) -> None:
    job = entry(tmp_path, CLASSES, max_records=10).load().description
    with pytest.raises(tasks.TaskError, match="exceed the job's public bound of 10"):
        tasks.local_vector(job, np.zeros((11, 2)), np.zeros(11))
    with pytest.raises(tasks.TaskError, match="needs labels"):
        tasks.local_vector(job, np.zeros((5, 2)), None)


def test_bad_federated_jobs_are_one_line_errors(tmp_path: Path) -> None:
    fit = {"job": {"kind": "gsmp_fit", "name": "fit"}, "data": {"dataset": "slimkl:ale80"}}
    laplace = {**CLASSES, "sketch": {**CLASSES["sketch"], "noise": "laplace"}}
    (tmp_path / "fit.toml").write_text(toml_text(fit))
    (tmp_path / "laplace.toml").write_text(toml_text(laplace))
    cases = {
        "missing.toml": "missing.toml: no such job file",
        "fit.toml": "federated jobs are sketch_build or dp_gsmp, not 'gsmp_fit'",
        "laplace.toml": "laplace noise cannot be shared out",
    }
    for spec, message in cases.items():
        config = tmp_path / "coordinator.toml"
        config.write_text(
            toml_text({}, {"listen": "127.0.0.1:0", "plaintext": True, "state_dir": "state"})
            + f'\n[[jobs]]\nspec = "{spec}"\ninput_dim = 2\nthreshold = 2\nmax_records = 10\n'
        )
        result = CliRunner().invoke(app, ["coordinator", "serve", "--config", str(config)])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output


def test_a_participant_refuses_jobs_its_data_cannot_answer(tmp_path: Path) -> None:
    gsmp = {
        "job": {"kind": "dp_gsmp", "name": "gsmp"},
        "data": {"train": "unused.npz"},
        "privacy": {"dataset": "clinic", "epsilon": 1.0, "delta": 1e-5},
        "dp": {"y_lo": -1.0, "y_hi": 1.0},
    }
    offer = pb.Task(stage=pb.Task.OFFER, job_id="gsmp", round=1)
    offer.job.CopyFrom(entry(tmp_path, gsmp).load().description)
    keys.generate(tmp_path / "ledger.key")
    policy = Policy(
        dataset="clinic", ledger=tmp_path / "ledger.db", key=tmp_path / "ledger.key",
        budget_epsilon=4.0,
    )  # fmt: skip

    def member(points: Points) -> Participant:
        return Participant("127.0.0.1:1", policy, points, None, plaintext=True, log=print)

    unlabelled = member(Points(np.zeros((20, 2)), None)).decide(offer)
    assert not unlabelled.accepted and "--target" in unlabelled.reason
    too_many = member(Points(np.zeros((600, 2)), np.zeros(600))).decide(offer)
    assert not too_many.accepted and "exceed the job's public bound of 500" in too_many.reason
    forged = pb.Task()
    forged.CopyFrom(offer)
    forged.job.value_bound += 1  # a bound that does not follow from the job's parameters
    answer = member(Points(np.zeros((20, 2)), np.zeros(20))).decide(forged)
    assert not answer.accepted and "value bound" in answer.reason
    assert member(Points(np.zeros((20, 2)), np.zeros(20))).decide(offer).accepted
