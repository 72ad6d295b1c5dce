"""``gramfed pki``: the project CA, certificates for participants and coordinators, revocation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from gramfed.platform.cli.errors import user_errors
from gramfed.platform.cli.progress import stderr
from gramfed.platform.federation import pki

DEFAULT_DIR = Path("pki")

pki_app = typer.Typer(
    help="Project CA for mutual TLS: create it, issue and revoke certificates.",
    no_args_is_help=True,
)

Folder = Annotated[Path, typer.Option("--dir", "-d", help="PKI folder.")]


@pki_app.command()
def init(directory: Folder = DEFAULT_DIR) -> None:
    """Create the project CA (ECDSA P-256; key mode 0600) and an empty allowlist."""
    with user_errors():
        cert = pki.init(directory)
    typer.echo(f"CA certificate: {cert}")


@pki_app.command()
def issue(
    name: Annotated[str, typer.Argument(help="Participant (or coordinator) name.")],
    directory: Folder = DEFAULT_DIR,
    server: Annotated[
        bool, typer.Option("--server", help="A coordinator's server certificate.")
    ] = False,
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="Extra DNS name or IP for a server certificate (repeatable)."),
    ] = None,
    hours: Annotated[
        float | None,
        typer.Option(help="Lifetime in hours (default: 24 for participants, 720 for servers)."),
    ] = None,
) -> None:
    """Issue a certificate and key (mode 0600) under DIR/issued/, and allowlist it."""
    with user_errors():
        entry = pki.issue(directory, name, server=server, hosts=host or (), hours=hours)
    folder = directory / pki.ISSUED
    typer.echo(f"{entry.kind} certificate: {folder / (name + '.crt')}")
    typer.echo(f"private key:  {folder / (name + '.key')}")
    typer.echo(f"valid until:  {entry.not_after}")


@pki_app.command()
def revoke(
    name: Annotated[str, typer.Argument(help="Name whose certificate is revoked.")],
    directory: Folder = DEFAULT_DIR,
) -> None:
    """Remove a certificate from the allowlist; coordinators refuse it from the next call."""
    with user_errors():
        entry = pki.revoke(directory, name)
    typer.echo(f"revoked {entry.name} (serial {entry.serial})")


@pki_app.command("list")
def list_command(directory: Folder = DEFAULT_DIR) -> None:
    """Show the allowlisted certificates."""
    with user_errors():
        entries = pki.load_allowlist(directory)
    table = Table(title=f"allowlist of {directory}")
    for col in ("name", "kind", "serial", "valid until", "hosts"):
        table.add_column(col)
    for e in entries:
        until = f"{e.not_after} (expired)" if e.expired else e.not_after
        table.add_row(e.name, e.kind, e.serial, until, ", ".join(e.hosts))
    stderr.print(table)
