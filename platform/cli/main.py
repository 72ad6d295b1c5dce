"""The ``gramfed`` command line."""

from __future__ import annotations

import json
import os
import sys
import webbrowser
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gramfed.platform.cli.audit import audit_app
from gramfed.platform.cli.errors import user_errors
from gramfed.platform.cli.federation import coordinator_app, participant_app
from gramfed.platform.cli.fit import run_fit
from gramfed.platform.cli.pki import pki_app
from gramfed.platform.cli.progress import admm_progress, stderr
from gramfed.platform.cli.runtime import jobs_app, run_command, submit_command
from gramfed.platform.cli.sketch import sketch_app
from gramfed.platform.datasets import SLIMKL_DATASETS
from gramfed.platform.demo import run_federated_demo

app = typer.Typer(
    help="gramfed: distributed, privacy-preserving kernel learning.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Benchmarks against published reference figures.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
app.add_typer(audit_app, name="audit")
app.add_typer(sketch_app, name="sketch")
app.add_typer(jobs_app, name="jobs")
app.add_typer(pki_app, name="pki")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(participant_app, name="participant")
app.command("run")(run_command)
app.command("submit")(submit_command)


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as package_version

    typer.echo(package_version("gramfed"))


@app.command()
def fit(
    job: Annotated[Path, typer.Argument(help="Job specification (TOML).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Fit a GSMP multiple-kernel GP described by a job file."""
    with user_errors():
        summary = run_fit(job)
    if as_json:
        typer.echo(json.dumps(summary))
        return
    table = Table(title=f"gramfed fit: {summary['name']}", show_header=False)
    for key in (
        "samples",
        "agents",
        "components",
        "nonzero_weights",
        "noise_variance",
        "admm_rounds",
        "fit_seconds",
        "bits_sent",
        "test_mse",
        "nlpd",
        "output_dir",
    ):
        if summary.get(key) is not None:
            table.add_row(key, _fmt(summary[key]))
    stderr.print(table)


@bench_app.command("slimkl")
def bench_slimkl_command(
    dataset: Annotated[
        list[str] | None,
        typer.Option("--dataset", "-d", help="Dataset name (repeatable); default all."),
    ] = None,
    agents: Annotated[int, typer.Option(help="Number of ADMM agents J.", min=1)] = 2,
    bits: Annotated[
        int | None, typer.Option(help="Quantize messages to B bits per weight.", min=1, max=32)
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    runtime: Annotated[
        str,
        typer.Option(
            help="local: agents in this process; ray: one Ray actor each, in parallel "
            "(a local Ray is started when none is running).",
        ),
    ] = "local",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per run on stdout.")
    ] = False,
) -> None:
    """Reproduce the SLIM-KL experiments on the shipped datasets, beside the authors' figures."""
    from gramfed.platform.benchmarks import bench_slimkl

    names = dataset or list(SLIMKL_DATASETS)
    with user_errors():
        unknown = [n for n in names if n not in SLIMKL_DATASETS]
        if unknown:
            raise ValueError(
                f"unknown dataset {unknown[0]!r}; choose from {', '.join(SLIMKL_DATASETS)}"
            )
        if runtime not in ("local", "ray"):
            raise ValueError(f"--runtime must be 'local' or 'ray', got {runtime!r}")
        from gramfed.platform.runtime.driver import connect

        started_ray = runtime == "ray" and connect(None)
        rows = []
        try:
            for name in names:
                with admm_progress(name, 100) as on_round:
                    row = bench_slimkl(
                        name,
                        agents=agents,
                        bits=bits,
                        device=device,
                        runtime=runtime,  # type: ignore[arg-type]
                        on_round=on_round,
                    )
                rows.append(row)
                if as_json:
                    typer.echo(json.dumps(row), nl=True)
                else:
                    stderr.print(
                        f"{name}: test MSE {row['test_mse']:.4g} in {row['fit_seconds']:.1f} s"
                    )
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    if not as_json:
        stderr.print(_bench_table(rows))


def _federation_table(summary: dict) -> Table:
    table = Table(title="Federated private GSMP and sketch (cccp9500 split over 3 participants)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("participants in the sum", ", ".join(summary["survivors"])),
        ("test MSE, private GSMP (epsilon 1 each)", _fmt(summary["test_mse"])),
        ("test MSE, same model without privacy", _fmt(summary["test_mse_without_privacy"])),
        ("test-set variance (predicting the mean)", _fmt(summary["test_variance"])),
        ("sketch: noisy record count / true", f"{summary['sketch_noisy_count']:.0f} / "
         f"{summary['records']}"),
        ("merged sketch file", summary["sketch_file"]),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    return table


@app.command()
def demo() -> None:
    """GSMP beside the published reference, then the whole platform federated on loopback."""
    from gramfed.platform.benchmarks import bench_slimkl

    name = "ale80"
    stderr.print(f"[bold]gramfed demo[/]: GSMP by 2-agent consensus ADMM on the shipped {name} set")
    with user_errors():
        rows = []
        for bits in (None, 8):
            with admm_progress(f"{name} {'exact' if bits is None else f'{bits}-bit'}", 100) as hook:
                rows.append(bench_slimkl(name, agents=2, bits=bits, on_round=hook))
    stderr.print(_bench_table(rows))
    stderr.print(
        "\n[bold]gramfed demo[/]: a coordinator and three participants on loopback over mutual TLS"
    )
    with user_errors():
        summary = run_federated_demo(
            Path("runs") / "demo-federation", lambda line: stderr.print(f"  {line}")
        )
    stderr.print(_federation_table(summary))
    report = Path(summary["audit_report"]).resolve()
    stderr.print(f"audit report of participant p0's ledger: {report.as_uri()}")
    if os.environ.get("DISPLAY") or os.environ.get("BROWSER") or sys.platform == "darwin":
        webbrowser.open(report.as_uri())


def _bench_table(rows: list[dict]) -> Table:
    table = Table(title="SLIM-KL: gramfed beside the authors' MATLAB + MOSEK runs")
    for col in (
        "dataset",
        "J",
        "bits",
        "test MSE",
        "reference MSE",
        "ratio",
        "fit s",
        "reference s",
        "speed-up",
        "bits sent",
        "vs float64",
    ):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    for r in rows:
        ref_mse, ref_time = r["reference_test_mse"], r["reference_time_s"]
        table.add_row(
            r["dataset"],
            str(r["agents"]),
            str(r["bits"] or "-"),
            _fmt(r["test_mse"]),
            _fmt(ref_mse),
            _fmt(r["test_mse"] / ref_mse) if ref_mse else "-",
            _fmt(r["fit_seconds"]),
            _fmt(ref_time),
            f"{ref_time / r['fit_seconds']:.0f}x" if ref_time else "-",
            str(r["bits_sent"]),
            f"{r['bits_float64_equivalent'] / r['bits_sent']:.1f}x fewer",
        )
    return table


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
