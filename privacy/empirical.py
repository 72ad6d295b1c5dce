"""Empirical privacy audit: a statistical lower bound on a mechanism's epsilon from its outputs.

The test treats the mechanism as a black box, the way an outside auditor would:

1. Take a worst-case pair of neighbouring answers ``a, b`` (``Mechanism.neighbouring_answers``)
   and draw ``samples`` independent releases of each with ``Mechanism.sample``.
2. Split both sample sets. On the *selection* part, look for the output event that best tells
   the two apart: one-sided sets ``{y <= t}`` and ``{y >= t}`` at many thresholds ``t``. For the
   additive noise shipped here the likelihood ratio is monotone in ``y``, so such sets include
   the most powerful attacks.
3. On the held-out *test* part, estimate P = Pr[M(a) in S] and Q = Pr[M(b) in S] for the chosen
   set S (or the reverse pair, for ``{y >= t}``) and bound them with exact Clopper-Pearson
   intervals: a lower bound on P and an upper bound on Q, each at level (1 - confidence) / 2,
   so both hold together with probability at least ``confidence``.
4. (epsilon, delta)-DP demands P <= e^epsilon Q + delta, so whenever both bounds hold,
   epsilon >= log((P_lo - delta) / Q_hi). That is the empirical lower bound.

Because the set is chosen on samples that the bound never sees, the choice cannot bias the
bound. A lower bound above the epsilon the mechanism's privacy map claims is statistical
evidence (at the stated confidence) that the claim is false: a bug in the noise, the
calibration or the sensitivity. The converse does not hold: passing does not prove privacy, it
only fails to refute it.

Pure-DP mechanisms (the Laplace family) are tested against delta = 0, since that is their
claim; the Gaussian family against the stated delta.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.special import betaincinv

from gramfed.privacy.mechanisms import Mechanism, claimed_epsilon
from gramfed.privacy.rng import RandomBits, SeededBits, system_bits

DEFAULT_SAMPLES = 200_000
DEFAULT_CONFIDENCE = 0.99  # a correct mechanism whose bound is tight is flagged at most 1% of runs
SELECTION_FRACTION = 0.2  # enough to locate a good threshold; the rest sharpens the bound
_THRESHOLDS = 400


@dataclass(frozen=True)
class AuditResult:
    """The outcome of ``audit_mechanism``; ``passed`` is False when the mechanism is flagged."""

    mechanism: str
    name: str
    claimed_epsilon: float
    delta: float
    epsilon_lower_bound: float
    confidence: float
    samples: int
    seed: int | None
    neighbouring_answers: tuple[float, float]
    attack: str
    p_estimate: float
    p_lower: float
    q_estimate: float
    q_upper: float

    @property
    def passed(self) -> bool:
        return self.epsilon_lower_bound <= self.claimed_epsilon

    @property
    def verdict(self) -> Literal["pass", "fail"]:
        return "pass" if self.passed else "fail"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["neighbouring_answers"] = list(self.neighbouring_answers)
        out["verdict"] = self.verdict
        return out


def clopper_pearson(successes: Any, trials: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided exact binomial bounds at level ``alpha`` each: (lower, upper), vectorised.

    The lower bound is the alpha quantile of Beta(k, n - k + 1), the upper the 1 - alpha
    quantile of Beta(k + 1, n - k); at k = 0 (resp. k = n) the bound is 0 (resp. 1) exactly.
    """
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.where(k > 0, betaincinv(np.maximum(k, 1), trials - k + 1, alpha), 0.0)
        upper = np.where(k < trials, betaincinv(k + 1, np.maximum(trials - k, 1), 1 - alpha), 1.0)
    return lower, upper


