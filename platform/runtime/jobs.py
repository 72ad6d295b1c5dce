"""The job-kind registry: ``[job] kind`` -> the runner that executes it.

A runner is ``runner(spec, context) -> summary`` (a JSON-ready dict). It receives the validated
``JobSpec`` and a ``JobContext`` holding the output folder, the privacy gate bound to the job's
pool and recipient, the results writer (the only way out for results), a progress factory, and
whether to place work on Ray. Runners are named by ``"module:function"`` and imported only when
a job of their kind runs, so the registry (imported by the job-spec module) stays light.

Adding a kind::

    from gramfed.platform.runtime.jobs import register

    register("sketch_build", "gramfed.platform.runtime.sketch:run_sketch_build")

or add it to ``BUILTIN_KINDS`` below when it ships with gramfed; ``[job] kind = "sketch_build"``
then validates, and ``gramfed run`` / ``gramfed submit`` run it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gramfed.platform.jobspec import JobSpec
    from gramfed.platform.results import JobPrivacy, ResultsWriter
    from gramfed.workers.admm import RoundHook

ProgressFactory = Callable[[str, int], AbstractContextManager["RoundHook"]]

BUILTIN_KINDS: dict[str, str] = {
    "gsmp_fit": "gramfed.platform.runtime.gsmp:run_gsmp_fit",
    "dp_gsmp": "gramfed.platform.runtime.dp_gsmp:run_dp_gsmp",
}
_KINDS: dict[str, str] = dict(BUILTIN_KINDS)


@dataclass
class JobContext:
    """What a runner gets besides its spec.

    ``distributed``: place agents on Ray worker actors (``gramfed run``/``submit``) or keep
    everything in this process (``gramfed fit``). ``resume``: continue from the checkpoint in
    ``output_dir`` instead of starting afresh.
    """

    job_path: Path
    output_dir: Path
    privacy: JobPrivacy
    writer: ResultsWriter
    progress: ProgressFactory
    distributed: bool
    resume: bool = False


Runner = Callable[["JobSpec", JobContext], dict[str, Any]]


def register(kind: str, target: str) -> None:
    """Register ``target`` (``"package.module:function"``) as the runner of ``kind``."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"a runner is named 'package.module:function', got {target!r}")
    existing = _KINDS.get(kind)
    if existing is not None and existing != target:
        raise ValueError(f"job kind {kind!r} is already registered to {existing}")
    _KINDS[kind] = target


def known_kinds() -> list[str]:
    return sorted(_KINDS)


def runner_for(kind: str) -> Runner:
    try:
        target = _KINDS[kind]
    except KeyError:
        raise ValueError(
            f"unknown job kind {kind!r}; known kinds: {', '.join(known_kinds())}"
        ) from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
