"""The HTML audit report as a browser shows it: headless Chromium renders and screenshots it.

Needs a Chromium binary (``chromium`` or ``chromium-browser`` on PATH). Without one the test is
skipped on a developer machine but fails in CI (``CI=true``), where it must run.
"""

import os
import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from gramfed.platform.audit_report import render
from gramfed.privacy import keys
from gramfed.privacy.budget import PoolSpec, Rho
from gramfed.privacy.errors import BudgetExceeded
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.privacy.mechanisms import DiscreteGaussianMechanism, DiscreteLaplaceMechanism
from gramfed.privacy.report import build_report
from gramfed.privacy.rng import SeededBits

WIDTH, HEIGHT = 1280, 2400


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = (
            "headless Chromium is needed to test the HTML audit report; install it"
            " (apt-get install -y chromium)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    command = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture
def report_page(tmp_path: Path, key_path: Path) -> Path:
    with Ledger(tmp_path / "ledger.db", key_path, create=True) as led:
        gate = Gate(led, rng=SeededBits(2), test_rng=True)
        gate.create_pool(PoolSpec("census", Rho("1/20")))
        count = DiscreteGaussianMechanism(Fraction(50), unit_changes=1)
        rows = gate.release("census:record", count, 120, requester="alice", description="rows")
        sick = gate.release("census:record", count, 17, requester="alice", description="sick")
        gate.postprocess(lambda s, r: s / r, sick, rows, description="share sick")
        for _ in range(2):
            gate.release("census:record", DiscreteLaplaceMechanism(10, 1), 3, requester="bob")
        with pytest.raises(BudgetExceeded):
            gate.release("census:record", DiscreteLaplaceMechanism(1, 1), 3, requester="eve")
    page = tmp_path / "report.html"
    report = build_report(tmp_path / "ledger.db", keys.load_public(f"{key_path}.pub"))
    page.write_text(render(report, "html"), encoding="utf-8")
    return page


def test_the_html_report_renders_in_a_browser(report_page: Path, tmp_path: Path) -> None:
    binary = chromium()
    shot = tmp_path / "report.png"
    url = report_page.resolve().as_uri()
    run_chromium(
        binary,
        tmp_path / "profile",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--screenshot={shot}",
        url,
    )
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (WIDTH, HEIGHT)
    # A blank or failed page is one or two colours; text, tables and a plot are thousands.
    from matplotlib.image import imread

    pixels = (imread(shot)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 500

    dom = run_chromium(binary, tmp_path / "profile", "--dump-dom", url).stdout
    assert "Privacy audit report" in dom and "Integrity check: OK" in dom
    assert dom.count('<img class="plot"') == 1 and 'src="data:image/png;base64,' in dom
    assert dom.count("<table") == 4  # pool summary, releases, refusals, derived statistics
    assert "eve" in dom and "share sick" in dom
