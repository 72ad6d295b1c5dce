"""The ``dp_gsmp`` job kind on a real local Ray, and through ``gramfed run``."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gramfed.platform.cli.main import app
from gramfed.platform.jobspec import load_job
from gramfed.platform.results import PROVENANCE_SUFFIX
from gramfed.platform.runtime.driver import run_job
from gramfed.privacy.ledger import POSTPROCESS, RELEASE, Ledger


def _job(tmp_path: Path, key_path: Path, extra: str = "", privacy: str = "") -> Path:
    out, ledger = tmp_path / "out", tmp_path / "ledger.sqlite"
    job = tmp_path / "job.toml"
    job.write_text(
        '[job]\nname = "ale"\nkind = "dp_gsmp"\n[data]\ndataset = "slimkl:ale80"\n'
        "[model]\ncomponents_per_dim = 4\nscale = 0.01\n"
        "[admm]\nagents = 2\nmax_iter = 5\nbits = 8\n"
        f"[dp]\ny_lo = -0.5\ny_hi = 0.5\nfeatures_per_component = 4\n{extra}"
        f'[output]\ndir = "{out}"\n'
        f'[privacy]\nledger = "{ledger}"\nkey = "{key_path}"\n'
        + (privacy or "epsilon = 2.0\ndelta = 1e-5\n")
    )
    return job


def test_dp_gsmp_job_on_ray_writes_only_free_derivations_of_one_release_per_agent(
    tmp_path: Path, key_path: Path
) -> None:
    summary = run_job(_job(tmp_path, key_path))
    assert summary["distributed"] and summary["agents"] == 2
    out = tmp_path / "out"
    results = sorted(p.name for p in out.iterdir() if not p.name.endswith(PROVENANCE_SUFFIX))
    assert results == ["model.json", "predictions.csv", "summary.json"]
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        releases = ledger.entries(kinds=(RELEASE,))
        assert sorted(e.pool for e in releases) == [
            "slimkl.ale80.agent0:record",
            "slimkl.ale80.agent1:record",
        ]
        assert sorted(summary["release_ledger_ids"]) == sorted(e.seq for e in releases)
        for name in results:
            provenance = json.loads((out / (name + PROVENANCE_SUFFIX)).read_text())
            assert provenance["dp"] is True and provenance["kind"] == POSTPROCESS
            assert ledger.entry(provenance["ledger_id"]).rho == 0
    model = json.loads((out / "model.json").read_text())
    assert len(model["weights"]) == summary["components"] and model["noise_variance"] > 0
    # A second run is a second fit: one more priced release per agent, then the budget is gone.
    result = CliRunner().invoke(app, ["run", str(_job(tmp_path, key_path))])
    assert result.exit_code == 2, result.output
    assert "privacy budget exceeded" in result.output and "Traceback" not in result.output
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert len(ledger.entries(kinds=(RELEASE,))) == 2


@pytest.mark.parametrize(
    ("extra", "privacy", "message"),
    [
        ("", "epsilon = 1.0\n", "needs [privacy] epsilon and delta"),
        ("y_lo = 0.0\n", "", "both 'y_lo' and 'y_hi'"),
        ("noise = -1.0\n", "", "dp.noise"),
    ],
)
def test_bad_dp_job_specs_fail_in_one_line(
    tmp_path: Path, key_path: Path, extra: str, privacy: str, message: str
) -> None:
    job = _job(tmp_path, key_path, privacy=privacy)
    text = job.read_text()
    if extra:
        text = text.replace("y_lo = -0.5\ny_hi = 0.5\n", extra)
    job.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_job(job)
    result = CliRunner().invoke(app, ["run", str(job)])
    assert result.exit_code == 2 and "Traceback" not in result.output
