"""The audit report model: everything a ledger records, in the terms a privacy officer reads.

``build_report`` reads a ledger (no signing key needed), checks its chain against a trusted
public key when one is given, and collects per pool: what is protected (dataset, privacy unit,
neighbouring relation), the budget, what is spent and left, and how the spend grew; then every
release with its requester, mechanism, parameters and cost, every refusal, every post-processing
step with its parents, and the warnings an officer should act on. Rendering (HTML, Markdown,
plots) lives in the platform's audit_report module; this module only computes.

Amounts are given as rho (zero-concentrated DP, the currency the gate spends, which adds up
exactly over releases) and as epsilon at the pool's delta. Two epsilon figures are reported for
what a pool has spent: the RDP accountant's, valid however the releases were chosen, and the
fixed-plan figure, tighter but valid only if the sequence of releases was fixed in advance.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gramfed.privacy import keys
from gramfed.privacy.accountant import Event, event_from_json, figures, rdp_epsilon, zcdp_epsilon
from gramfed.privacy.budget import PoolSpec, fraction_text
from gramfed.privacy.empirical import attached_results
from gramfed.privacy.ledger import (
    FAILED,
    NON_DP,
    POSTPROCESS,
    REFUSAL,
    RELEASE,
    Entry,
    Ledger,
)
from gramfed.privacy.ledger import verify as verify_ledger

SPENT_WARNING = Fraction(80, 100)  # share of a budget past which the report warns

EXPLANATION = (
    "Differential privacy limits how much any released statistic can reveal about one person"
    " (one 'privacy unit'). Epsilon (ε) measures the worst-case privacy loss: smaller is safer;"
    " values around 1 are strong protection, values above 10 are weak. Delta (δ) is the small"
    " probability with which that limit may fail, and should be far below one divided by the"
    " number of people in the dataset. Each release spends part of a pool's budget; when the"
    " budget is used up, the gate refuses further releases. Rho (ρ) is the exact unit in which"
    " the gate keeps the accounts; it converts to epsilon at the pool's delta."
)


@dataclass(frozen=True)
class VerificationStatus:
    """Whether the ledger's hash chain and signatures were checked, and what was found."""

    checked: bool
    ok: bool
    entries: int = 0
    first_bad: int | None = None
    reason: str = ""
    head: str = ""
    key_fingerprint: str = ""

    @property
    def summary(self) -> str:
        if not self.checked:
            return "NOT CHECKED: no trusted public key was given"
        if self.ok:
            return f"OK: all {self.entries} entries are intact and correctly signed"
        where = f"entry {self.first_bad}" if self.first_bad is not None else "the pools table"
        return f"FAILED at {where}: {self.reason}"


@dataclass(frozen=True)
class SpendPoint:
    """A pool's running total after one charged entry: rho, and the reported (RDP) epsilon."""

    seq: int
    time: str
    rho: float
    epsilon: float


@dataclass(frozen=True)
class ReleaseRow:
    """A release (noisy, exact or failed after touching the data) and what it cost."""

    seq: int
    time: str
    kind: str
    pool: str
    requester: str
    description: str
    mechanism: str
    parameters: dict[str, Any]
    rho: float
    rho_exact: str
    epsilon: float
    delta: float
    recipient: str = ""
    rng: str = ""
    error: str = ""
    verified: bool = True


@dataclass(frozen=True)
class RefusalRow:
    """A request the gate refused: nothing was computed, released or spent."""

    seq: int
    time: str
    pool: str
    requester: str
    description: str
    mechanism: str
    reason: str
    requested_rho: float | None
    remaining_rho: float | None
    verified: bool = True


@dataclass(frozen=True)
class PostprocessRow:
    """A free statistic computed from earlier releases only, with its provenance."""

    seq: int
    time: str
    requester: str
    description: str
    function: str
    parents: list[int]
    pools: list[str]
    dp: bool
    verified: bool = True


