"""The one parse path of the options: what a field of :class:`search.prepare.config.SearchConfig` says of
itself (its help, its choices, the values it takes) and the typing and checking of given values by it.

The command line (:mod:`search.prepare.cli`), a YAML ``--config`` file, :func:`search.run_search` and the
``search.json`` a resumed search reads back (:func:`from_saved`) all go through :func:`typed`, field by
field; what depends on several options is :func:`search.prepare.resolve.resolve`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from search.prepare.config import OPTIONS, Refused, SearchConfig, flag
from search.prepare.errors import UsageError
from search.trust.credentials import URI_OPTIONS, check_options, redact

_HINTS: dict[str, Any] = {f.name: f.type for f in fields(SearchConfig)}
"""Each option's annotation: its type with the pydantic field (help, constraints) and validators."""


# ----------------------------------------------------------------------------- what a field says of itself
def _parts(hint: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, m1, ...]`` (nested, or ``| None``) -> (the innermost type, every metadata item)."""
    meta: list[Any] = []
    while True:
        if get_origin(hint) is Annotated:
            meta += list(hint.__metadata__)
            hint = hint.__origin__
        elif get_origin(hint) in (Union, type(int | None)) and type(None) in get_args(hint):
            (hint,) = [a for a in get_args(hint) if a is not type(None)]
        else:
            return hint, meta


@cache
def info(name: str) -> FieldInfo:
    """The pydantic field of option ``name``: its ``description`` (help) and ``json_schema_extra``
    (``shown``, ``metavar``, ``hidden``)."""
    return next(m for m in reversed(_parts(_HINTS[name])[1]) if isinstance(m, FieldInfo) and m.description)


def choices(name: str) -> tuple[Any, ...] | None:
    """The values option ``name`` may take, where they are a fixed set (a registry's names)."""
    base, _ = _parts(_HINTS[name])
    return get_args(base) if get_origin(base) is Literal else None


def is_flag_only(name: str) -> bool:
    """An option without a value on the command line (``--resume``)."""
    return _parts(_HINTS[name])[0] is bool


def expected(name: str) -> str:
    """What option ``name`` takes, for messages: ``an integer >= 1``, ``one of tpe, random, ...``."""
    base, meta = _parts(_HINTS[name])
    if get_origin(base) is Literal:
        return "one of " + ", ".join(map(str, get_args(base)))
    if get_origin(base) is tuple:
        return "JSON objects of parameter values" if get_args(base)[0] is not str else "comma-separated names"
    what = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(base, str(base))
    bounds = {type(m).__name__.lower(): getattr(m, type(m).__name__.lower())
              for i in meta for m in ([i, *i.metadata] if isinstance(i, FieldInfo) else [i])
              if type(m).__name__ in ("Ge", "Gt", "Le", "Lt")}  # annotated_types' bounds, pydantic's constraints
    if "ge" in bounds and "le" in bounds:
        return f"{what} from {bounds['ge']} to {bounds['le']}"
    if "gt" in bounds and "lt" in bounds:
        return f"{what} in ({bounds['gt']}, {bounds['lt']})"
    symbols = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " ".join([what, *(f"{symbols[k]} {v}" for k, v in bounds.items())])


# ----------------------------------------------------------------------------- the one parse path
@cache
def _adapter(name: str) -> TypeAdapter:
    # a YAML `name: 2024` or `experiment: 7` is the string it reads as
    return TypeAdapter(_HINTS[name], config=ConfigDict(coerce_numbers_to_str=True))


def shown(name: str, value: Any) -> str:
    """``value`` of option ``name`` as a message shows it (URIs redacted, lists comma-separated)."""
    if name in URI_OPTIONS:
        return str(redact(value, bare_token=name == "address"))
    if isinstance(value, (list, tuple)):
        return ",".join(json.dumps(v, default=str) if isinstance(v, dict) else str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def typed(values: Mapping[str, Any]) -> dict[str, Any]:
    """Options by field name, each as given (a command-line string, a YAML or JSON value, a Python
    value) -> the same options typed and checked one by one (``"20"`` -> 20, ``"a,b"`` -> ``("a",
    "b")``, a list -> a tuple); credentials refused first. One-line :class:`UsageError` naming the
    first bad option. What depends on several options is :func:`search.prepare.resolve.resolve`'s."""
    check_options(dict(values))  # before anything below may show a value
    out = {}
    for name, value in values.items():
        if name not in OPTIONS:
            raise UsageError(f"unknown option {name!r}; known: {', '.join(OPTIONS)}")
        try:
            out[name] = _adapter(name).validate_python(value)
        except ValidationError as exc:
            raise UsageError(_message(name, value, exc)) from None
    return out


def _message(name: str, value: Any, exc: ValidationError) -> str:
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, Refused):
        what, value_shown = str(cause), cause.shown if cause.shown is not None else shown(name, value)
    else:
        what, value_shown = f"expected {expected(name)}", shown(name, value)
    return f"{flag(name)} {value_shown}: {what}" if value_shown != "" else f"{flag(name)}: {what}"


def validated(cfg: SearchConfig) -> SearchConfig:
    """``cfg`` with every option typed and checked (:func:`typed`): a config built in Python
    (``SearchConfig(grace_period=2.5)``) is checked like one from the command line."""
    return SearchConfig(**typed({f.name: getattr(cfg, f.name) for f in fields(cfg)}))


def from_saved(saved: Mapping[str, Any], where: str = "search.json") -> SearchConfig:
    """The options a search saved (``search.json``, :meth:`SearchConfig.as_saved`), also as an
    earlier fusetune wrote them, read back through :func:`typed`."""
    unknown = [k for k in saved if k not in OPTIONS]
    if unknown:
        raise UsageError(f"{where}: unknown option {unknown[0]!r} (written by another fusetune version?)")
    if "space" not in saved:
        raise UsageError(f"{where}: no space")
    # a search of a fusetune without ensembles kept no out-of-fold predictions
    return SearchConfig(**typed({"ensemble": "off", **saved}))

