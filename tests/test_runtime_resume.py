"""Checkpoints: an ADMM run resumed from round t equals the uninterrupted run, in memory and
across a driver killed with SIGKILL."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gramfed.platform.runtime import checkpoint
from gramfed.workers.admm import ADMMOptions, ADMMState, ConsensusADMM
from gramfed.workers.estimator import AgentRecipe, GSMPRegressor
from gramfed.workers.gram import GramOptions
from gramfed.workers.kernels.gsmp import GSMPGrid
from gramfed.workers.sca import SCAOptions
from gramfed.workers.transport import InProcessTransport

GRAMFED = [str(Path(sys.executable).with_name("gramfed")), "run"]


@pytest.mark.parametrize("bits", [None, 8])
def test_a_run_resumed_from_a_checkpoint_equals_the_uninterrupted_run(
    toy_regression, tmp_path: Path, bits
) -> None:
    x, y = toy_regression
    options = ADMMOptions(max_iter=8, bits=bits)
    grid = GSMPGrid.default(1, per_dim=20, scale=0.01)
    sca = SCAOptions(max_iter=20)
    recipe = AgentRecipe(grid, GramOptions(), sca, options, 0.01, learned_noise=False)
    shards = [
        (torch.from_numpy(xs), torch.from_numpy(ys))
        for xs, ys in zip(np.array_split(x, 2), np.array_split(y, 2), strict=True)
    ]
    path = tmp_path / "admm.json"

    def run(resume: checkpoint.Checkpoint | None = None):
        agents = [recipe.build(j, xs, ys) for j, (xs, ys) in enumerate(shards)]
        if resume is not None:
            for agent, state in zip(agents, resume.agents, strict=True):
                agent.restore(state)

        def save(state: ADMMState) -> None:
            if resume is None and state.round == 4:
                saved = checkpoint.Checkpoint("job", state, [a.state() for a in agents])
                checkpoint.save(path, saved)

        admm = ConsensusADMM(InProcessTransport(agents), recipe.size, options)
        return admm.run(checkpoint=save, resume_from=None if resume is None else resume.admm)

    whole = run()
    resumed = run(checkpoint.load(path, "job"))
    assert [r.round for r in resumed.rounds] == [r.round for r in whole.rounds]
    torch.testing.assert_close(resumed.weights, whole.weights, rtol=0, atol=0)
    assert resumed.bits_sent == whole.bits_sent


def test_checkpoint_for_another_spec_or_missing_is_refused(tmp_path: Path) -> None:
    zeros = torch.zeros(1, 2, dtype=torch.float64)
    state = ADMMState(0, b"", zeros[0], zeros, zeros, 1.0, 0.0, [], False, None)
    path = tmp_path / "c.json"
    checkpoint.save(path, checkpoint.Checkpoint("a", state, []))
    with pytest.raises(ValueError, match="different job spec"):
        checkpoint.load(path, "b")
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        checkpoint.load(tmp_path / "absent.json", "a")
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]  # no temporary files left


def _job(tmp_path: Path, key_path: Path, name: str, out: Path) -> Path:
    job = tmp_path / f"{name}.toml"
    job.write_text(
        f'[job]\nname = "{name}"\n[data]\ndataset = "slimkl:ale80"\n'
        "[model]\ncomponents_per_dim = 20\n[admm]\nagents = 2\nbits = 8\nmax_iter = 40\n"
        f'[output]\ndir = "{out}"\n'
        f'[privacy]\nledger = "{tmp_path / "ledger.sqlite"}"\nkey = "{key_path}"\n'
    )
    return job


@pytest.mark.slow
def test_gramfed_run_resume_finishes_a_fit_whose_driver_was_killed(
    tmp_path: Path, key_path: Path
) -> None:
    out = tmp_path / "out"
    job = _job(tmp_path, key_path, "ale", out)
    saved = out / "checkpoint" / "admm.json"
    driver = subprocess.Popen(
        [*GRAMFED, str(job)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and driver.poll() is None:
            if saved.exists() and json.loads(saved.read_text())["admm"]["round"] >= 3:
                break
            time.sleep(0.05)
        assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        # The embedded Ray the driver started shares its session: end it with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)
    interrupted_at = json.loads(saved.read_text())["admm"]["round"]
    assert interrupted_at >= 3 and not (out / "weights.npy").exists()

    resumed = subprocess.run(
        [*GRAMFED, str(job), "--resume", "--json"], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["resumed_from_round"] == interrupted_at
    assert not saved.exists()  # a finished job keeps only its released results

    reference = GSMPRegressor(agents=2, components_per_dim=20, bits=8, admm_max_iter=40).fit(
        *_ale80()
    )
    assert summary["admm_rounds"] == len(reference.admm_result_.rounds)
    np.testing.assert_allclose(np.load(out / "weights.npy"), reference.weights_, atol=1e-12)


def _ale80():
    from gramfed.platform.datasets import load_slimkl

    split = load_slimkl("ale80")
    return split.x_train, split.y_train
