"""Rich progress (ADMM rounds, rows), shown on stderr so --json output stays clean."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gramfed.workers.admm import RoundHook, RoundRecord

# Piped output has no terminal width; do not squeeze tables into 80 columns there.
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


@contextmanager
def admm_progress(label: str, max_rounds: int) -> Iterator[RoundHook]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rho {task.fields[rho]:.1e}  primal {task.fields[primal]:.2e}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task(label, total=max_rounds, rho=0.0, primal=0.0)

        def on_round(record: RoundRecord) -> None:
            progress.update(
                task, completed=record.round, rho=record.rho, primal=record.primal_residual
            )

        yield on_round


@contextmanager
def row_progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A bar over ``total`` rows; the hook advances it by the rows just done."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda rows: progress.advance(task, rows)
