"""``gramfed coordinator serve`` and ``gramfed participant join``: federation over mutual TLS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gramfed.platform.cli.errors import user_errors
from gramfed.platform.cli.progress import stderr
from gramfed.platform.federation import pki
from gramfed.platform.federation.coordinator import Coordinator, load_config
from gramfed.platform.federation.participant import Participant, load_policy
from gramfed.platform.sketchspec import load_points

UNREACHABLE = 1

coordinator_app = typer.Typer(help="Run a federation coordinator.", no_args_is_help=True)
participant_app = typer.Typer(help="Take part in a federation.", no_args_is_help=True)


def _log(message: str) -> None:
    stderr.print(message, highlight=False)


@coordinator_app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", help="Coordinator configuration (TOML).")],
) -> None:
    """Serve gramfed.v1 and run the configured jobs; results go to the state folder."""
    with user_errors():
        coordinator = Coordinator(load_config(config), log=_log)
    with user_errors():
        results = coordinator.serve()
    typer.echo(json.dumps({name: r["status"] for name, r in results.items()}))


@participant_app.command()
def join(
    coordinator: Annotated[str, typer.Option("--coordinator", help="HOST:PORT to connect to.")],
    data: Annotated[
        Path, typer.Option(help="This participant's records (.csv, .parquet, .npy, .npz).")
    ],
    policy: Annotated[Path, typer.Option(help="Participant policy (TOML).")],
    cert: Annotated[Path | None, typer.Option(help="Client certificate (PEM).")] = None,
    key: Annotated[Path | None, typer.Option(help="Its private key (PEM, mode 0600).")] = None,
    ca: Annotated[Path | None, typer.Option(help="The project CA certificate (PEM).")] = None,
    plaintext: Annotated[
        bool, typer.Option("--plaintext", help="No TLS; loopback addresses only (development).")
    ] = False,
    target: Annotated[
        str | None,
        typer.Option(
            help="Column (or .npz array) with targets or class labels, for private GSMP fits"
            " and class sketches."
        ),
    ] = None,
    give_up: Annotated[
        float, typer.Option(help="Seconds to keep retrying an unreachable coordinator.")
    ] = 60.0,
) -> None:
    """Join a coordinator and answer its tasks under this participant's own policy."""
    with user_errors():
        if plaintext:
            if cert or key or ca:
                raise ValueError("--plaintext takes no --cert, --key or --ca")
            credentials = None
        elif cert is None or key is None or ca is None:
            raise ValueError("mutual TLS needs --cert, --key and --ca (or --plaintext on loopback)")
        else:
            credentials = pki.Credentials.load(cert, key, ca)
        member = Participant(
            coordinator,
            load_policy(policy),
            load_points(data, label=target, y_key=target or "y"),
            credentials,
            plaintext=plaintext,
            give_up_seconds=give_up,
            log=_log,
        )
    try:
        jobs = member.run()
    except ConnectionError as exc:
        _log(f"[bold red]error:[/] {exc}")
        raise typer.Exit(UNREACHABLE) from None
    typer.echo(json.dumps({"participant": member.name, "jobs": jobs}))
