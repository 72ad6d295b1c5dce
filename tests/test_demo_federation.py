"""``gramfed demo`` as a user runs it: SLIM-KL, then a coordinator and three participants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gramfed.platform.cli.main import app
from gramfed.platform.datasets import load_slimkl
from gramfed.platform.demo import PLANTS, standardise
from gramfed.platform.federation.gsmp import FederatedGSMP
from gramfed.platform.sketch_files import load_sketches
from gramfed.privacy.ledger import RELEASE, Ledger


def test_the_demo_fits_federates_sketches_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("BROWSER", raising=False)
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    assert "SLIM-KL" in result.output and "Federated private GSMP" in result.output
    root = tmp_path / "runs" / "demo-federation"
    # The private model learned the plant's output far better than predicting the mean.
    data = load_slimkl("cccp9500")
    model = FederatedGSMP.load(root / "state" / "output-model.json")
    mse = float(np.mean((model.predict(standardise(data.x_test)).mean.numpy() - data.y_test) ** 2))
    assert mse < 0.25 * float(np.var(data.y_test))
    (sketch,) = load_sketches(root / "state" / "conditions.gfs")
    assert abs(sketch.count - len(data.x_train)) < 200 and len(sketch.provenance) == 3
    html = (root / "p0-audit.html").read_text()
    assert "plant" in html and "output-model" in html
    assert "audit report of participant p0" in result.output
    for plant in PLANTS:  # one priced release per job in each plant's own ledger
        assert len(Ledger(root / plant / "ledger.db").entries(kinds=(RELEASE,))) == 2
