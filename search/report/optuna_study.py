"""The Optuna study the reports draw: one trial per Ray trial of a search, rebuilt from its results.

:func:`rebuild_optuna_study` rebuilds an Optuna study from the search's own results (one
``optuna.trial.create_trial`` per Ray trial, with the space's distributions; the same for every
sampler, so the reports of a TPE, random, grid or CMA-ES search look alike).

Trial states in the rebuilt study: a trial that finished all its epochs is ``COMPLETE`` with its
final value; one an early-stopping scheduler stopped is ``PRUNED`` (its per-epoch values are the
intermediate values); an errored trial is ``FAIL``. Multi-objective searches are reported on their
first metric.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from search.prepare.objective import Objective
from search.select.results import StudyResults

DRIVER_KEYS = frozenset({"method", "space", "data", "seed", "folds", "epochs", "metric", "mode", "text_encoder",
                         "image_encoder", "cache_dir", "val_fraction"})
"""Fixed keys the search driver adds to every config: never search parameters."""


# ----------------------------------------------------------------------------- the Optuna study
def _space_distributions(space_name: str | None) -> dict[str, BaseDistribution]:
    """Optuna distributions of a registered space's dimensions (empty for an unknown space)."""
    if not space_name:
        return {}
    from spaces import SPACES, Categorical, Float, Int

    space = SPACES.get(space_name)
    if space is None:
        return {}
    builders: dict[type, Callable[[Any], BaseDistribution]] = {
        Float: lambda d: FloatDistribution(d.low, d.high, log=d.log),
        Int: lambda d: IntDistribution(d.low, d.high, log=d.log),
        Categorical: lambda d: CategoricalDistribution(list(d.choices)),
    }
    return {d.name: builders[type(d)](d) for d in space.dimensions if type(d) in builders}


def _widen(dist: BaseDistribution | None, values: list[Any]) -> BaseDistribution | None:
    """A distribution containing every observed value (PBT may leave a range; a user space may be
    unregistered here, then the distribution is inferred from the values)."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if isinstance(dist, CategoricalDistribution) or (dist is None and not numeric):
        choices = list(dist.choices) if dist is not None else []
        for v in values:
            if not any(v == c and type(v) is type(c) for c in choices):
                choices.append(v)
        try:
            return CategoricalDistribution(choices)
        except ValueError:  # e.g. lists as values: not a plottable parameter
            return None
    if not numeric:
        return None
    low, high = min(values), max(values)
    if isinstance(dist, IntDistribution) or (dist is None and all(isinstance(v, int) for v in values)):
        log = getattr(dist, "log", False)
        return IntDistribution(int(min(low, dist.low if dist else low)), int(max(high, dist.high if dist else high)), log=log)
    log = getattr(dist, "log", False) and low > 0
    return FloatDistribution(float(min(low, dist.low if dist else low)), float(max(high, dist.high if dist else high)), log=log)


def rebuild_optuna_study(study: StudyResults, metric: str | None = None, mode: str | None = None) -> optuna.Study:
    """An in-memory Optuna study with one trial per Ray trial of ``study`` (see module docs)."""
    metric, mode = metric or study.metric, mode or study.mode
    declared = _space_distributions(study.space)
    if declared:
        names = [n for n in declared if any(n in t.config for t in study.trials)]
    else:  # unregistered space: whatever varies across trials, except the driver's keys
        keys = dict.fromkeys(k for t in study.trials for k in t.config if k not in DRIVER_KEYS)
        names = [k for k in keys if len({json.dumps(t.config.get(k), default=str) for t in study.trials}) > 1]
    dists: dict[str, BaseDistribution] = {}
    for name in names:
        d = _widen(declared.get(name), [t.config[name] for t in study.trials if name in t.config])
        if d is not None:
            dists[name] = d

    ot = optuna.create_study(study_name=study.name, direction=Objective(metric, mode).direction,
                             storage=optuna.storages.InMemoryStorage())
    for t in study.trials:
        params = {k: t.config[k] for k in dists if k in t.config}
        curve = t.curve(metric)
        if t.complete and t.value(metric) is not None:
            state, value = TrialState.COMPLETE, t.value(metric)
        elif t.status == "ERROR" or not curve:
            state, value = TrialState.FAIL, None
        else:
            state, value = TrialState.PRUNED, None
        ot.add_trial(optuna.trial.create_trial(
            state=state, value=value, params=params, distributions={k: dists[k] for k in params},
            intermediate_values=curve, user_attrs={"ray_trial_id": t.trial_id, "ray_status": t.status}))
    return ot
