"""``gramfed audit``: the privacy officer's commands (signing keys, ledger verification)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gramfed.platform.cli.errors import user_errors
from gramfed.platform.cli.progress import stderr
from gramfed.privacy import keys
from gramfed.privacy.ledger import verify as verify_ledger

DEFAULT_KEY = Path.home() / ".gramfed" / "ledger.key"
DEFAULT_PUBLIC_KEY = keys.public_path(DEFAULT_KEY)
CHAIN_BROKEN = 1

audit_app = typer.Typer(
    help="Privacy audit: ledger signing keys and tamper-evidence checks.",
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
