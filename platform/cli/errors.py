"""Turn a user's mistake into one clear line and exit code 2, never a traceback; show a
warning as one line too, without the source line Python would print under it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.text import Text

from gramfed.platform.cli.progress import stderr
from gramfed.privacy.errors import BudgetExceeded, NonDPReleaseRefused

USAGE_ERROR = 2


@contextmanager
def user_errors() -> Iterator[None]:
    shown = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield
    # A refused budget or recipient is the user's to fix too: the refusal already says how much
    # was asked, how much is left, or whom the pool trusts.
    except (
        ValueError,
        KeyError,
        FileNotFoundError,
        FloatingPointError,
        BudgetExceeded,
        NonDPReleaseRefused,
    ) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        stderr.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
        raise typer.Exit(USAGE_ERROR) from None
    finally:
        warnings.showwarning = shown


def _show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    stderr.print(Text.assemble(("warning: ", "bold yellow"), str(message)), soft_wrap=True)
