"""The empirical DP test: shipped mechanisms pass, under-noised ones are flagged."""

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from gramfed.platform.cli.main import app
from gramfed.privacy.empirical import audit_mechanism, clopper_pearson
from gramfed.privacy.mechanisms import (
    DiscreteGaussianMechanism,
    DiscreteLaplaceMechanism,
    GaussianMechanism,
    LaplaceMechanism,
    Mechanism,
    PrivacyLoss,
    calibrated,
)
from gramfed.privacy.rng import RandomBits

runner = CliRunner()
# Enough for a bound within a few percent of the truth for the Laplace family, fast enough to
# keep the whole module to a few seconds.
SAMPLES = 50_000


class Understated(Mechanism):
    """A mechanism that claims the privacy of ``claimed`` but adds the noise of ``actual``."""

    def __init__(self, claimed: Mechanism, actual: Mechanism) -> None:
        self.claimed = claimed
        self.actual = actual
        self.name = claimed.name  # type: ignore[misc]
        self.family = claimed.family  # type: ignore[misc]
        self.dim = claimed.dim

    def parameters(self) -> dict[str, Any]:
        return self.claimed.parameters()

    def privacy_map(self) -> PrivacyLoss:
        return self.claimed.privacy_map()

    def _perturb(self, answer: np.ndarray, rng: RandomBits) -> np.ndarray:
        return self.actual._perturb(answer, rng)

    def _coerce(self, answer: Any) -> np.ndarray:
        return self.claimed._coerce(answer)

    @property
    def sensitivity(self) -> float:
        return self.claimed.sensitivity


def _half_noise(name: str) -> Mechanism:
    """The calibrated mechanism's claim, with half its noise scale."""
    right = calibrated(name, 1.0, 1e-5)
    if isinstance(right, GaussianMechanism):
        wrong: Mechanism = GaussianMechanism(right.noise_sd / 2, 1.0)
    elif isinstance(right, DiscreteGaussianMechanism):
        wrong = DiscreteGaussianMechanism(right.sigma2 / 4, 1.0)
    elif isinstance(right, LaplaceMechanism):
        wrong = LaplaceMechanism(right.noise_scale / 2, 1.0)
    else:
        assert isinstance(right, DiscreteLaplaceMechanism)
        wrong = DiscreteLaplaceMechanism(right.scale / 2, right.l1_sensitivity)
    return Understated(right, wrong)


@pytest.mark.parametrize("name", ["gaussian", "discrete_gaussian", "laplace", "discrete_laplace"])
def test_every_shipped_mechanism_passes(name: str) -> None:
    result = audit_mechanism(calibrated(name, 1.0, 1e-5), samples=SAMPLES, seed=7)
    assert result.passed and result.verdict == "pass", result
    assert 0 < result.epsilon_lower_bound <= result.claimed_epsilon
    assert result.claimed_epsilon == pytest.approx(1.0, rel=1e-5)
    # The pure-DP Laplace family is tested at delta = 0, and its bound comes close to the claim.
    if name.endswith("laplace"):
        assert result.delta == 0 and result.epsilon_lower_bound > 0.9
    else:
        assert result.delta == 1e-5


@pytest.mark.parametrize(
    ("name", "samples"),
    # The Gaussian family's privacy loss is large only far in the tails, so it needs more samples.
    [
        ("gaussian", 100_000),
        ("discrete_gaussian", 100_000),
        ("laplace", 20_000),
        ("discrete_laplace", 20_000),
    ],
)
def test_half_the_noise_is_flagged(name: str, samples: int) -> None:
    result = audit_mechanism(_half_noise(name), samples=samples, seed=7)
    assert not result.passed and result.verdict == "fail", result
    assert result.epsilon_lower_bound > result.claimed_epsilon


def test_an_understated_sensitivity_is_flagged_with_the_real_answers() -> None:
    mechanism = DiscreteLaplaceMechanism(Fraction(1), Fraction(1))  # claims sensitivity 1
    honest = audit_mechanism(mechanism, samples=20_000, seed=3)
    real = audit_mechanism(mechanism, samples=20_000, seed=3, answers=(0, 2))
    assert honest.passed and not real.passed
    assert real.epsilon_lower_bound > 1.5


def test_the_test_is_deterministic_given_a_seed() -> None:
    mechanism = calibrated("laplace", 0.5)
    first = audit_mechanism(mechanism, samples=2_000, seed=11)
    assert audit_mechanism(mechanism, samples=2_000, seed=11) == first
    assert audit_mechanism(mechanism, samples=2_000, seed=12) != first


def test_clopper_pearson_brackets_the_estimate_and_handles_the_edges() -> None:
    lower, upper = clopper_pearson(np.array([0, 5, 10]), 10, 0.025)
    assert lower[0] == 0 and upper[2] == 1
    assert lower[1] < 0.5 < upper[1]
    # Known value: the exact 97.5% upper bound for 0 successes in 10 trials is 1 - 0.025^(1/10).
    assert upper[0] == pytest.approx(1 - 0.025 ** (1 / 10))


def test_bad_arguments_are_refused() -> None:
    mechanism = calibrated("discrete_laplace", 1.0)
    for kwargs in ({"confidence": 1.0}, {"delta": -0.1}, {"samples": 10}):
        with pytest.raises(ValueError):
            audit_mechanism(mechanism, **kwargs)


# --------------------------------------------------------------------------- the CLI


def test_cli_passes_a_shipped_mechanism_and_prints_json() -> None:
    args = ["audit", "test-mechanism", "discrete-laplace", "--epsilon", "1", "--samples", "20000"]
    result = runner.invoke(app, [*args, "--seed", "5", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["verdict"] == "pass" and data["samples"] == 20_000 and data["seed"] == 5
    assert data["name"] == "discrete_laplace" and data["claimed_epsilon"] == 1.0


def test_cli_prints_a_table_and_attaches_the_result(tmp_path: Path, key_path: Path) -> None:
    from gramfed.privacy.gate import Gate
    from gramfed.privacy.ledger import Ledger

    ledger = tmp_path / "ledger.db"
    with Ledger(ledger, key_path, create=True) as led:
        Gate(led)
    args = ["audit", "test-mechanism", "laplace", "--epsilon", "2", "--samples", "5000"]
    result = runner.invoke(app, [*args, "--seed", "1", "--attach", str(ledger)])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "empirical lower bound" in result.output
    lines = Path(f"{ledger}.audit-tests.jsonl").read_text().splitlines()
    assert len(lines) == 1
    recorded = json.loads(lines[0])
    assert recorded["verdict"] == "pass" and recorded["ledger_uuid"] == Ledger(ledger).uuid


def test_cli_exits_1_when_the_mechanism_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    from gramfed.platform.cli import audit

    monkeypatch.setattr(audit, "calibrated", lambda name, *a, **k: _half_noise(name))
    args = ["audit", "test-mechanism", "discrete-laplace", "--epsilon", "1", "--samples", "20000"]
    result = runner.invoke(app, [*args, "--seed", "5"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["uniform", "--epsilon", "1"], "uniform"),
        (["laplace", "--epsilon", "-1"], "epsilon"),
        (["gaussian", "--epsilon", "1", "--confidence", "2"], "confidence"),
        (["laplace", "--epsilon", "1", "--attach", "/nonexistent/ledger.db"], "not found"),
    ],
    ids=["unknown name", "negative epsilon", "bad confidence", "missing ledger"],
)
def test_cli_user_errors_are_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["audit", "test-mechanism", *args, "--samples", "200"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
