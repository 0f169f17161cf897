"""What depends on several options: :func:`resolve` fills the defaults that depend on the space (data,
epochs, encoders, name) and checks the options' combinations and the space's dimensions, after every
option was typed and checked alone (:func:`search.prepare.parse.validated`).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

from search.prepare import registry_names as registries
from search.prepare.config import SearchConfig, default, natural_mode
from search.prepare.errors import UsageError
from search.prepare.parse import validated
from spaces import Space, get_space
from trainables.metrics import METRICS


# ----------------------------------------------------------------------------- what depends on several options
def resolve(cfg: SearchConfig) -> SearchConfig:
    """Check every option (:func:`validated`), fill the defaults that depend on the space and check
    what depends on several options; :class:`UsageError` on the first problem."""
    cfg = validated(cfg)
    space = get_space(cfg.space)
    unknown_dims = [n for n in cfg.only if n not in space.names]
    if unknown_dims:
        raise UsageError(f"--only {','.join(cfg.only)}: {unknown_dims[0]!r} is not a dimension of space {space.name} "
                         f"({', '.join(space.names)})")
    space = cfg.space_spec
    metric, mode = _objectives(cfg)
    ensemble = _ensemble(cfg, metric[0])
    sampler, scheduler = registries.SAMPLERS[cfg.sampler], registries.SCHEDULERS[cfg.scheduler]
    if len(metric) > 1 and not sampler.multi_objective:
        raise UsageError(f"--sampler {cfg.sampler}: optimises one objective; --metric lists {len(metric)} "
                         f"(use one of {', '.join(registries.with_trait(registries.SAMPLERS, 'multi_objective'))})")
    if scheduler.population:
        _check_population(cfg, space, metric)
    for point in cfg.points:
        check_point(point, space)
    if cfg.optuna_storage is not None:
        from search.tune.optuna_storage import check_url

        check_url(cfg.optuna_storage)
    epochs = cfg.epochs or space.epochs
    _check_grace(cfg, epochs, space.default_grace(epochs))
    data = cfg.data or space.data
    name = cfg.name or f"{cfg.space}-{replace(cfg, data=data).data_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or name in (".", ".."):
        raise UsageError(f"--name {name}: must be a plain folder name")
    if cfg.warm_start is not None and ("/" in cfg.warm_start or cfg.warm_start in (".", "..", name)):
        raise UsageError(f"--warm-start {cfg.warm_start}: must name another, earlier search (its --name)")
    grace = cfg.grace_period if cfg.grace_period is not None else space.default_grace(epochs)
    return replace(
        cfg, data=data, name=name, metric=metric, mode=mode, ensemble=ensemble,
        epochs=epochs, grace_period=grace if scheduler.grace else None,
        text_encoder=cfg.text_encoder or space.text_encoder,
        image_encoder=cfg.image_encoder or space.image_encoder,
    )


def _check_population(cfg: SearchConfig, space: Space, metric: tuple[str, ...]) -> None:
    """A scheduler that draws a fixed population at random (PBT): no sampler but the default or a
    random one, one objective, a dimension to perturb, no Optuna study."""
    option = f"--scheduler {cfg.scheduler}"
    if cfg.sampler != default("sampler") and not registries.SAMPLERS[cfg.sampler].at_random:
        at_random = registries.with_trait(registries.SAMPLERS, "at_random")
        raise UsageError(f"--sampler {cfg.sampler}: {cfg.scheduler.upper()} draws its initial population at random "
                         f"and cannot use a search algorithm; use --sampler {' or '.join(at_random)} (or leave the "
                         "default)")
    if len(metric) > 1:
        raise UsageError(f"{option}: optimises one objective; give one --metric")
    if not space.mutable():
        raise UsageError(f"{option}: space {space.name} has no dimension {cfg.scheduler.upper()} may perturb")
    if cfg.optuna_storage is not None:
        raise UsageError(f"--optuna-storage: {option} draws its population without Optuna; there is no study to store")


def _check_grace(cfg: SearchConfig, epochs: int, space_default: int) -> None:
    """A given ``--grace-period``: read by the scheduler, within the budget, or the space's own
    default (a CLIMD space's is the whole budget; a resolved config fed back, ``--print-config``)."""
    if cfg.grace_period is None:
        return
    if not registries.SCHEDULERS[cfg.scheduler].grace:
        readers = registries.with_trait(registries.SCHEDULERS, "grace")
        raise UsageError(f"--grace-period: only --scheduler {' and '.join(readers)} use a grace period "
                         f"(this search uses {cfg.scheduler})")
    if not 1 <= cfg.grace_period < epochs and cfg.grace_period != space_default:
        raise UsageError(f"--grace-period {cfg.grace_period}: must be a whole number of epochs from 1 to "
                         f"--epochs - 1 ({epochs - 1})")


def check_point(point: dict[str, Any], space: Space) -> None:
    """A ``--points`` entry (a partial configuration; the sampler fills the rest): every key a
    dimension of the space, every value of its type and in its range or choices, no value for a
    dimension its own given values switch off. :class:`UsageError` naming the point and the field."""
    shown = json.dumps(point, sort_keys=True, default=str)
    for key, value in point.items():
        if key not in space.names:
            raise UsageError(f"--points {shown}: {key!r} is not a dimension of space {space.name} "
                             f"({', '.join(space.names)})")
        dim = space.dimension(key)
        if not dim.contains(value):
            raise UsageError(f"--points {shown}: {key}={json.dumps(value, default=str)} is outside the space "
                             f"({dim.describe()})")
        decided = [w for w in dim.when if all(p in point for p in w.params)]
        if not all(w.holds(point) for w in decided):
            raise UsageError(f"--points {shown}: {key} is not searched when "
                             f"{' and '.join(str(w) for w in decided if not w.holds(point))} does not hold")


def _objectives(cfg: SearchConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The metrics and modes; a sampler with a spread objective (nsga2) given one metric adds
    ``<metric>_std`` (minimised): performance against its fold-to-fold stability."""
    metric = cfg.metric
    if registries.SAMPLERS[cfg.sampler].spread_objective and len(metric) == 1:
        if cfg.folds == 0:
            raise UsageError(f"--sampler {cfg.sampler}: with --folds 0 there is no fold spread to trade off; "
                             "give two metrics, e.g. --metric macro_f1,auroc")
        if metric[0].endswith("_std") or metric[0] == "loss":
            raise UsageError(f"--sampler {cfg.sampler}: give two metrics (one was given: {metric[0]})")
        metric = (metric[0], f"{metric[0]}_std")
    mode = cfg.mode
    if not mode:
        mode = tuple(natural_mode(m) for m in metric)
    elif len(mode) == 1 and len(metric) == 2 and len(cfg.metric) == 1:
        mode = (mode[0], "min")
    if len(mode) != len(metric):
        raise UsageError(f"--mode {','.join(mode)}: give one mode per metric ({len(metric)})")
    return metric, mode


def _ensemble(cfg: SearchConfig, first_metric: str) -> str:
    """``--ensemble`` checked and filled: an ensemble is only ever handed off once confirmed on fresh
    folds, and it is selected on the first objective, which must be a classification metric."""
    if cfg.ensemble is None:
        return "trials+references" if cfg.confirm_repeats > 0 and first_metric in METRICS else "off"
    if cfg.ensemble != "off" and cfg.confirm_repeats == 0:
        raise UsageError(f"--ensemble {cfg.ensemble} with --confirm-repeats 0: the ensemble would be unconfirmed and "
                         "never promoted over an existing champion; give --confirm-repeats 1 or more, or --ensemble off")
    if cfg.ensemble != "off" and first_metric not in METRICS:
        raise UsageError(f"--ensemble {cfg.ensemble}: the ensemble is selected on the first --metric, which must be "
                         f"one of {', '.join(METRICS)} (got {first_metric})")
    return cfg.ensemble
