"""A search space: the dimensions of one method, its fixed keys, and what it needs to run."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import optuna

from spaces.dimensions import Dimension, Forbidden, _fmt
from trainables.engine import EngineConfig


@dataclass(frozen=True)
class Space:
    """One method's search space.

    Calling the space with an Optuna trial samples a configuration define-by-run: dimensions
    are visited in declaration order and a dimension is suggested only when its conditions hold
    on what was sampled before it, so an inactive parameter never appears in a trial (no
    ``beta`` when ``dwfuse`` is off). ``fixed`` keys are constants every trial of the space gets.
    """

    name: str
    method: str
    """Registry name in :data:`trainables.registry.METHODS`."""
    description: str
    dimensions: tuple[Dimension, ...]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    data: str = "breast-tcga"
    """Default ``--data``: ``synth-clinic`` where the method needs images and reports."""
    requires: tuple[str, ...] = ()
    """Raw modality kinds the data must have (``text``, ``image``)."""
    epochs: int = EngineConfig.epochs
    """Default ``--epochs``: the engine's (CLIMD's T = 100)."""
    text_encoder: str = "minilm"
    """Default ``--text-encoder`` (used only when the data has a text modality)."""
    image_encoder: str = "resnet-tiny"
    """Default ``--image-encoder``: ResNet gives ``pooled``/``map``, ViT gives ``patches``."""
    lr_source: str = ""
    """Where the space's default learning rate (its ``lr`` default or fixed value) comes from: a
    paper, or our own calibration (on which data); ``show`` prints it."""
    forbidden: tuple[Forbidden, ...] = ()
    """Combinations no configuration may have (the code refuses them too)."""
    grace: Callable[[Space, int], int] | None = None
    """Default ``--grace-period`` of ASHA / the median rule, ``(space, epochs) -> epochs`` (None: a
    quarter of the budget); the CLIMD spaces' is :func:`spaces.common.curriculum_grace`."""

    def __post_init__(self) -> None:
        seen: dict[str, Dimension] = {}
        for dim in self.dimensions:
            if dim.name in seen or dim.name in self.fixed:
                raise ValueError(f"space {self.name}: parameter {dim.name!r} declared twice")
            for cond in dim.when:
                for w in getattr(cond, "conditions", (cond,)):
                    if w.param in self.fixed:
                        continue
                    if w.param not in seen:
                        raise ValueError(f"space {self.name}: {dim.name!r} depends on {w.param!r}, "
                                         "neither fixed nor declared before it")
                    if not all(seen[w.param].contains(v) for v in w.values):
                        raise ValueError(f"space {self.name}: condition {w} names a value {w.param!r} cannot take")
            if not dim.contains(dim.default):
                raise ValueError(f"space {self.name}: default {dim.default!r} of {dim.name!r} outside {dim.describe()}")
            bad = [v for v in dim.grid if not dim.contains(v)]
            if bad:
                raise ValueError(f"space {self.name}: grid values {bad} of {dim.name!r} outside {dim.describe()}")
            seen[dim.name] = dim
        for rule in self.forbidden:
            for w in rule.conditions:
                if w.param not in seen and w.param not in self.fixed:
                    raise ValueError(f"space {self.name}: forbidden combination {rule} names {w.param!r}, "
                                     "neither fixed nor declared")
            last = max((w for w in rule.conditions if w.param in seen), key=lambda w: self.names.index(w.param))
            seen[last.param].excluding(last.values)  # the conditional domain exists (an int's end value, a choice)
        if self.forbids(self.default_config()):
            raise ValueError(f"space {self.name}: its default configuration is forbidden ({self.forbids(self.default_config())})")

    def forbids(self, config: Mapping[str, Any]) -> str:
        """The forbidden combination ``config`` has (its description), or ``""``."""
        return next((str(rule) for rule in self.forbidden if rule.holds(dict(config))), "")

    @property
    def default_lr(self) -> float | None:
        """The learning rate of the space's default configuration."""
        return self.default_config().get("lr")

    # ------------------------------------------------------------------ sampling
    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        """Optuna define-by-run function: suggests the active dimensions, returns the fixed keys."""
        config: dict[str, Any] = dict(self.fixed)
        for dim in self.dimensions:
            if dim.active(config):
                config[dim.name] = self.allowed(dim, config).suggest(trial)
        return dict(self.fixed)

    def allowed(self, dim: Dimension, config: Mapping[str, Any]) -> Dimension:
        """``dim`` as it may be drawn after ``config``: without the values of a forbidden combination
        whose other conditions hold (the combination's last-declared parameter is the one narrowed)."""
        excluded: list[Any] = []
        for rule in self.forbidden:
            mine = [w for w in rule.conditions if w.param == dim.name]
            others = [w for w in rule.conditions if w.param != dim.name]
            if mine and all(w.param in config for w in others) and all(w.holds(dict(config)) for w in others):
                excluded += [v for w in mine for v in w.values]
        return dim.excluding(tuple(excluded)) if excluded else dim

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """A whole configuration (sampled dimensions plus fixed keys) from one Optuna trial."""
        self(trial)
        return {**trial.params, **self.fixed}

    def default_point(self) -> dict[str, Any]:
        """The paper's default values of the active dimensions (what is enqueued as trial 1)."""
        config: dict[str, Any] = dict(self.fixed)
        for dim in self.dimensions:
            if dim.active(config):
                config[dim.name] = dim.default
        return {k: v for k, v in config.items() if k not in self.fixed}

    def default_grace(self, epochs: int) -> int:
        """Epochs a trial trains before ASHA or the median rule may stop it, for a budget of ``epochs``."""
        return min(epochs, self.grace(self, epochs)) if self.grace is not None else max(1, epochs // 4)

    def default_config(self) -> dict[str, Any]:
        return {**self.default_point(), **self.fixed}

    def only(self, *names: str) -> Space:
        """The same space searching only ``names``: every other dimension is held at its default (a
        fixed key where it is active at the default point, gone where it is not), so e.g.
        ``only("lr")`` is a learning-rate-only search of the method at its defaults otherwise."""
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise KeyError(f"space {self.name} has no dimension {unknown[0]!r}; it has {', '.join(self.names)}")
        held = {k: v for k, v in self.default_point().items() if k not in names}
        return replace(self, dimensions=tuple(d for d in self.dimensions if d.name in names),
                       fixed={**self.fixed, **held},
                       # a rule over held keys alone is settled by the default point, which obeys it
                       forbidden=tuple(r for r in self.forbidden if any(w.param in names for w in r.conditions)),
                       description=f"{self.description} (searching only {', '.join(names)})")

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def dimension(self, name: str) -> Dimension:
        for d in self.dimensions:
            if d.name == name:
                return d
        raise KeyError(f"space {self.name} has no dimension {name!r}; it has {', '.join(self.names)}")

    def validate(self, config: Mapping[str, Any]) -> list[str]:
        """Problems of a configuration: missing active parameters, inactive ones present, values
        outside their distribution, fixed keys changed. Empty when it is a valid sample."""
        problems = []
        active: dict[str, Any] = dict(self.fixed)
        for dim in self.dimensions:
            if dim.active(active):
                if dim.name not in config:
                    problems.append(f"{dim.name}: missing although active")
                    continue
                if not dim.contains(config[dim.name]):
                    problems.append(f"{dim.name}={config[dim.name]!r} outside {dim.describe()}")
                active[dim.name] = config[dim.name]
            elif dim.name in config:
                problems.append(f"{dim.name}: present although inactive ({', '.join(map(str, dim.when))} does not hold)")
        for key, value in self.fixed.items():
            if key in config and config[key] != value:
                problems.append(f"{key}={config[key]!r} but the space fixes it to {value!r}")
        forbidden = self.forbids({**self.fixed, **config})
        if forbidden:
            problems.append(f"forbidden combination: {forbidden}")
        return problems

    def grid_points(self, seed: int = 0) -> list[dict[str, Any]]:
        """The paper-style grid: the product of every active dimension's grid values (dimensions
        without grid values stay at their default). The paper default comes first, the other
        points follow in a seeded random order, so a truncated grid still covers the space."""
        partial: list[dict[str, Any]] = [dict(self.fixed)]
        for dim in self.dimensions:
            values = tuple(dict.fromkeys((dim.default, *dim.grid)))
            nxt = []
            for point in partial:
                if dim.active(point):
                    nxt.extend({**point, dim.name: v} for v in values)
                else:
                    nxt.append(point)
            partial = nxt
        points = [{k: v for k, v in p.items() if k not in self.fixed} for p in partial if not self.forbids(p)]
        default = self.default_point()
        rest = [p for p in points if p != default]
        random.Random(seed).shuffle(rest)
        return [default, *rest]

    def mutable(self) -> list[Dimension]:
        """Dimensions PBT may perturb: marked mutable and active in every configuration."""
        return [d for d in self.dimensions if d.mutable and (not d.when or d.active(dict(self.fixed)) and
                                                              all(p in self.fixed for c in d.when for p in c.params))]

    @property
    def representations(self) -> dict[str, tuple[str, ...]]:
        """Encoder outputs the method reads for raw text/image modalities (from the registry)."""
        from trainables.registry import get_method

        return dict(get_method(self.method).representations)

    # ------------------------------------------------------------------ printing
    def summary(self) -> str:
        return f"{self.name:<24} {self.method:<14} {self.data:<13} {len(self.dimensions):>4}  {self.description}"

    def show(self) -> str:
        """Every dimension with its distribution, default, condition and grid values."""
        lines = [
            f"{self.name}: {self.description}",
            f"  method {self.method}; default data {self.data}; default epochs {self.epochs}"
            + f"; default grace {self.default_grace(self.epochs)} epochs"
            + (f"; needs {' and '.join(self.requires)} modalities" if self.requires else ""),
        ]
        try:
            reps = self.representations
        except KeyError:
            reps = {}
        if reps:
            lines.append("  encoder outputs: " + "; ".join(f"{k} -> {', '.join(v)}" for k, v in reps.items()))
        rows = [("parameter", "distribution", "default", "active when", "grid", "meaning")]
        for d in self.dimensions:
            rows.append((
                d.name + (" *" if d.mutable else ""),
                d.describe(),
                _fmt(d.default),
                " and ".join(map(str, d.when)) or "always",
                ", ".join(_fmt(v) for v in d.grid) or "-",
                d.help,
            ))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if self.fixed:
            lines.append("  fixed: " + ", ".join(f"{k}={_fmt(v)}" for k, v in self.fixed.items()))
        for rule in self.forbidden:
            last = max((w.param for w in rule.conditions if w.param in self.names), key=self.names.index)
            lines.append(f"  forbidden: {rule}; {last} is drawn without it")
        if self.default_lr is not None:
            lines.append(f"  default learning rate {_fmt(self.default_lr)}: {self.lr_source or 'source not documented'}")
        lines.append(f"  grid points: {len(self.grid_points())}   (* = perturbed by PBT)")
        return "\n".join(lines)


def combine(*parts: tuple[Dimension, ...]) -> tuple[Dimension, ...]:
    """Concatenate dimension groups (later groups may condition on earlier ones)."""
    return tuple(itertools.chain.from_iterable(parts))