@dataclass(frozen=True)
class EmpiricalTestRow:
    """A mechanism test attached to the ledger by ``gramfed audit test-mechanism --attach``."""

    time: str
    name: str
    mechanism: str
    claimed_epsilon: float
    delta: float
    epsilon_lower_bound: float
    confidence: float
    samples: int
    verdict: str

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EmpiricalTestRow:
        return cls(**{name: record.get(name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PoolReport:
    """One budget pool: what it protects, its budget, spend and history."""

    key: str
    dataset: str
    unit: str
    unit_description: str
    neighbouring: str
    neighbouring_description: str
    delta: float
    budget_rho: float
    budget_rho_exact: str
    budget_epsilon: float
    spent_rho: float
    spent_rho_exact: str
    remaining_rho: float
    share_spent: float
    epsilon_reported: float
    epsilon_fixed_plan: float
    releases: int
    refusals: int
    trusted_recipients: list[str]
    timeline: list[SpendPoint]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Report:
    """The whole audit report; ``to_json`` gives its machine-readable form."""

    ledger: str
    ledger_uuid: str
    generated: str
    entries: int
    verification: VerificationStatus
    pools: list[PoolReport]
    releases: list[ReleaseRow]
    refusals: list[RefusalRow]
    postprocessing: list[PostprocessRow]
    warnings: list[str]
    empirical_tests: list[EmpiricalTestRow] = field(default_factory=list)
    explanation: str = EXPLANATION

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["verification"]["summary"] = self.verification.summary
        return _finite(out)


def _finite(value: Any) -> Any:
    """JSON has no infinity: write it as the string "inf"."""
    if isinstance(value, float) and value == float("inf"):
        return "inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _verification(path: Path, public_key: Ed25519PublicKey | None) -> VerificationStatus:
    if public_key is None:
        return VerificationStatus(checked=False, ok=False)
    result = verify_ledger(path, public_key)
    return VerificationStatus(
        checked=True,
        ok=result.ok,
        entries=result.entries,
        first_bad=result.first_bad,
        reason=result.reason,
        head=result.head,
        key_fingerprint=keys.fingerprint(public_key),
    )


def _mechanism_cost(body: dict[str, Any], delta: float) -> tuple[Fraction, float, float]:
    """(rho, epsilon, delta) of one release: pure epsilon with delta 0 where the map gives one."""
    privacy = body["privacy"]
    rho = Fraction(privacy["rho"])
    if privacy.get("pure_epsilon") is not None:
        return rho, float(Fraction(privacy["pure_epsilon"])), 0.0
    return rho, zcdp_epsilon(rho, delta), delta


def build_report(
    path: str | os.PathLike[str], public_key: Ed25519PublicKey | None = None
) -> Report:
    """Read the ledger at ``path`` and build its report, verifying it if ``public_key`` is given.

    The report is built even when verification fails, so that the officer sees what the ledger
    claims; rows from the first bad entry on are marked unverified.
    """
    path = Path(path)
    verification = _verification(path, public_key)
    with Ledger(path) as ledger:
        specs = {spec.key: spec for spec in ledger.pools()}
        entries = ledger.entries()
        uuid = ledger.uuid
    first_bad = verification.first_bad if verification.checked else None

    def verified(entry: Entry) -> bool:
        if not verification.checked:
            return False
        return verification.ok or first_bad is None or entry.seq < first_bad

    releases: list[ReleaseRow] = []
    refusals: list[RefusalRow] = []
    postprocessing: list[PostprocessRow] = []
    for e in entries:
        b = e.body
        if e.kind in (RELEASE, FAILED, NON_DP):
            delta = specs[e.pool].delta if e.pool in specs else 0.0
            if e.kind == NON_DP:
                rho, eps, dlt = Fraction(0), float("inf"), 0.0
                mechanism, parameters = "exact value, no noise (not differentially private)", {}
            else:
                rho, eps, dlt = _mechanism_cost(b, delta)
                mechanism, parameters = b["mechanism"], b.get("parameters", {})
            releases.append(
                ReleaseRow(
                    seq=e.seq,
                    time=e.time,
                    kind=e.kind,
                    pool=e.pool or "",
                    requester=b.get("requester", ""),
                    description=b.get("description", ""),
                    mechanism=mechanism,
                    parameters=parameters,
                    rho=float(rho),
                    rho_exact=fraction_text(rho),
                    epsilon=eps,
                    delta=dlt,
                    recipient=b.get("recipient", ""),
                    rng=b.get("rng", ""),
                    error=b.get("error", ""),
                    verified=verified(e),
                )
            )
        elif e.kind == REFUSAL:
            privacy = b.get("privacy")
            remaining = b.get("remaining_rho")
            refusals.append(
                RefusalRow(
                    seq=e.seq,
                    time=e.time,
                    pool=e.pool or "",
                    requester=b.get("requester", ""),
                    description=b.get("description", ""),
                    mechanism=b.get("mechanism", "exact value"),
                    reason=b.get("reason", ""),
                    requested_rho=float(Fraction(privacy["rho"])) if privacy else None,
                    remaining_rho=None if remaining is None else float(Fraction(remaining)),
                    verified=verified(e),
                )
            )
        elif e.kind == POSTPROCESS:
            postprocessing.append(
                PostprocessRow(
                    seq=e.seq,
                    time=e.time,
                    requester=b.get("requester", ""),
                    description=b.get("description", ""),
                    function=b.get("function", ""),
                    parents=list(b.get("parents", [])),
                    pools=list(b.get("pools", [])),
                    dp=bool(b.get("dp", True)),
                    verified=verified(e),
                )
            )

    pools = [_pool_report(spec, entries, releases, refusals) for spec in specs.values()]
    records, skipped = attached_results(path, uuid)
    tests = [EmpiricalTestRow.from_record(r) for r in records]
    warnings = _global_warnings(verification, releases, pools, tests) + skipped
    return Report(
        ledger=str(path),
        ledger_uuid=uuid,
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        entries=len(entries),
        verification=verification,
        pools=pools,
        releases=releases,
        refusals=refusals,
        postprocessing=postprocessing,
        warnings=warnings,
        empirical_tests=tests,
    )


def _pool_report(
    spec: PoolSpec, entries: list[Entry], releases: list[ReleaseRow], refusals: list[RefusalRow]
) -> PoolReport:
    key = spec.key
    budget = spec.budget.value
    charged = [e for e in entries if e.pool == key and e.kind in (RELEASE, FAILED)]
    spent = charged[-1].spent if charged and charged[-1].spent is not None else Fraction(0)
    events = [event_from_json(ev) for e in charged for ev in e.body["privacy"]["events"]]
    fig = figures(events, spec.delta, budget_rho=budget)
    share = float(spent / budget) if budget else 0.0
    timeline: list[SpendPoint] = []
    so_far: list[Event] = []
    for e in charged:
        so_far.extend(event_from_json(ev) for ev in e.body["privacy"]["events"])
        eps, _, _ = rdp_epsilon(so_far, spec.delta)
        timeline.append(SpendPoint(e.seq, e.time, float(e.spent or 0), eps))
    notes = list(fig.warnings)
    if share > SPENT_WARNING:
        notes.append(f"{share:.0%} of this pool's budget is spent (warning level: over 80%)")
    # Only a real difference is worth a note; the two agree to rounding for pure-DP releases.
    if events and fig.epsilon_fixed_plan < 0.99 * fig.epsilon_rdp:
        notes.append(
            f"the tighter epsilon {fig.epsilon_fixed_plan:.4g} is valid only if the releases were"
            f" planned in advance; if any was chosen after seeing earlier results, use"
            f" {fig.epsilon_rdp:.4g}"
        )
    return PoolReport(
        key=key,
        dataset=spec.dataset,
        unit=spec.unit.name,
        unit_description=spec.unit.description,
        neighbouring=spec.neighbouring.value,
        neighbouring_description=spec.neighbouring.description,
        delta=spec.delta,
        budget_rho=float(budget),
        budget_rho_exact=fraction_text(budget),
        budget_epsilon=zcdp_epsilon(budget, spec.delta),
        spent_rho=float(spent),
        spent_rho_exact=fraction_text(spent),
        remaining_rho=float(budget - spent),
        share_spent=share,
        epsilon_reported=fig.epsilon_rdp,
        epsilon_fixed_plan=fig.epsilon_fixed_plan,
        releases=sum(1 for r in releases if r.pool == key),
        refusals=sum(1 for r in refusals if r.pool == key),
        trusted_recipients=list(spec.trusted_recipients),
        timeline=timeline,
        warnings=notes,
    )


def _global_warnings(
    verification: VerificationStatus,
    releases: list[ReleaseRow],
    pools: list[PoolReport],
    tests: list[EmpiricalTestRow],
) -> list[str]:
    notes: list[str] = []
    if not verification.checked:
        notes.append(
            "The ledger's integrity was not checked; give the owner's public key to check it."
        )
    elif not verification.ok:
        notes.append(
            f"The ledger FAILED verification ({verification.summary}); entries from that point"
            " on may have been altered and must not be trusted."
        )
    exact = [r for r in releases if r.kind == NON_DP]
    if exact:
        recipients = ", ".join(sorted({r.recipient for r in exact}))
        notes.append(
            f"{len(exact)} exact (non-private) release(s) went to trusted recipients: {recipients}."
        )
    failed = [r for r in releases if r.kind == FAILED]
    if failed:
        notes.append(
            f"{len(failed)} release(s) failed after touching the data and were charged in full."
        )
    if any(r.rng.startswith("seeded") for r in releases):
        notes.append(
            "Some releases used a seeded, non-cryptographic random source meant for tests only."
        )
    flagged = sorted({t.name for t in tests if t.verdict != "pass"})
    if flagged:
        notes.append(
            "An empirical test found more privacy loss than claimed for: "
            f"{', '.join(flagged)}. Stop using these mechanisms until the cause is found."
        )
    notes.extend(f"Pool {p.key}: {w}" for p in pools for w in p.warnings)
    return notes
