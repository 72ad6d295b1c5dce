"""The privacy gate: the only way a statistic computed from private data becomes a ``Release``.

A request names a budget pool, a mechanism and the value (or a function computing it). The gate

1. prices the request from public parameters only: the mechanism's privacy map gives an exact
   rho (zCDP); nothing about the data enters the price, so neither does the decision;
2. opens a ledger write transaction (SQLite's write lock, shared by all processes), reads the
   pool's committed spend and checks ``spent + rho <= budget`` *before* the data is touched;
3. over budget: appends a signed refusal entry, commits it, and raises ``BudgetExceeded`` with
   the requested, remaining and missing amounts (rho, and epsilon at the pool's delta).
   Nothing was computed, released or spent;
4. otherwise, still inside the transaction (this is the reservation: the new running total
   exists only there), calls the value function, applies the mechanism's noise, appends the
   release entry with the new running total, and commits;
5. only after the commit has returned, creates the ``Release`` and hands it back.

Why the noise is drawn inside the transaction: the value may leave only once its spend is
durable, and a spend must never become durable for a value that could still fail to exist. With
the draw between the check and the commit, a crash anywhere before the commit rolls back both
(nothing spent, nothing released); a crash after it leaves a charged entry whose value never
left the dying process (safe). A separate reservation row would instead need reclaiming after
crashes. See ``gramfed.privacy.ledger`` for durability across process kills and power cuts.

If the value function or the mechanism raises after the check (a data-dependent failure, e.g.
a NaN in the answer), the request's full cost is charged in a ``failed`` entry and the error is
re-raised: the data was touched, and a free retry would let failures probe it.

Post-processing (``postprocess``) of earlier releases costs nothing and is recorded with its
parents' ledger ids. Exact, non-DP releases (``release_exact``) happen only towards recipients
the pool's spec lists as trusted, are recorded as such, and mark everything derived from them.
"""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction
from typing import Any

from gramfed.privacy.accountant import Figures, event_from_json, figures, zcdp_epsilon
from gramfed.privacy.budget import PoolSpec, fraction_text
from gramfed.privacy.errors import BudgetExceeded, MechanismError, NonDPReleaseRefused
from gramfed.privacy.ledger import (
    FAILED,
    NON_DP,
    POSTPROCESS,
    REFUSAL,
    RELEASE,
    Ledger,
)
from gramfed.privacy.mechanisms import Mechanism, PrivacyLoss
from gramfed.privacy.release import _CAPABILITY, Release, _issue, require_release, value_digest
from gramfed.privacy.rng import RandomBits, system_bits

_FREE = PrivacyLoss(Fraction(0), ())


