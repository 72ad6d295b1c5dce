"""The audit report: model, JSON / Markdown / HTML renderings, tampering, and the CLI."""

import base64
import json
import re
import sqlite3
from fractions import Fraction
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gramfed.platform.audit_report import render, spend_plot_png
from gramfed.platform.cli.main import app
from gramfed.privacy import keys
from gramfed.privacy.budget import ApproxDP, PoolSpec, Rho
from gramfed.privacy.errors import BudgetExceeded
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.privacy.mechanisms import (
    DiscreteGaussianMechanism,
    DiscreteLaplaceMechanism,
    GaussianMechanism,
)
from gramfed.privacy.report import Report, build_report
from gramfed.privacy.rng import SeededBits

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"


def make_ledger(path: Path, key: Path) -> Path:
    """Two pools; releases, an exact release, a post-processing step and a refusal.

    Entries: 1-2 pools, 3-4 census releases, 5 post-processing of 3 and 4, 6 exact release,
    7-9 survey releases (9 takes the survey pool past 80%), 10 refusal.
    """
    with Ledger(path, key, create=True) as led:
        gate = Gate(led, rng=SeededBits(1), test_rng=True)
        gate.create_pool(
            PoolSpec.of("census", ApproxDP(2.0, 1e-6), trusted_recipients=("coordinator",))
        )
        gate.create_pool(PoolSpec("survey", Rho("1/10")))
        count = gate.release(
            "census:record",
            DiscreteGaussianMechanism(Fraction(50), unit_changes=1),
            42,
            requester="alice",
            description="row count",
        )
        total = gate.release(
            "census:record",
            GaussianMechanism.for_rho(Fraction(1, 20), l2_sensitivity=1.0),
            3.5,
            requester="bob",
            description="total income",
        )
        gate.postprocess(
            lambda c, t: t / c, count, total, description="income per row", requester="alice"
        )
        gate.release_exact("census:record", 7, requester="admm", recipient="coordinator")
        for answer in range(3):
            gate.release("survey:record", DiscreteLaplaceMechanism(4, 1), answer, requester="carol")
        with pytest.raises(BudgetExceeded):
            gate.release(
                "survey:record",
                DiscreteLaplaceMechanism(2, 1),
                1,
                requester="mallory",
                description="one more",
            )
    return path


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "ledger.key"
    keys.generate(path)
    return path


@pytest.fixture(scope="module")
def ledger_file(tmp_path_factory: pytest.TempPathFactory, keypair: Path) -> Path:
    return make_ledger(tmp_path_factory.mktemp("ledger") / "ledger.db", keypair)


@pytest.fixture(scope="module")
def report(ledger_file: Path, keypair: Path) -> Report:
    return build_report(ledger_file, keys.load_public(f"{keypair}.pub"))


