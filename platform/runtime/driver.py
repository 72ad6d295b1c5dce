"""``run_job``: load a job, connect to Ray (or start it), run the job's kind, shut down.

With no address an embedded local Ray starts in this process (no dashboard, quiet logs) and
stops when the job ends; with one, the job joins that cluster (``auto`` inside a Ray job, a
``HOST:PORT`` GCS address, or ``ray://HOST:PORT``) and leaves it running. Everything a user can
get wrong (the spec, the data files, the ledger key, the address) fails with a one-line error
before work starts, and results leave only through the gate (``gramfed.platform.results``).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gramfed.platform.cli.progress import admm_progress, stderr
from gramfed.platform.jobspec import JobSpec, load_job
from gramfed.platform.results import ResultsWriter, open_privacy
from gramfed.platform.runtime.checkpoint import checkpoint_path, missing_message
from gramfed.platform.runtime.jobs import JobContext, ProgressFactory, runner_for
from gramfed.workers.admm import RoundHook, RoundRecord

CONNECT_TIMEOUT_S = 5.0
NON_DP_KINDS = frozenset({"gsmp_fit"})  # kinds whose results are exact releases


def run_job(
    path: Path,
    *,
    address: str | None = None,
    resume: bool = False,
    distributed: bool = True,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Run the job file at ``path``; return its summary (also released to ``summary.json``).

    ``distributed=False`` keeps every agent in this process and never imports Ray
    (``gramfed fit``). A Ray already initialised in this process is used as it is. Sketch
    jobs (``kind = "sketch_build"``) have their own spec and run their shards as Ray tasks.
    """
    if job_kind(path) == "sketch_build":
        return _run_sketch_job(path, address=address, resume=resume, distributed=distributed)
    spec = load_job(path)
    saved = checkpoint_path(spec.output_dir())
    if resume and not saved.exists():  # before Ray starts: nothing to wait for
        raise FileNotFoundError(missing_message(saved))
    context = _context(spec, path, resume, distributed, progress or default_progress())
    runner = runner_for(spec.job.kind)
    if not distributed:
        return runner(spec, context)
    started = connect(address)
    try:
        return runner(spec, context)
    finally:
        if started:
            import ray

            ray.shutdown()


def job_kind(path: Path) -> str | None:
    """``[job] kind`` if the file parses; otherwise None, and ``load_job`` says what is wrong."""
    try:
        kind = tomllib.loads(path.read_text(encoding="utf-8")).get("job", {}).get("kind")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _run_sketch_job(
    path: Path, *, address: str | None, resume: bool, distributed: bool
) -> dict[str, Any]:
    from gramfed.platform.sketch_build import run_sketch_job
    from gramfed.platform.sketchspec import load_sketch_job

    if resume:
        raise ValueError(f"{path}: a sketch job has no checkpoint; run it again without --resume")
    return run_sketch_job(load_sketch_job(path), distributed=distributed, address=address)


def connect(address: str | None) -> bool:
    """Attach to Ray; return True if this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    quiet = {"logging_level": logging.WARNING, "configure_logging": True}
    if address is None:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
        return True
    _check_reachable(address)
    try:
        ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError) as exc:
        raise ValueError(f"cannot reach the Ray cluster at {address}: {_first_line(exc)}") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail fast (seconds, not Ray's minute of retries) when ``HOST:PORT`` does not answer."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bad Ray address {address!r}: use HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def _context(
    spec: JobSpec, path: Path, resume: bool, distributed: bool, progress: ProgressFactory
) -> JobContext:
    output_dir = spec.output_dir()
    privacy = open_privacy(
        spec.privacy,
        spec.pool_dataset(),
        requester=f"job {spec.job.name}",
        exact_releases=spec.job.kind in NON_DP_KINDS,
        announce=lambda line: stderr.print(line, soft_wrap=True),
    )
    return JobContext(
        job_path=path,
        output_dir=output_dir,
        privacy=privacy,
        writer=ResultsWriter(output_dir),
        progress=progress,
        distributed=distributed,
        resume=resume,
    )


def default_progress() -> ProgressFactory:
    """Rich bars on a terminal; one line per round otherwise (Ray job logs, pipes)."""
    return admm_progress if stderr.is_terminal else _round_lines


@contextmanager
def _round_lines(label: str, max_rounds: int) -> Iterator[RoundHook]:
    started = time.perf_counter()

    def on_round(record: RoundRecord) -> None:
        print(
            f"{label}: round {record.round}/{max_rounds} rho {record.rho:.1e}"
            f" primal {record.primal_residual:.2e} ({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    yield on_round


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
