"""TOML specification files validated by pydantic v2, with one-line errors.

Models passed to ``load_toml_model`` (and every model nested in them) must forbid unknown keys::

    class AdmmSection(BaseModel):
        model_config = ConfigDict(extra="forbid")

so that a misspelt key is reported instead of silently falling back to a default.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tomllib
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, RootModel, ValidationError
from pydantic_core import ErrorDetails

T = TypeVar("T", bound=BaseModel)
PathLike = str | os.PathLike[str]

__all__ = ["SpecError", "load_toml_model"]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)$")
_MAX_INPUT_REPR = 60


class SpecError(ValueError):
    """A specification file that is missing, malformed or invalid; the message is one line."""


def load_toml_model(path: PathLike, model: type[T]) -> T:
    """Read ``path`` as TOML and validate it as ``model``.

    Raises ``SpecError`` for the file's problems and ``TypeError`` if ``model`` (or a model
    nested in it) does not forbid unknown keys.
    """
    _require_forbid(model)
    path = Path(path)
    raw = _read_toml(path)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_describe(path, model, raw, exc)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read ({exc.strerror or exc.__class__.__name__})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SpecError(f"{path}: line {line}: not valid TOML: not UTF-8 text") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(_syntax_error(path, text, exc)) from None


def _syntax_error(path: Path, text: str, exc: tomllib.TOMLDecodeError) -> str:
    message = str(exc.args[0]) if exc.args else str(exc)
    # Python 3.14 exposes the position as attributes; 3.11-3.13 only in the message.
    line, column = getattr(exc, "lineno", None), getattr(exc, "colno", None)
    match = _TOML_POSITION.search(message)
    if match:
        message = message[: match.start()]
        if line is None and match.group(1):
            line, column = int(match.group(1)), int(match.group(2))
    if line is None:  # "at end of document": the problem is on the last line
        line = text.rstrip("\n").count("\n") + 1
    where = f"line {line}" + (f", column {column}" if column else "")
    return f"{path}: {where}: not valid TOML: {_one_line(message)}"


def _describe(path: Path, model: type[BaseModel], raw: Any, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    # A misspelt key usually also makes the intended key "missing"; the spelling is the cause.
    errors.sort(key=lambda error: error["type"] != "extra_forbidden")
    locs = [_input_loc(raw, error) for error in errors]
    error, loc = errors[0], locs[0]
    key = _format_loc(loc)
    # A value outside a union fails once per member, at the same key: one problem, not several.
    same = [other for other, where in zip(errors, locs, strict=True) if where == loc]
    more = len(errors) - len(same)
    suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key '{key}'{_suggestion(model, loc)}{suffix}"
    if error["type"] == "missing":
        return f"{path}: {key}: required key is missing{suffix}"
    message = " or ".join(_message(other["msg"], drop_lead=i > 0) for i, other in enumerate(same))
    value = error.get("input")
    got = "" if isinstance(value, dict | BaseModel) else f" (got {_short_repr(value)})"
    head = f"{path}: {key}: " if key else f"{path}: "
    return f"{head}{message}{got}{suffix}"


def _message(text: str, *, drop_lead: bool) -> str:
    text = _one_line(text)
    for prefix in ("Value error, ", "Assertion failed, "):
        text = text.removeprefix(prefix)
    return text.removeprefix("Input should be ") if drop_lead else text


def _input_loc(raw: Any, error: ErrorDetails) -> list[str | int]:
    """The error's location as keys of the TOML input.

    Pydantic adds union members and validator names (``int``, ``function-after[...]``) to
    locations; they are not keys the user wrote, so they are dropped.
    """
    loc = list(error["loc"])
    out: list[str | int] = []
    current = raw
    for i, part in enumerate(loc):
        in_dict = isinstance(current, dict) and part in current
        in_list = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if in_dict or in_list:
            out.append(part)
            current = current[part]
        elif i == len(loc) - 1 and error["type"] == "missing" and isinstance(current, dict):
            out.append(part)
    return out


def _format_loc(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            key = part if _BARE_KEY.match(part) else '"' + part.replace('"', '\\"') + '"'
            text += f".{key}" if text else key
    return text


def _suggestion(model: type[BaseModel], loc: Sequence[str | int]) -> str:
    if not loc or not isinstance(loc[-1], str):
        return ""
    section = _model_at(model, loc[:-1])
    if section is None:
        return ""
    known = [field.alias or name for name, field in section.model_fields.items()]
    close = difflib.get_close_matches(loc[-1], known, n=1)
    if close:
        return f"; did you mean '{_format_loc([*loc[:-1], close[0]])}'?"
    return f" (known keys here: {', '.join(known)})" if known else ""


def _model_at(model: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class that validates the table at ``loc``, where it is unambiguous."""
    current: type[BaseModel] = model
    for part in loc:
        if isinstance(part, int):
            continue  # list items: _models_in already looked through list[...] annotations
        fields = {field.alias or name: field for name, field in current.model_fields.items()}
        if part not in fields:
            return None
        candidates = _models_in(fields[part].annotation)
        if len(candidates) != 1:
            return None
        current = candidates[0]
    return current


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Model classes appearing in a field annotation (through Optional, list, dict, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        for item in _models_in(arg):
            if item not in found:
                found.append(item)
    return found


@functools.cache
def _require_forbid(model: type[BaseModel]) -> None:
    pending, seen = [model], set()
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        # RootModel cannot set 'extra'; its own keys come from the model it wraps.
        if not issubclass(cls, RootModel) and cls.model_config.get("extra") != "forbid":
            raise TypeError(
                f"{cls.__name__} must reject unknown keys: add "
                "model_config = ConfigDict(extra='forbid') to it"
            )
        for field in cls.model_fields.values():
            pending.extend(_models_in(field.annotation))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _short_repr(value: Any) -> str:
    text = _one_line(repr(value))
    return text if len(text) <= _MAX_INPUT_REPR else text[: _MAX_INPUT_REPR - 3] + "..."
