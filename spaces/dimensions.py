"""Declarative search dimensions: what a space searches, declared once, sampled by Optuna.

A dimension knows its distribution, its paper default, when it is active (conditions on
dimensions declared before it) and the values a grid search visits. :class:`spaces.space.Space`
turns a tuple of them into Optuna's define-by-run function, so ``python -m search.spaces show``
prints exactly what a search samples.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, replace
from typing import Any

import optuna
from ray import tune


@dataclass(frozen=True)
class When:
    """Condition ``config[param] in values``; a dimension is active when all its conditions hold."""

    param: str
    values: tuple[Any, ...]

    def __init__(self, param: str, *values: Any) -> None:
        object.__setattr__(self, "param", param)
        object.__setattr__(self, "values", tuple(values))

    def holds(self, config: dict[str, Any]) -> bool:
        return self.param in config and config[self.param] in self.values

    @property
    def params(self) -> tuple[str, ...]:
        return (self.param,)

    def __str__(self) -> str:
        if len(self.values) == 1:
            return f"{self.param}={_fmt(self.values[0])}"
        return f"{self.param} in {{{', '.join(_fmt(v) for v in self.values)}}}"


@dataclass(frozen=True)
class AnyOf:
    """Holds when at least one of its conditions holds (e.g. a CRA exists if either imputation is on)."""

    conditions: tuple[When, ...]

    def __init__(self, *conditions: When) -> None:
        object.__setattr__(self, "conditions", tuple(conditions))

    def holds(self, config: dict[str, Any]) -> bool:
        return any(c.holds(config) for c in self.conditions)

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(p for c in self.conditions for p in c.params)

    def __str__(self) -> str:
        return "(" + " or ".join(map(str, self.conditions)) + ")"


Condition = When | AnyOf


@dataclass(frozen=True)
class Forbidden:
    """A combination no configuration of the space may have: all ``conditions`` hold at once.
    The code refuses it too (one line). The space never samples it (the last-declared parameter of
    the combination is drawn without the forbidden values while the other conditions hold: a
    conditional domain), says so before a trial starts (``Space.validate``), leaves it out of its
    grid and shows it."""

    conditions: tuple[When, ...]
    reason: str

    def holds(self, config: dict[str, Any]) -> bool:
        return all(c.holds(config) for c in self.conditions)

    def __str__(self) -> str:
        return " and ".join(map(str, self.conditions)) + f" ({self.reason})"


@dataclass(frozen=True)
class Dimension:
    name: str
    _: KW_ONLY
    default: Any
    when: tuple[Condition, ...] = ()
    grid: tuple[Any, ...] = ()
    """Values a grid search visits; empty = held at the default in a grid search."""
    mutable: bool = False
    """PBT may perturb it in the middle of a trial (it does not change any layer shape)."""
    help: str = ""

    def active(self, config: dict[str, Any]) -> bool:
        return all(w.holds(config) for w in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def contains(self, value: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def tune_domain(self) -> tune.search.sample.Domain:  # pragma: no cover - abstract
        """The same distribution as a Ray Tune domain (PBT's ``hyperparam_mutations``)."""
        raise NotImplementedError

    def excluding(self, values: tuple[Any, ...]) -> Dimension:
        """The dimension without ``values`` (a forbidden combination's, see :class:`Forbidden`)."""
        raise ValueError(f"{self.name}: {type(self).__name__} cannot leave out values {values}")


@dataclass(frozen=True)
class Float(Dimension):
    low: float
    high: float
    _: KW_ONLY
    log: bool = False

    def suggest(self, trial: optuna.Trial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
            and self.low <= value <= self.high

    def describe(self) -> str:
        return f"float [{_fmt(self.low)}, {_fmt(self.high)}]" + (" log" if self.log else "")

    def tune_domain(self) -> tune.search.sample.Domain:
        return tune.loguniform(self.low, self.high) if self.log else tune.uniform(self.low, self.high)

    def excluding(self, values: tuple[Any, ...]) -> Float:
        if any(v in (self.low, self.high) for v in values):
            raise ValueError(f"{self.name}: a float dimension cannot leave out its bound")
        return self  # single points of a continuous range are never drawn


@dataclass(frozen=True)
class Int(Dimension):
    low: int
    high: int
    _: KW_ONLY
    log: bool = False

    def suggest(self, trial: optuna.Trial) -> int:
        return trial.suggest_int(self.name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high

    def describe(self) -> str:
        return f"int [{self.low}, {self.high}]" + (" log" if self.log else "")

    def tune_domain(self) -> tune.search.sample.Domain:
        return tune.lograndint(self.low, self.high + 1) if self.log else tune.randint(self.low, self.high + 1)

    def excluding(self, values: tuple[Any, ...]) -> Int:
        """The range narrowed past excluded end values; an excluded value inside it is refused."""
        low, high = self.low, self.high
        while low in values and low < high:
            low += 1
        while high in values and high > low:
            high -= 1
        if any(low <= v <= high for v in values):
            raise ValueError(f"{self.name}: an int dimension can leave out values at its ends only, not {values}")
        return replace(self, low=low, high=high)


@dataclass(frozen=True)
class Categorical(Dimension):
    choices: tuple[Any, ...]

    def suggest(self, trial: optuna.Trial) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def contains(self, value: Any) -> bool:
        # bool is an int subclass: compare types too, so True never stands for 1
        return any(value == c and type(value) is type(c) for c in self.choices)

    def describe(self) -> str:
        return "choice {" + ", ".join(_fmt(c) for c in self.choices) + "}"

    def tune_domain(self) -> tune.search.sample.Domain:
        return tune.choice(list(self.choices))

    def excluding(self, values: tuple[Any, ...]) -> Categorical:
        kept = tuple(c for c in self.choices if not any(c == v and type(c) is type(v) for v in values))
        if not kept:
            raise ValueError(f"{self.name}: leaving out {values} leaves no choice")
        return replace(self, choices=kept)


def Switch(name: str, *, default: bool = True, help: str = "") -> Categorical:
    """An ablation switch: on/off, both visited by a grid search."""
    return Categorical(name, (True, False), default=default, grid=(True, False), help=help)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
