"""The federated half of ``gramfed demo``: coordinator and three participants as processes."""

from __future__ import annotations

from pathlib import Path

from gramfed.platform.demo import run_federated_demo
from gramfed.platform.sketch_files import load_sketches
from gramfed.privacy.ledger import RELEASE, Ledger


def test_the_federated_demo_fits_sketches_and_reports(tmp_path: Path) -> None:
    lines: list[str] = []
    summary = run_federated_demo(tmp_path / "demo", lines.append)
    assert summary["survivors"] == ["p0", "p1", "p2"]
    # The private model learned the plant's output (far better than predicting the mean), and
    # privacy cost something against the same model without noise.
    assert summary["test_mse"] < 0.25 * summary["test_variance"]
    assert summary["test_mse"] > summary["test_mse_without_privacy"]
    (sketch,) = load_sketches(Path(summary["sketch_file"]))
    assert abs(sketch.count - summary["records"]) < 200 and len(sketch.provenance) == 3
    html = Path(summary["audit_report"]).read_text()
    assert "plant" in html and "output-model" in html
    for plant in ("p0", "p1", "p2"):  # one priced release per job in each plant's own ledger
        ledger = Ledger(tmp_path / "demo" / plant / "ledger.db")
        assert len(ledger.entries(kinds=(RELEASE,))) == 2
    assert any("mutual TLS" in line for line in lines)
