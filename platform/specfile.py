"""TOML specification files validated by pydantic, with one-line errors naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

T = TypeVar("T", bound=BaseModel)


class SpecError(ValueError):
    """A specification file that is missing, malformed or invalid; the message is one line."""


def load_toml_model(path: Path, model: type[T]) -> T:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            raise SpecError(f"{path.name}: unknown key '{key}'") from None
        got = f" (got {error['input']!r})" if not isinstance(error["input"], dict) else ""
        raise SpecError(f"{path.name}: {key}: {error['msg']}{got}") from None
