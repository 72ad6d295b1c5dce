"""Exceptions of the privacy layer.

Every refusal is an explicit exception carrying the figures behind it. Errors a user can cause
from the command line (a missing ledger, an unreadable key, an unknown mechanism) subclass
``ValueError`` so that command-line front ends can turn them into one-line messages.
"""

from __future__ import annotations

import math
from fractions import Fraction


class PrivacyError(Exception):
    """Base class of every error raised by ``gramfed.privacy``."""


class BudgetExceeded(PrivacyError):
    """A request would spend more zCDP budget than the pool has left.

    Raised before any data is touched; nothing is released and nothing is spent. The refusal
    itself is written to the ledger (``ledger_id``).

    Figures, all computed from public parameters and the ledger:

    * ``requested``, ``remaining``, ``shortfall = requested - remaining``: exact rho (zCDP).
    * ``requested_epsilon``, ``remaining_epsilon``: those rho amounts converted to epsilon at the
      pool's ``delta`` (the conversion is not additive, so they do not subtract).
    * ``shortfall_epsilon``: epsilon at ``delta`` of (spent + requested) minus epsilon of the
      budget, i.e. how far past its (epsilon, delta) budget the pool would have gone.
    """

    def __init__(
        self,
        pool: str,
        requested: Fraction,
        remaining: Fraction,
        *,
        delta: float,
        requested_epsilon: float,
        remaining_epsilon: float,
        shortfall_epsilon: float,
        ledger_id: int | None = None,
    ) -> None:
        self.pool = pool
        self.requested = Fraction(requested)
        self.remaining = Fraction(remaining)
        self.shortfall = self.requested - self.remaining
        self.delta = delta
        self.requested_epsilon = requested_epsilon
        self.remaining_epsilon = remaining_epsilon
        self.shortfall_epsilon = shortfall_epsilon
        self.ledger_id = ledger_id
        super().__init__(
            f"privacy budget exceeded for pool {pool!r}: requested rho={float(self.requested):.6g}"
            f" (epsilon={_eps(requested_epsilon)}), remaining rho={float(self.remaining):.6g}"
            f" (epsilon={_eps(remaining_epsilon)}) at delta={delta:.3g}; short by"
            f" rho={float(self.shortfall):.6g} (epsilon={_eps(shortfall_epsilon)});"
            " nothing was released or spent"
        )


def _eps(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "inf"


class NonDPReleaseRefused(PrivacyError):
    """An exact (non-DP) release was asked for a recipient the pool's policy does not trust."""


class ForgedRelease(PrivacyError, TypeError):
    """Something that is not a genuine, gate-issued ``Release`` reached a release-only path."""


class LedgerError(PrivacyError, ValueError):
    """The ledger file is missing, not a gramfed ledger, or cannot be written."""


class KeyFileError(PrivacyError, ValueError):
    """A signing or verification key file is missing, malformed or too widely readable."""


class MechanismError(PrivacyError, ValueError):
    """A mechanism was built with invalid public parameters or given malformed input."""
