"""Typed configurations: the flat trial config dict parsed into frozen dataclasses.

Every component that reads configuration keys declares them once, as a frozen dataclass in its own
module (``EngineConfig`` in :mod:`trainables.engine`, ``CurriculumConfig`` in
:mod:`trainables.climd`, one per method, e.g. ``OmniFuseConfig``, like ``GPTConfig`` or
``BertConfig``): field name = config key, field default = the default, the comment beside it = its
meaning and source. The search spaces (:mod:`spaces`) read their defaults from these classes.

:func:`from_config` builds one such class from the flat dict (the keys it declares; a ``None``
value means "not set", as PBT records an inactive dimension); :func:`check_keys` refuses a key no
class declares. Both fail with :class:`ConfigError`, one line naming the key and what was expected.

Versions: :data:`CONFIG_VERSION` is recorded in what outlives a run (bundles). A config written
before a rename is upgraded by :func:`upgrade` (:data:`RENAMED`: old key -> new key).
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

CONFIG_VERSION = 2
"""1: the curriculum's key was ``scheduler``; 2: it is ``curriculum``."""

RENAMED: dict[str, str] = {"scheduler": "curriculum"}
"""Keys of older configs (version 1) -> their name now."""

VERSION_KEY = "config_version"

C = TypeVar("C")


class ConfigError(ValueError):
    """A config key that is unknown or has a value of the wrong type; ``str()`` is one line."""


def upgrade(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the keys of older versions renamed (:data:`RENAMED`) and the version key dropped."""
    out = {k: v for k, v in config.items() if k != VERSION_KEY}
    for old, new in RENAMED.items():
        if old in out:
            value = out.pop(old)
            if new in out and out[new] != value:
                raise ConfigError(f"config {old!r} is the old name of {new!r}; give one of them, not both "
                                  f"({old}={value!r}, {new}={out[new]!r})")
            out.setdefault(new, value)
    return out


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def choices(cls: type, name: str) -> tuple[Any, ...]:
    """The values a ``Literal`` field of ``cls`` accepts."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) is not Literal:
        raise TypeError(f"{cls.__name__}.{name} is not a Literal field")
    return typing.get_args(hint)


def from_config(cls: type[C], config: Mapping[str, Any] | C, *, where: str = "config") -> C:
    """An instance of the frozen dataclass ``cls`` from the keys of ``config`` it declares (others
    are left to the other classes); missing or ``None`` keys keep their default. An instance of
    ``cls`` is returned as it is."""
    if isinstance(config, cls):
        return config
    config = upgrade(config)
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in config and config[f.name] is not None:
            values[f.name] = _coerce(f"{where} {f.name!r}", config[f.name], hints[f.name])
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(" ".join(str(exc).split())) from None


def check_keys(config: Mapping[str, Any], classes: Iterable[type], *, where: str = "config",
               prefixed: Mapping[str, type] | None = None) -> None:
    """Refuse a key of ``config`` that none of ``classes`` declares (the old names of
    :data:`RENAMED` count as declared). ``prefixed``: prefix -> class whose fields are config keys
    ``<prefix><field>`` (e.g. ``vae_`` for a resampler's own config)."""
    known = {f for cls in classes for f in field_names(cls)}
    known |= {p + f for p, cls in (prefixed or {}).items() for f in field_names(cls)}
    unknown = [k for k in config if k not in known and k not in RENAMED and k != VERSION_KEY]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(sorted(known))}"
        raise ConfigError(f"{where} {unknown[0]!r}: unknown key; {hint}")


@dataclass(frozen=True)
class TrialConfig:
    """The keys the search driver adds to every trial config (``search.tune.orchestrate.fixed_keys``),
    read by :mod:`trainables.trainable` and :mod:`trainables.trial_data`, not by the model."""

    method: str | None = None           # registry name (trainables.registry.METHODS)
    space: str | None = None            # the search space the config was sampled from
    data: str | None = None             # dataset spec (trainables.data.load_dataset)
    seed: int = 0                       # fixes the folds, then fold k's trainer uses seed + k
    folds: int = 5                      # k of the stratified k-fold; 0 = one hold-out split
    val_fraction: float = 0.2           # held out when folds = 0
    report_at: tuple[int, ...] = ()     # epochs the trial scheduler decides at (ReportCadence)
    report_every: int | None = None     # report every N epochs (None: every epoch)
    report_seconds: float = 0.0         # report at least this often for the progress line
    checkpoint_every: int = 1           # epochs between checkpoints
    metric: Any = None                  # the search's metric(s): a name or a list of names
    mode: Any = None                    # "max" / "min", or a list
    text_encoder: str | None = None     # encoder of raw text modalities
    image_encoder: str | None = None    # encoder of raw image modalities
    cache_dir: str | None = None        # the encoders' feature cache


# ------------------------------------------------------------------------------------ types
def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if _is_union(hint):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _coerce(what: str, value: Any, hint: Any) -> Any:
    """``value`` as the field type ``hint``, or :class:`ConfigError`. Numbers are not strings, a bool
    is no number; an integral float passes as an integer and an integer as a float."""
    ok, out = _try(value, hint)
    if not ok:
        raise ConfigError(f"{what}: expected {_describe(hint)}, got {value!r}")
    return out


def _try(value: Any, hint: Any) -> tuple[bool, Any]:
    if hint is Any:
        return True, value
    origin = typing.get_origin(hint)
    if _is_union(hint):
        for arg in typing.get_args(hint):
            ok, out = _try(value, arg)
            if ok:
                return True, out
        return False, None
    if origin is Literal:
        for arg in typing.get_args(hint):
            if value == arg and type(value) is type(arg):
                return True, arg
        return False, None
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, (list, tuple)):
            return False, None
        parts = [_try(v, item) for v in value]
        return (all(ok for ok, _ in parts), tuple(v for _, v in parts))
    if hint is type(None):
        return value is None, None
    if hint is bool:
        return (True, bool(value)) if isinstance(value, bool) else (False, None)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
            return False, None
        return True, int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False, None
        return True, float(value)
    if hint is str:
        return (True, value) if isinstance(value, str) else (False, None)
    return (True, value) if isinstance(value, hint) else (False, None)
