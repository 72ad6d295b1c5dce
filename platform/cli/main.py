import typer

app = typer.Typer(help="gramfed: distributed, privacy-preserving kernel learning.")


@app.command()
def version() -> None:
    """Print the installed version."""
    from importlib.metadata import version as v

    typer.echo(v("gramfed"))
