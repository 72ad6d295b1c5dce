"""``Release``: a value that passed the privacy gate, with its provenance.

Only ``gramfed.privacy.gate`` creates releases, and every writer and transport of the platform
accepts nothing else, so "this value may leave" is a fact about its type. A release states its
privacy unit, neighbouring relation, cost, ledger entry and parents.

How construction outside the gate is prevented:

* ``Release(...)`` and ``Release.__new__`` raise; instances come from ``_issue``, which demands
  a capability object private to this module and imported only by the gate.
* Every issued instance is registered (weakly) here; ``require_release`` accepts only registered
  instances of exactly this class, so objects made by ``object.__new__``, subclasses (refused at
  class creation anyway) and look-alikes are rejected even though Python cannot hide a class's
  internals.
* Instances are immutable; ``copy`` and ``deepcopy`` return the same instance (a copy of a
  capability is the capability, and no second object comes into being); pickling is refused,
  because an unpickled object would be a new, unregistered release minted from bytes.
  ``dataclasses.replace`` does not apply: a release is not a dataclass.

Privacy does not rest on the value being untouchable: anything computed from a release is
post-processing and stays as private as the release. The registry is about provenance: a value
the ledger has not seen must not pass for one it has.
"""

from __future__ import annotations

import hashlib
import weakref
from fractions import Fraction
from typing import Any, NoReturn

import numpy as np

from gramfed.privacy.budget import Neighbouring, PrivacyUnit
from gramfed.privacy.errors import ForgedRelease
from gramfed.privacy.mechanisms import PrivacyLoss

_CAPABILITY = object()
_ISSUED: weakref.WeakSet[Release] = weakref.WeakSet()

_FIELDS = (
    "value",
    "ledger_id",
    "ledger_uuid",
    "entry_hash",
    "kind",
    "dp",
    "pools",
    "unit",
    "neighbouring",
    "cost",
    "mechanism",
    "parents",
    "requester",
    "description",
)


class Release:
    """A gate-issued value with its provenance. Read-only; see the module docstring.

    Attributes: ``value``; ``ledger_id`` (entry number) and ``entry_hash`` in the ledger
    ``ledger_uuid``; ``kind`` (``"release"``, ``"postprocess"`` or ``"non_dp"``); ``dp`` (False
    for an exact release and anything derived from one); ``pools`` it drew on; ``unit`` and
    ``neighbouring`` its guarantee is stated for; ``cost`` (a ``PrivacyLoss``, zero for
    post-processing); ``mechanism`` (description, or None); ``parents`` (ledger ids);
    ``requester``; ``description``.
    """

    __slots__ = (*(f"_{name}" for name in _FIELDS), "__weakref__")

    value: Any
    ledger_id: int
    ledger_uuid: str
    entry_hash: str
    kind: str
    dp: bool
    pools: tuple[str, ...]
    unit: PrivacyUnit
    neighbouring: Neighbouring
    cost: PrivacyLoss
    mechanism: str | None
    parents: tuple[int, ...]
    requester: str
    description: str

    def __new__(cls, *args: object, **kwargs: object) -> NoReturn:
        raise ForgedRelease("a Release can only be created by the privacy gate")

    def __init_subclass__(cls, **kwargs: object) -> NoReturn:
        raise TypeError("Release cannot be subclassed")

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: public names map onto the private slots.
        if name in _FIELDS:
            try:
                return object.__getattribute__(self, f"_{name}")
            except AttributeError:
                raise ForgedRelease("this Release was not issued by the privacy gate") from None
        raise AttributeError(name)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("a Release is immutable")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("a Release is immutable")

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise ForgedRelease(
            "a Release cannot be pickled; send its value and ledger id, and check them against"
            " the ledger on the other side"
        )

    def __copy__(self) -> Release:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Release:
        return self

    @property
    def rho(self) -> Fraction:
        """The rho (zCDP) this release cost, as an exact fraction."""
        return self.cost.rho

    def provenance(self) -> dict[str, Any]:
        """A JSON-ready summary that points back to the signed ledger entry."""
        return {
            "ledger": self.ledger_uuid,
            "ledger_id": self.ledger_id,
            "entry_hash": self.entry_hash,
            "kind": self.kind,
            "dp": self.dp,
            "pools": list(self.pools),
            "unit": self.unit.name,
            "neighbouring": self.neighbouring.value,
            "mechanism": self.mechanism,
            "privacy": self.cost.to_json(),
            "parents": list(self.parents),
            "requester": self.requester,
            "description": self.description,
        }

    def __repr__(self) -> str:
        flag = "" if self.dp else ", NOT DP"
        return (
            f"Release(#{self.ledger_id} {self.kind}{flag}, pools={list(self.pools)},"
            f" rho={float(self.rho):.6g}, unit={self.unit.name!r})"
        )


def _issue(capability: object, **fields: Any) -> Release:
    """Mint a release. Only the gate holds ``capability``."""
    if capability is not _CAPABILITY:
        raise ForgedRelease("a Release can only be created by the privacy gate")
    if set(fields) != set(_FIELDS):
        raise TypeError(f"a Release needs exactly the fields {', '.join(_FIELDS)}")
    value = fields["value"]
    if isinstance(value, np.ndarray) and value.flags.writeable:
        value = value.copy()
        value.setflags(write=False)
        fields["value"] = value
    release = object.__new__(Release)
    for name, item in fields.items():
        object.__setattr__(release, f"_{name}", item)
    _ISSUED.add(release)
    return release


def is_genuine(obj: object) -> bool:
    """True for a release issued by the gate in this process."""
    return type(obj) is Release and obj in _ISSUED


def require_release(obj: object) -> Release:
    """Return ``obj`` if it is a genuine release; raise ``ForgedRelease`` otherwise.

    Writers and transports call this on everything they are asked to send or store.
    """
    if not is_genuine(obj):
        raise ForgedRelease(
            f"refusing {type(obj).__name__}: only Release values issued by the privacy gate"
            " may leave"
        )
    assert isinstance(obj, Release)
    return obj


def value_digest(value: Any) -> str | None:
    """SHA-256 of a numeric value's dtype, shape and little-endian bytes; None if not numeric.

    Recorded in the ledger so that an auditor can tell whether a value is the one released.
    """
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError):
        return None
    if arr.dtype.kind not in "biuf":
        return None
    arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    head = f"{arr.dtype.str}{arr.shape}".encode()
    return hashlib.sha256(head + arr.tobytes()).hexdigest()