def tamper(ledger: Path, seq: int, old: str, new: str) -> None:
    """Edit one entry's record in place, as a forger with write access to the file would."""
    conn = sqlite3.connect(ledger, isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET record = replace(record, ?, ?) WHERE seq = ?", (old, new, seq))
    conn.close()


def test_the_model_has_pools_releases_refusals_and_provenance(report: Report) -> None:
    assert report.verification.checked and report.verification.ok
    assert report.entries == 10 and "OK" in report.verification.summary
    census, survey = report.pools
    assert (census.key, census.dataset, census.unit) == ("census:record", "census", "record")
    assert census.neighbouring == "add/remove one record" and census.delta == 1e-6
    assert census.budget_epsilon == pytest.approx(2.0, rel=1e-6)
    assert census.spent_rho == pytest.approx(0.06) and census.trusted_recipients == ["coordinator"]
    assert [p.seq for p in census.timeline] == [3, 4]
    assert survey.spent_rho_exact == "3/32" and survey.share_spent == pytest.approx(0.9375)
    assert survey.epsilon_reported == pytest.approx(0.75, rel=1e-4)  # 3 x pure epsilon 1/4
    assert [p.epsilon for p in survey.timeline] == pytest.approx([0.25, 0.5, 0.75], rel=1e-4)
    assert (survey.releases, survey.refusals) == (3, 1)

    kinds = [(r.seq, r.kind, r.requester) for r in report.releases]
    assert kinds[:3] == [(3, "release", "alice"), (4, "release", "bob"), (6, "non_dp", "admm")]
    first = report.releases[0]
    assert first.mechanism == "discrete_gaussian" and first.parameters["sigma2"] == "50"
    assert first.rho_exact == "1/100" and first.delta == 1e-6
    laplace = report.releases[-1]
    assert (laplace.epsilon, laplace.delta) == (pytest.approx(0.25), 0.0)

    (refusal,) = report.refusals
    assert (refusal.seq, refusal.requester, refusal.reason) == (10, "mallory", "budget exceeded")
    assert refusal.requested_rho == pytest.approx(0.125)
    (derived,) = report.postprocessing
    assert derived.parents == [3, 4] and derived.pools == ["census:record"] and derived.dp

    text = " ".join(report.warnings)
    assert "94% of this pool's budget is spent" in text
    assert "exact (non-private) release" in text and "coordinator" in text
    assert "seeded" in text


def test_json_rendering_round_trips(report: Report) -> None:
    data = json.loads(render(report, "json"))
    assert data["verification"]["ok"] and data["verification"]["summary"].startswith("OK")
    assert [p["key"] for p in data["pools"]] == ["census:record", "survey:record"]
    assert len(data["releases"]) == 6 and data["refusals"][0]["requester"] == "mallory"
    assert data["postprocessing"][0]["parents"] == [3, 4]
    # The exact release has unbounded epsilon, which JSON cannot hold as a number.
    assert data["releases"][2]["epsilon"] == "inf"


def test_markdown_rendering(report: Report) -> None:
    text = render(report, "markdown")
    assert text.startswith("# Privacy audit report")
    assert "**Integrity check: OK" in text
    assert "### Budget pool census:record" in text and "### Budget pool survey:record" in text
    assert "| 10 |" in text and "mallory" in text and "budget exceeded" in text
    assert "| 5 |" in text and "#3, #4" in text and "&lt;lambda>" in text
    assert "EXACT, not private" in text and "Epsilon (ε)" in text


def test_html_rendering_is_self_contained(report: Report) -> None:
    page = render(report, "html")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert 'class="banner ok"' in page and "Integrity check: OK" in page
    assert "What the numbers mean" in page and "Refused requests (1)" in page
    # Nothing is fetched from elsewhere: no external stylesheets, scripts or images.
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)
    images = re.findall(
        r'<img class="plot" alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page
    )
    assert [alt for alt, _ in images] == [
        "Privacy spent over time for pool census:record",
        "Privacy spent over time for pool survey:record",
    ]
    assert all(base64.b64decode(data).startswith(PNG) for _, data in images)
    assert page.count("<tr>") >= 6 + 1 + 1 and "mallory" in page and "#3, #4" in page
    assert "&lt;lambda&gt;" in page  # escaped, never raw markup


def test_spend_plot_is_a_png_even_for_an_empty_pool(report: Report) -> None:
    from dataclasses import replace

    empty = replace(report.pools[0], timeline=[])
    assert spend_plot_png(empty).startswith(PNG)


def test_tampering_shows_as_failed_verification_naming_the_entry(
    tmp_path: Path, keypair: Path
) -> None:
    ledger = make_ledger(tmp_path / "ledger.db", keypair)
    tamper(ledger, 7, "carol", "erin")
    result = build_report(ledger, keys.load_public(f"{keypair}.pub"))
    assert not result.verification.ok and result.verification.first_bad == 7
    assert "FAILED at entry 7" in result.verification.summary
    assert [r.verified for r in result.releases] == [True, True, True, False, False, False]
    assert "FAILED verification" in result.warnings[0]
    page = render(result, "html")
    assert 'class="banner bad"' in page and "FAILED at entry 7" in page
    assert '<tr class="unverified">' in page
    assert "FAILED at entry 7" in render(result, "markdown")


