"""ADMM checkpoints: the coordinator's state and every agent's, written after each round.

One JSON file, replaced atomically (written to a temporary file in the same folder, flushed
to disk, then ``os.replace``-d over the old one), so a driver killed at any moment leaves
either the previous round's checkpoint or this one, never a torn file. JSON keeps floats
exact (Python writes the shortest repr that reads back to the same float64) and the file
readable. ``job_digest`` ties a checkpoint to the job spec it was made for, so resuming with an
edited spec is refused instead of silently mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gramfed.workers.admm import ADMMState

FORMAT = "gramfed-admm-checkpoint/1"


@dataclass
class Checkpoint:
    job_digest: str
    admm: ADMMState
    agents: list[dict[str, Any]]


def checkpoint_path(output_dir: Path) -> Path:
    """Where a job's checkpoint lives: a folder of its own, removed when the job succeeds."""
    return output_dir / "checkpoint" / "admm.json"


def job_digest(spec_json: str) -> str:
    return hashlib.sha256(spec_json.encode()).hexdigest()


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically."""
    record = {
        "format": FORMAT,
        "job_digest": checkpoint.job_digest,
        "admm": checkpoint.admm.to_json(),
        "agents": [_agent_json(state) for state in checkpoint.agents],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        json.dump(record, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load(path: Path, expected_digest: str) -> Checkpoint:
    """Read a checkpoint, refusing one of another format or made for another job spec."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(missing_message(path)) from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint {path} is not valid JSON: {exc.msg}") from None
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    if record["job_digest"] != expected_digest:
        raise ValueError(
            f"checkpoint {path} was made for a different job spec; resume with the original"
            " job file or start afresh without --resume"
        )
    return Checkpoint(
        job_digest=record["job_digest"],
        admm=ADMMState.from_json(record["admm"]),
        agents=[_agent_from_json(state) for state in record["agents"]],
    )


def missing_message(path: Path) -> str:
    return f"no checkpoint at {path}: nothing to resume (run the job without --resume)"


_ARRAYS = ("zeta", "sent", "lam", "residual", "theta")


def _agent_json(state: dict[str, Any]) -> dict[str, Any]:
    return {k: np.asarray(v).tolist() if k in _ARRAYS else v for k, v in state.items()}


def _agent_from_json(state: dict[str, Any]) -> dict[str, Any]:
    return {k: np.asarray(v, dtype=np.float64) if k in _ARRAYS else v for k, v in state.items()}