def _epsilon_bound(p_lower: Any, q_upper: Any, delta: float) -> np.ndarray:
    """log((P_lo - delta) / Q_hi), or 0 where the bounds say nothing."""
    excess = np.asarray(p_lower, dtype=np.float64) - delta
    q = np.asarray(q_upper, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = np.log(excess / q)
    return np.where((excess > 0) & (q > 0), np.maximum(bound, 0.0), 0.0)


def _counts(sorted_x: np.ndarray, thresholds: np.ndarray, side: str) -> np.ndarray:
    """How many samples lie in {y <= t} (side "le") or {y >= t} (side "ge") for each t."""
    if side == "le":
        return np.searchsorted(sorted_x, thresholds, side="right")
    return sorted_x.size - np.searchsorted(sorted_x, thresholds, side="left")


def _select_attack(xa: np.ndarray, xb: np.ndarray, delta: float, alpha: float) -> tuple[str, float]:
    """The one-sided set with the largest epsilon bound on the selection samples.

    Ranking by the bound rather than by the point estimate of the ratio penalises rare events,
    whose estimates are noisy: the largest estimated ratio is usually luck (the winner's curse).
    """
    pooled = np.concatenate([xa, xb])
    thresholds = np.unique(np.quantile(pooled, np.linspace(0, 1, _THRESHOLDS)))
    sa, sb = np.sort(xa), np.sort(xb)
    best = (-1.0, "le", float(thresholds[0]))
    # {y <= t} tests M(a) against M(b) and {y >= t} the reverse, so both directions of the DP
    # inequality are tried whichever answer is larger.
    for side, favoured, other in (("le", sa, sb), ("ge", sb, sa)):
        p_lo, _ = clopper_pearson(_counts(favoured, thresholds, side), favoured.size, alpha)
        _, q_hi = clopper_pearson(_counts(other, thresholds, side), other.size, alpha)
        bounds = _epsilon_bound(p_lo, q_hi, delta)
        i = int(np.argmax(bounds))
        if bounds[i] > best[0]:
            best = (float(bounds[i]), side, float(thresholds[i]))
    return best[1], best[2]


def audit_mechanism(
    mechanism: Mechanism,
    *,
    delta: float = 1e-5,
    samples: int = DEFAULT_SAMPLES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int | None = None,
    rng: RandomBits | None = None,
    answers: tuple[float, float] | None = None,
) -> AuditResult:
    """Run the empirical test on ``mechanism`` with ``samples`` releases per neighbouring answer.

    ``answers`` are the query's answers on two neighbouring datasets; by default the
    mechanism's own worst case for its stated sensitivity. Giving the answers of the real query
    is how an understated sensitivity shows up. ``seed`` makes the run reproducible
    (``SeededBits``); otherwise ``rng``, or the system's cryptographic source, supplies the noise.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must lie in [0, 1), got {delta!r}")
    if samples < 100:
        raise ValueError(f"the test needs at least 100 samples per input, got {samples}")
    if seed is not None:
        rng = SeededBits(seed)
    source = rng or system_bits()
    pure = mechanism.privacy_map().pure_epsilon is not None
    test_delta = 0.0 if pure else delta
    claimed = claimed_epsilon(mechanism, delta)

    a, b = answers if answers is not None else mechanism.neighbouring_answers()
    xa = np.asarray(mechanism.sample(a, samples, source), dtype=np.float64)
    xb = np.asarray(mechanism.sample(b, samples, source), dtype=np.float64)
    cut = max(1, int(samples * SELECTION_FRACTION))
    alpha = (1 - confidence) / 2
    side, threshold = _select_attack(xa[:cut], xb[:cut], test_delta, alpha)

    ta, tb = xa[cut:], xb[cut:]
    n = ta.size
    favoured, other = (ta, tb) if side == "le" else (tb, ta)
    t = np.array([threshold])
    k_p = int(_counts(np.sort(favoured), t, side)[0])
    k_q = int(_counts(np.sort(other), t, side)[0])
    p_lo, _ = clopper_pearson(k_p, n, alpha)
    _, q_hi = clopper_pearson(k_q, n, alpha)
    bound = float(_epsilon_bound(p_lo, q_hi, test_delta))
    event = f"output {'<=' if side == 'le' else '>='} {threshold:.6g}"
    first, second = (a, b) if side == "le" else (b, a)
    return AuditResult(
        mechanism=mechanism.describe(),
        name=mechanism.name,
        claimed_epsilon=claimed,
        delta=test_delta,
        epsilon_lower_bound=bound,
        confidence=confidence,
        samples=samples,
        seed=seed,
        neighbouring_answers=(float(a), float(b)),
        attack=f"{event}: P = Pr[M({first:g}) in S], Q = Pr[M({second:g}) in S]",
        p_estimate=k_p / n,
        p_lower=float(p_lo),
        q_estimate=k_q / n,
        q_upper=float(q_hi),
    )


def attached_results_path(ledger: str | os.PathLike[str]) -> Path:
    """Where the results attached to ``ledger`` are kept: ``LEDGER.audit-tests.jsonl``.

    The signed ledger only holds budget decisions (its entry kinds are fixed and its verifier
    rejects others), so test results live beside it, tied to it by the ledger's uuid.
    """
    return Path(f"{os.fspath(ledger)}.audit-tests.jsonl")


def attach_result(ledger: str | os.PathLike[str], ledger_uuid: str, result: AuditResult) -> None:
    """Append ``result``, stamped with the time and the ledger's uuid, to its attachments."""
    record = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "ledger_uuid": ledger_uuid,
        **result.to_json(),
    }
    with attached_results_path(ledger).open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, sort_keys=True) + "\n")


def attached_results(
    ledger: str | os.PathLike[str], ledger_uuid: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """The results attached to ``ledger``, and a note for every line that had to be skipped.

    A line that is not a JSON object, or that names another ledger, is skipped and reported
    rather than trusted: the attachment file is not signed.
    """
    path = attached_results_path(ledger)
    if not path.exists():
        return [], []
    results: list[dict[str, Any]] = []
    skipped: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or "verdict" not in record:
            skipped.append(f"{path.name} line {number} is not an audit-test record; skipped.")
        elif record.get("ledger_uuid") != ledger_uuid:
            skipped.append(f"{path.name} line {number} belongs to another ledger; skipped.")
        else:
            results.append(record)
    return results, skipped