def test_without_a_key_the_report_says_it_is_unchecked(ledger_file: Path) -> None:
    result = build_report(ledger_file)
    assert not result.verification.checked and "NOT CHECKED" in result.verification.summary
    assert 'class="banner unknown"' in render(result, "html")


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    ("name", "fmt", "marker"),
    [
        ("report.html", None, "<!DOCTYPE html>"),
        ("report.md", None, "# Privacy audit report"),
        ("report.json", None, '"ledger_uuid"'),
        ("report.txt", "markdown", "# Privacy audit report"),
    ],
)
def test_cli_writes_each_format(
    tmp_path: Path, ledger_file: Path, keypair: Path, name: str, fmt: str | None, marker: str
) -> None:
    out = tmp_path / name
    args = ["audit", "report", str(ledger_file), "--out", str(out), "-k", f"{keypair}.pub"]
    result = runner.invoke(app, args + (["--format", fmt] if fmt else []))
    assert result.exit_code == 0, result.output
    assert marker in out.read_text(encoding="utf-8")


def test_cli_exits_1_on_a_tampered_ledger_after_writing_the_report(
    tmp_path: Path, keypair: Path
) -> None:
    ledger = make_ledger(tmp_path / "ledger.db", keypair)
    tamper(ledger, 3, "alice", "eve")
    out = tmp_path / "report.html"
    args = ["audit", "report", str(ledger), "--out", str(out), "-k", f"{keypair}.pub"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "entry 3" in result.output
    assert "FAILED at entry 3" in out.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "pdf"], "pdf"),
        (["-k", "/nonexistent.pub"], "not found"),
    ],
)
def test_cli_user_errors_are_one_line(
    tmp_path: Path, ledger_file: Path, extra: list[str], message: str
) -> None:
    args = ["audit", "report", str(ledger_file), "--out", str(tmp_path / "r.html"), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_attached_mechanism_tests_appear_in_the_report(tmp_path: Path, keypair: Path) -> None:
    ledger = make_ledger(tmp_path / "ledger.db", keypair)
    test = ["audit", "test-mechanism", "laplace", "--epsilon", "1", "--samples", "2000"]
    result = runner.invoke(app, [*test, "--seed", "3", "--attach", str(ledger)])
    assert result.exit_code == 0, result.output
    # An unsigned side file: a foreign or garbled line is skipped and named, never trusted.
    with Path(f"{ledger}.audit-tests.jsonl").open("a") as side:
        side.write('{"verdict": "pass", "ledger_uuid": "someone-else"}\nnot json\n')

    built = build_report(ledger, keys.load_public(f"{keypair}.pub"))
    assert [t.name for t in built.empirical_tests] == ["laplace"]
    assert built.empirical_tests[0].claimed_epsilon == 1.0
    assert any("line 2 belongs to another ledger" in w for w in built.warnings)
    assert any("line 3 is not an audit-test record" in w for w in built.warnings)
    page = render(built, "html")
    assert "Empirical mechanism tests (1)" in page and "PASS" in page
    assert "Empirical mechanism tests (1)" in render(built, "markdown")


def test_a_failed_mechanism_test_is_a_warning(tmp_path: Path, keypair: Path) -> None:
    from dataclasses import replace

    from gramfed.privacy.empirical import attach_result, audit_mechanism

    ledger = make_ledger(tmp_path / "ledger.db", keypair)
    passed = audit_mechanism(DiscreteLaplaceMechanism(1, 1), samples=1000, seed=1)
    attach_result(ledger, Ledger(ledger).uuid, replace(passed, epsilon_lower_bound=5.0))
    built = build_report(ledger, keys.load_public(f"{keypair}.pub"))
    assert built.empirical_tests[0].verdict == "fail"
    assert any("more privacy loss than claimed" in w for w in built.warnings)