class Gate:
    """Prices, checks, runs and records every release against a ledger's budget pools.

    ``rng`` defaults to the operating system's cryptographic generator. A non-cryptographic
    source (``SeededBits``) is refused unless ``test_rng=True`` says the run is a test; such
    releases are marked in the ledger.
    """

    def __init__(
        self, ledger: Ledger, *, rng: RandomBits | None = None, test_rng: bool = False
    ) -> None:
        source = rng or system_bits()
        if not source.cryptographic and not test_rng:
            raise ValueError(
                "the gate needs a cryptographic random source; a seeded one is for tests only"
                " (pass test_rng=True)"
            )
        self.ledger = ledger
        self._rng = source
        self._rng_name = "system" if source.cryptographic else "seeded (test only)"

    # ------------------------------------------------------------------ pools and prices

    def create_pool(self, spec: PoolSpec) -> PoolSpec:
        """Create a budget pool (idempotent for an identical spec)."""
        return self.ledger.create_pool(spec)

    def remaining(self, pool: str | PoolSpec) -> Fraction:
        """Rho left in a pool (committed spends only)."""
        return self.ledger.remaining(self._spec(pool).key)

    def price(self, mechanism: Mechanism, pool: str | PoolSpec | None = None) -> PrivacyLoss:
        """The privacy loss of one use of ``mechanism``, from its public parameters only."""
        if not isinstance(mechanism, Mechanism):
            raise TypeError(f"not a privacy mechanism: {mechanism!r}")
        if pool is not None:
            spec = self._spec(pool)
            if mechanism.neighbouring is not spec.neighbouring:
                raise MechanismError(
                    f"{mechanism.name} is calibrated for '{mechanism.neighbouring.value}'"
                    f" neighbours but pool {spec.key!r} uses '{spec.neighbouring.value}'"
                )
        loss = mechanism.privacy_map()
        if loss.rho <= 0:
            raise MechanismError(f"{mechanism.describe()} has a non-positive privacy cost")
        return loss

    def figures(self, pool: str | PoolSpec) -> Figures:
        """Accountant figures for everything a pool has spent, at the pool's delta."""
        spec = self._spec(pool)
        events = [
            event_from_json(e)
            for entry in self.ledger.entries(pool=spec.key, kinds=(RELEASE, FAILED))
            for e in entry.body["privacy"]["events"]
        ]
        return figures(events, spec.delta, budget_rho=spec.budget.value)

    # ------------------------------------------------------------------ releases

    def release(
        self,
        pool: str | PoolSpec,
        mechanism: Mechanism,
        value: Any | Callable[[], Any],
        *,
        requester: str,
        description: str = "",
    ) -> Release:
        """Release ``value`` (or ``value()``) through ``mechanism``, charged to ``pool``.

        Raises ``BudgetExceeded`` (logged, nothing spent) when the pool cannot afford the
        mechanism's price. A callable is only called once the budget check has passed.
        """
        spec = self._spec(pool)
        loss = self.price(mechanism, spec)
        request = {
            "requester": requester,
            "description": description,
            "mechanism": mechanism.name,
            "parameters": mechanism.parameters(),
            "privacy": loss.to_json(),
            "derivation": loss.derivation,
            "unit": spec.unit.name,
            "neighbouring": spec.neighbouring.value,
        }
        refusal: BudgetExceeded | None = None
        failure: Exception | None = None
        with self.ledger.write() as w:
            spent = w.spent(spec.key)
            remaining = spec.budget.value - spent
            if loss.rho > remaining:
                entry = w.append(
                    REFUSAL,
                    pool=spec.key,
                    body={
                        **request,
                        "reason": "budget exceeded",
                        "remaining_rho": fraction_text(remaining),
                    },
                )
                refusal = _budget_exceeded(spec, loss.rho, spent, entry.seq)
            else:
                try:
                    answer = value() if callable(value) else value
                    noisy = mechanism.apply(answer, self._rng)
                except Exception as exc:
                    w.append(
                        FAILED,
                        pool=spec.key,
                        rho=loss.rho,
                        body={**request, "error": type(exc).__name__},
                    )
                    failure = exc
                else:
                    body = {**request, "rng": self._rng_name, "value_sha256": value_digest(noisy)}
                    entry = w.append(RELEASE, pool=spec.key, rho=loss.rho, body=body)
        if refusal is not None:
            raise refusal
        if failure is not None:
            raise failure
        return _issue(
            _CAPABILITY,
            value=noisy,
            ledger_id=entry.seq,
            ledger_uuid=self.ledger.uuid,
            entry_hash=entry.hash,
            kind=RELEASE,
            dp=True,
            pools=(spec.key,),
            unit=spec.unit,
            neighbouring=spec.neighbouring,
            cost=loss,
            mechanism=mechanism.describe(),
            parents=(),
            requester=requester,
            description=description,
        )

    def release_exact(
        self,
        pool: str | PoolSpec,
        value: Any | Callable[[], Any],
        *,
        requester: str,
        recipient: str,
        description: str = "",
    ) -> Release:
        """An exact, non-DP release to ``recipient``, allowed only if the pool trusts it.

        Refusals raise ``NonDPReleaseRefused`` and are logged. Allowed ones are recorded as
        ``non_dp`` entries and the release (and anything derived from it) has ``dp=False``.
        """
        spec = self._spec(pool)
        request = {
            "requester": requester,
            "recipient": recipient,
            "description": description,
            "unit": spec.unit.name,
            "neighbouring": spec.neighbouring.value,
        }
        refused = recipient not in spec.trusted_recipients
        with self.ledger.write() as w:
            if refused:
                w.append(
                    REFUSAL,
                    pool=spec.key,
                    body={**request, "reason": "exact release to an untrusted recipient"},
                )
            else:
                answer = value() if callable(value) else value
                entry = w.append(
                    NON_DP, pool=spec.key, body={**request, "value_sha256": value_digest(answer)}
                )
        if refused:
            trusted = ", ".join(spec.trusted_recipients) or "none"
            raise NonDPReleaseRefused(
                f"pool {spec.key!r} does not allow exact (non-DP) releases to {recipient!r};"
                f" trusted recipients: {trusted}"
            )
        return _issue(
            _CAPABILITY,
            value=answer,
            ledger_id=entry.seq,
            ledger_uuid=self.ledger.uuid,
            entry_hash=entry.hash,
            kind=NON_DP,
            dp=False,
            pools=(spec.key,),
            unit=spec.unit,
            neighbouring=spec.neighbouring,
            cost=_FREE,
            mechanism=None,
            parents=(),
            requester=requester,
            description=description,
        )

    def postprocess(
        self,
        fn: Callable[..., Any],
        *parents: Release,
        description: str,
        requester: str = "",
    ) -> Release:
        """``fn(*values of parents)`` as a new release: free, recorded with its parents.

        ``fn`` must depend on the parents' values only; that is what makes it free (DP is closed
        under post-processing). The gate cannot see what a closure captures, so this is the
        caller's promise, and the ledger entry names ``fn`` and the description to audit it by.
        """
        if not parents:
            raise ValueError("post-processing needs at least one parent release")
        for parent in parents:
            require_release(parent)
            if parent.ledger_uuid != self.ledger.uuid:
                raise ValueError(
                    f"release #{parent.ledger_id} comes from another ledger; post-process it"
                    " through the gate that issued it"
                )
        units = {(p.unit, p.neighbouring) for p in parents}
        if len(units) > 1:
            raise ValueError(
                "the parents are protected for different privacy units or neighbouring relations;"
                " post-process them separately"
            )
        unit, neighbouring = units.pop()
        value = fn(*(p.value for p in parents))
        dp = all(p.dp for p in parents)
        pools = tuple(dict.fromkeys(pool for p in parents for pool in p.pools))
        with self.ledger.write() as w:
            entry = w.append(
                POSTPROCESS,
                body={
                    "requester": requester,
                    "description": description,
                    "function": getattr(fn, "__qualname__", type(fn).__name__),
                    "parents": [p.ledger_id for p in parents],
                    "parent_hashes": [p.entry_hash for p in parents],
                    "pools": list(pools),
                    "dp": dp,
                    "value_sha256": value_digest(value),
                },
            )
        return _issue(
            _CAPABILITY,
            value=value,
            ledger_id=entry.seq,
            ledger_uuid=self.ledger.uuid,
            entry_hash=entry.hash,
            kind=POSTPROCESS,
            dp=dp,
            pools=pools,
            unit=unit,
            neighbouring=neighbouring,
            cost=_FREE,
            mechanism=None,
            parents=tuple(p.ledger_id for p in parents),
            requester=requester,
            description=description,
        )

    def _spec(self, pool: str | PoolSpec) -> PoolSpec:
        if isinstance(pool, PoolSpec):
            stored = self.ledger.pool(pool.key)
            if stored != pool:
                raise ValueError(f"pool {pool.key!r} exists in the ledger with another spec")
            return stored
        return self.ledger.pool(pool)


def _budget_exceeded(
    spec: PoolSpec, requested: Fraction, spent: Fraction, ledger_id: int
) -> BudgetExceeded:
    budget = spec.budget.value
    delta = spec.delta
    return BudgetExceeded(
        spec.key,
        requested,
        budget - spent,
        delta=delta,
        requested_epsilon=zcdp_epsilon(requested, delta),
        remaining_epsilon=zcdp_epsilon(budget - spent, delta),
        shortfall_epsilon=zcdp_epsilon(spent + requested, delta) - zcdp_epsilon(budget, delta),
        ledger_id=ledger_id,
    )
