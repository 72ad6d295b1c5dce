"""``gramfed run``, ``gramfed submit`` and ``gramfed jobs``: jobs on Ray.

``run`` executes a job file in this process as the Ray driver (an embedded local Ray unless
``--address`` names a cluster). ``submit`` sends it to a cluster through the Ray Jobs API: the
job file and its local data files travel in the runtime environment's working directory, and
the cluster runs ``gramfed run job.toml --address auto``. ``jobs`` lists, inspects, follows
and stops submitted jobs. Ray is imported only inside the commands.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from gramfed.platform.cli.errors import user_errors
from gramfed.platform.cli.progress import stderr
from gramfed.platform.jobspec import load_job

ADDRESS_HELP = "Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)."
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
JOB_FAILED = 1

jobs_app = typer.Typer(help="Jobs submitted to a Ray cluster.", no_args_is_help=True)
Address = Annotated[str, typer.Option("--address", envvar="RAY_ADDRESS", help=ADDRESS_HELP)]


def run_command(
    job: Annotated[Path, typer.Argument(help="Job specification (TOML).")],
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster (HOST:PORT, ray://HOST:PORT or auto); default: local."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the job's last checkpoint.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run a job on Ray: worker actors hold the shards, this process coordinates."""
    from gramfed.platform.runtime.driver import run_job

    with user_errors():
        summary = run_job(job, address=address, resume=resume)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table(title=f"gramfed run: {summary['name']}", show_header=False)
    for key, value in summary.items():
        if value is not None and key != "name":
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    stderr.print(table)


def submit_command(
    job: Annotated[Path, typer.Argument(help="Job specification (TOML).")],
    address: Address,
    wait: Annotated[
        bool, typer.Option("--wait", help="Follow the job's logs until it ends.")
    ] = False,
) -> None:
    """Submit a job to a Ray cluster through the Ray Jobs API; print its id."""
    with user_errors():
        name, kind, data_keys = _validate(job)  # a bad spec fails here, not on the cluster
        with tempfile.TemporaryDirectory(prefix="gramfed-submit-") as staging:
            entry = _stage(job, Path(staging), data_keys)
            client = _client(address)
            job_id = client.submit_job(
                entrypoint=f"gramfed run {entry} --address auto",
                runtime_env={"working_dir": staging},
                metadata={"gramfed_job": name, "kind": kind},
            )
    typer.echo(job_id)
    if wait:
        _follow(client, job_id)
        status = str(client.get_job_status(job_id).value)
        stderr.print(f"{job_id}: {status}")
        if status != "SUCCEEDED":
            raise typer.Exit(JOB_FAILED)


@jobs_app.command("list")
def jobs_list(address: Address) -> None:
    """Jobs on the cluster, newest last."""
    with user_errors():
        details = _client(address).list_jobs()
    table = Table(title=f"jobs on {address}")
    for column in ("id", "status", "entrypoint", "started"):
        table.add_column(column)
    for info in sorted(details, key=lambda d: d.start_time or 0):
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((info.start_time or 0) / 1e3))
        table.add_row(
            info.submission_id or info.job_id or "-",
            str(info.status.value),
            info.entrypoint,
            started,
        )
    stderr.print(table)


@jobs_app.command("status")
def jobs_status(
    job_id: Annotated[str, typer.Argument(help="Submission id.")], address: Address
) -> None:
    """Status of one job (and its message, if it failed)."""
    with user_errors():
        info = _call(_client(address).get_job_info, job_id)
    typer.echo(str(info.status.value))
    if info.message and str(info.status.value) != "SUCCEEDED":
        stderr.print(info.message, soft_wrap=True)


@jobs_app.command("logs")
def jobs_logs(
    job_id: Annotated[str, typer.Argument(help="Submission id.")],
    address: Address,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream until the job ends.")
    ] = False,
) -> None:
    """The job's driver output."""
    with user_errors():
        client = _client(address)
        if not follow:
            typer.echo(_call(client.get_job_logs, job_id), nl=False)
            return
        _call(client.get_job_status, job_id)
    _follow(client, job_id)


@jobs_app.command("stop")
def jobs_stop(
    job_id: Annotated[str, typer.Argument(help="Submission id.")], address: Address
) -> None:
    """Ask the cluster to stop a job."""
    with user_errors():
        stopped = _call(_client(address).stop_job, job_id)
    typer.echo(f"{job_id}: {'stopping' if stopped else 'already finished'}")


def _client(address: str) -> Any:
    """A ``JobSubmissionClient``, or a one-line error naming the address it could not reach."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError:
        raise ValueError(
            f"the Ray cluster at {address} requires a token: set RAY_AUTH_MODE=token and"
            " provide the cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        ) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot reach the Ray cluster at {address}: {reason}") from None


def _call(method: Any, job_id: str) -> Any:
    """Call a client method on ``job_id``; an unknown id is the user's mistake, one line."""
    try:
        return method(job_id)
    except RuntimeError as exc:
        if "does not exist" in str(exc) or "404" in str(exc):
            raise ValueError(f"no job {job_id!r} on this cluster") from None
        raise


def _follow(client: Any, job_id: str) -> None:
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            typer.echo(lines, nl=False)

    asyncio.run(tail())


def _validate(job: Path) -> tuple[str, str, tuple[str, ...]]:
    """Validate the job file; return its name, kind and the ``[data]`` keys naming files."""
    from gramfed.platform.runtime.driver import job_kind

    if job_kind(job) == "sketch_build":
        from gramfed.platform.sketchspec import load_sketch_job

        sketch = load_sketch_job(job)
        return sketch.job.name, sketch.job.kind, ("path",)
    spec = load_job(job)
    return spec.job.name, spec.job.kind, ("train", "test")


def _stage(job: Path, staging: Path, data_keys: tuple[str, ...]) -> str:
    """Copy the job file, and the data files it names by relative path, into ``staging``
    with their layout relative to the job's folder; return the job file's name there.

    Absolute data paths are left to the cluster to read (shared storage); a relative path
    that leaves the job's folder cannot be reproduced there and is refused, naming the file.
    """
    base = job.resolve().parent
    with open(job, "rb") as handle:
        data = tomllib.load(handle).get("data", {})
    for key in data_keys:
        written = data.get(key)
        if written is None or Path(written).is_absolute():
            continue
        source = (base / written).resolve()
        if not source.is_relative_to(base):
            raise ValueError(
                f"data.{key} = {written!r} lies outside the job's folder {base}; put it beside"
                " the job file (it is uploaded with it) or give an absolute path the cluster"
                " can read"
            )
        if not source.is_file():
            raise FileNotFoundError(f"data.{key}: data file {base / written} not found")
        target = staging / source.relative_to(base)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    shutil.copy2(job, staging / job.name)
    return job.name
