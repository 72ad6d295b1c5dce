"""``gramfed audit``: the privacy officer's commands.

Signing keys, ledger verification, an empirical test of the noise mechanisms, and a report of
everything a ledger records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from gramfed.platform.audit_report import FORMATS, render
from gramfed.platform.cli.errors import user_errors
from gramfed.platform.cli.progress import stderr
from gramfed.privacy import keys
from gramfed.privacy.empirical import (
    DEFAULT_CONFIDENCE,
    DEFAULT_SAMPLES,
    AuditResult,
    attach_result,
)
from gramfed.privacy.empirical import audit_mechanism as run_audit
from gramfed.privacy.ledger import Ledger
from gramfed.privacy.ledger import verify as verify_ledger
from gramfed.privacy.mechanisms import calibrated
from gramfed.privacy.report import build_report

DEFAULT_KEY = Path.home() / ".gramfed" / "ledger.key"
DEFAULT_PUBLIC_KEY = keys.public_path(DEFAULT_KEY)
CHAIN_BROKEN = 1
MECHANISM_FLAGGED = 1
_SUFFIX_FORMATS = {".html": "html", ".htm": "html", ".json": "json", ".md": "markdown"}
MECHANISM_NAMES = ("gaussian", "discrete-gaussian", "laplace", "discrete-laplace")

audit_app = typer.Typer(
    help="Privacy audit: signing keys, tamper-evidence checks, mechanism tests, reports.",
    no_args_is_help=True,
)


@audit_app.command()
def keygen(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Private key file; the public key goes to OUT.pub.")
    ] = DEFAULT_KEY,
    force: Annotated[bool, typer.Option(help="Replace an existing key pair.")] = False,
) -> None:
    """Create an Ed25519 key pair for signing the ledger (private key mode 0600)."""
    with user_errors():
        public = keys.generate(out, overwrite=force)
    typer.echo(f"private key: {out}")
    typer.echo(f"public key:  {keys.public_path(out)}")
    typer.echo(f"fingerprint: {keys.fingerprint(public)}")


@audit_app.command()
def verify(
    ledger: Annotated[Path, typer.Argument(help="Ledger file (SQLite).")],
    public_key: Annotated[
        Path,
        typer.Option(
            "--public-key",
            "-k",
            help="Trusted public key, obtained from the ledger owner (not from the ledger).",
        ),
    ] = DEFAULT_PUBLIC_KEY,
) -> None:
    """Check the ledger's hash chain and signatures; exit 1 naming the first bad entry."""
    with user_errors():
        result = verify_ledger(ledger, keys.load_public(public_key))
    if not result.ok:
        where = f"entry {result.first_bad}" if result.first_bad is not None else "ledger"
        stderr.print(f"[bold red]tampered:[/] {where}: {result.reason}", soft_wrap=True)
        raise typer.Exit(CHAIN_BROKEN)
    typer.echo(f"ok: {result.entries} entries verify; head {result.head}")


@audit_app.command("test-mechanism")
def test_mechanism(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(MECHANISM_NAMES)}.")],
    epsilon: Annotated[float, typer.Option(help="Target epsilon to calibrate the noise to.")],
    delta: Annotated[
        float, typer.Option(help="Target delta (Gaussian family; Laplace is pure DP).")
    ] = 1e-5,
    samples: Annotated[
        int, typer.Option(help="Releases drawn for each of the two neighbouring inputs.")
    ] = DEFAULT_SAMPLES,
    confidence: Annotated[
        float, typer.Option(help="Confidence of the empirical lower bound on epsilon.")
    ] = DEFAULT_CONFIDENCE,
    seed: Annotated[
        int | None, typer.Option(help="Seed for reproducible noise (default: system RNG).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    attach: Annotated[
        Path | None,
        typer.Option(
            help="Ledger to record the result with, in LEDGER.audit-tests.jsonl beside it."
        ),
    ] = None,
) -> None:
    """Test a shipped mechanism statistically; exit 1 if its claimed epsilon is refuted."""
    with user_errors():
        if name not in MECHANISM_NAMES:
            raise ValueError(
                f"unknown mechanism {name!r}; choose from {', '.join(MECHANISM_NAMES)}"
            )
        if not epsilon > 0:
            raise ValueError(f"--epsilon must be positive, got {epsilon:g}")
        # Open the ledger first, so that a wrong path fails before minutes of sampling.
        ledger_uuid = ""
        if attach is not None:
            with Ledger(attach) as opened:
                ledger_uuid = opened.uuid
        mechanism = calibrated(name.replace("-", "_"), epsilon, delta)
        result = run_audit(
            mechanism, delta=delta, samples=samples, confidence=confidence, seed=seed
        )
        if attach is not None:
            attach_result(attach, ledger_uuid, result)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        Console().print(_result_table(result))
    if not result.passed:
        raise typer.Exit(MECHANISM_FLAGGED)


def _result_table(result: AuditResult) -> Table:
    verdict = "[bold green]PASS[/]" if result.passed else "[bold red]FAIL[/]"
    table = Table(title=f"Empirical privacy test: {result.name}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("mechanism", result.mechanism),
        ("claimed epsilon", f"{result.claimed_epsilon:.4f} (delta={result.delta:g})"),
        ("empirical lower bound", f"{result.epsilon_lower_bound:.4f}"),
        ("confidence", f"{result.confidence:.0%}"),
        ("samples per input", f"{result.samples:,}"),
        ("neighbouring answers", ", ".join(f"{a:g}" for a in result.neighbouring_answers)),
        ("attack event", result.attack),
        ("P (lower bound)", f"{result.p_estimate:.5f} ({result.p_lower:.5f})"),
        ("Q (upper bound)", f"{result.q_estimate:.5f} ({result.q_upper:.5f})"),
        ("seed", "system RNG" if result.seed is None else str(result.seed)),
        ("verdict", verdict),
    ]
    for label, value in rows:
        table.add_row(label, value)
    return table


@audit_app.command()
def report(
    ledger: Annotated[Path, typer.Argument(help="Ledger file (SQLite).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the report.")],
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="html, json or markdown (default: from OUT's suffix, else html)."
        ),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(
            "--public-key",
            "-k",
            help="Trusted public key to check the ledger with (default: the usual key, if any).",
        ),
    ] = None,
) -> None:
    """Write a report of every pool, release, refusal and derived statistic in a ledger.

    Exits 1 (after writing the report, which says so) when the ledger fails verification.
    """
    with user_errors():
        chosen = fmt or _SUFFIX_FORMATS.get(out.suffix.lower(), "html")
        if chosen not in FORMATS:
            raise ValueError(f"unknown report format {chosen!r}; choose from {', '.join(FORMATS)}")
        key_path = public_key
        if key_path is None and DEFAULT_PUBLIC_KEY.exists():
            key_path = DEFAULT_PUBLIC_KEY
        trusted = keys.load_public(key_path) if key_path is not None else None
        result = build_report(ledger, trusted)
        out.write_text(render(result, chosen), encoding="utf-8")
    typer.echo(f"report: {out} ({chosen})")
    v = result.verification
    if not v.checked:
        stderr.print("[yellow]warning:[/] ledger not verified (no public key given)")
    elif not v.ok:
        stderr.print(f"[bold red]tampered:[/] {v.summary}", soft_wrap=True)
        raise typer.Exit(CHAIN_BROKEN)
