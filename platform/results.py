"""Job results: written only from gate-issued ``Release`` values, each beside its provenance.

``ResultsWriter.write`` is the one way a job's outputs reach disk. It accepts nothing but a
genuine release (``require_release``) and stores, next to every file ``NAME``, a
``NAME.release.json`` with the release's provenance: ledger uuid and entry id, entry hash,
kind, the dp flag, pools and privacy cost. An auditor can thus match every result file to a
signed ledger entry (``gramfed audit verify`` checks the chain). ``open_privacy`` binds a job
to its ledger, signing key, budget pool and recipient.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gramfed.platform.jobspec import PrivacySection
from gramfed.privacy import keys
from gramfed.privacy.budget import ApproxDP, PoolSpec, PureDP, Rho, pool_key
from gramfed.privacy.errors import LedgerError
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.privacy.release import Release, require_release

PROVENANCE_SUFFIX = ".release.json"


class ResultsWriter:
    """Writes releases into ``directory``: ``.json`` (JSON-ready values), ``.npy`` (arrays) or
    ``.csv`` (a mapping of column name to equal-length 1-D arrays)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written: list[Path] = []

    def write(self, name: str, release: Release) -> Path:
        release = require_release(release)
        if Path(name).name != name or name.endswith(PROVENANCE_SUFFIX):
            raise ValueError(f"a result name is a plain file name, got {name!r}")
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        suffix = path.suffix
        if suffix == ".json":
            _atomic_write(path, json.dumps(release.value, indent=1, default=_json_default))
        elif suffix == ".npy":
            with _atomic(path) as handle:
                np.save(handle, np.asarray(release.value))
        elif suffix == ".csv":
            _atomic_write(path, _csv(release.value))
        else:
            raise ValueError(f"results are written as .json, .npy or .csv, not {name!r}")
        sidecar = path.with_name(name + PROVENANCE_SUFFIX)
        _atomic_write(sidecar, json.dumps(release.provenance(), indent=1))
        self.written.append(path)
        return path


@dataclass
class JobPrivacy:
    """A job's side of the gate: its pool, its recipient and who asks."""

    gate: Gate
    pool: PoolSpec
    recipient: str
    requester: str

    @property
    def ledger_path(self) -> Path:
        return self.gate.ledger.path

    def release_exact(self, value: Any, description: str) -> Release:
        """An exact (non-DP) release of ``value`` to the job's recipient."""
        return self.gate.release_exact(
            self.pool,
            value,
            requester=self.requester,
            recipient=self.recipient,
            description=description,
        )


def open_privacy(
    section: PrivacySection,
    dataset: str,
    requester: str,
    *,
    exact_releases: bool,
    announce: Callable[[str], None] = print,
) -> JobPrivacy:
    """Open (or create) the ledger and the job's pool; create the signing key if absent.

    ``exact_releases``: the job releases exact values, so the pool must trust the recipient.
    This is checked here, before any work runs, rather than when the results are ready.
    """
    key_path = section.key
    if not key_path.exists():
        keys.generate(key_path)
        announce(
            f"created a ledger signing key at {key_path} (public key {keys.public_path(key_path)})"
        )
    section.ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(section.ledger, key_path, create=True)
    gate = Gate(ledger)
    trusted = (section.recipient,) if exact_releases else ()
    if section.epsilon is not None:
        budget = (
            PureDP(section.epsilon)
            if section.delta is None
            else ApproxDP(section.epsilon, section.delta)
        )
        pool = gate.create_pool(PoolSpec.of(dataset, budget, trusted_recipients=trusted))
    else:
        try:
            pool = ledger.pool(pool_key(dataset))
        except LedgerError:
            pool = gate.create_pool(PoolSpec(dataset, Rho(0), trusted_recipients=trusted))
    if exact_releases and section.recipient not in pool.trusted_recipients:
        trusted_text = ", ".join(pool.trusted_recipients) or "none"
        raise ValueError(
            f"pool {pool.key!r} does not trust recipient {section.recipient!r} with exact"
            f" (non-DP) results; trusted: {trusted_text}"
        )
    return JobPrivacy(gate, pool, section.recipient, requester)


def _csv(columns: Mapping[str, Any]) -> str:
    if not isinstance(columns, Mapping) or not columns:
        raise ValueError("a .csv result needs a mapping of column names to 1-D arrays")
    arrays = [np.asarray(v, dtype=np.float64) for v in columns.values()]
    if any(a.ndim != 1 or len(a) != len(arrays[0]) for a in arrays):
        raise ValueError("a .csv result's columns must be 1-D and of equal length")
    rows = [",".join(columns)]
    rows += [",".join(repr(float(v)) for v in row) for row in zip(*arrays, strict=True)]
    return "\n".join(rows) + "\n"


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


@contextmanager
def _atomic(path: Path) -> Iterator[BinaryIO]:
    """Write to a temporary file beside ``path``; move it into place only on success."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write(path: Path, text: str) -> None:
    with _atomic(path) as handle:
        handle.write(text.encode())
