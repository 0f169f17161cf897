"""The options of one search, resolved and checked: :class:`SearchConfig`.

:func:`resolve` fills the defaults that depend on the space (data, epochs, encoders, name) and
checks everything that can be checked without Ray or the data (names, ranges, combinations),
raising :class:`search.errors.UsageError` with one line naming the option. Checks that need the
cluster, the tracking server or the data are in :mod:`search.preflight`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from search.credentials import check_options, redact_options
from search.errors import UsageError
from search.objective import MODES
from spaces import SPACES, Space, get_space
from trainables.metrics import METRICS

SAMPLER_NAMES = ("tpe", "random", "grid", "cmaes", "nsga2")
SCHEDULER_NAMES = ("asha", "hyperband", "median", "pbt", "fifo")
PROMOTE_POLICIES = ("better", "always", "never")
GRACE_SCHEDULERS = ("asha", "median")
"""The schedulers that read ``--grace-period``."""
REFERENCE_NAMES = ("logreg", "rf", "hgb")
"""The entries of :data:`search.references.REFERENCES` (kept here so the options check imports no sklearn)."""
ENSEMBLE_CHOICES = ("off", "trials", "trials+references")
"""``--ensemble``: which candidates ensemble selection (:mod:`search.ensemble`) may use."""
MAX_CONFIRM_REPEATS = 100
"""Most ``--confirm-repeats``: each repetition retrains the top-k, the paper default and the
references on every fold, and the driver holds all their scores (10**9 of them filled gigabytes)."""
MULTI_OBJECTIVE_SAMPLERS = ("nsga2", "tpe", "random")
"""Optuna samplers that handle several objectives (grid and CMA-ES optimise one)."""


@dataclass(frozen=True)
class SearchConfig:
    space: str
    only: tuple[str, ...] = ()
    """Search only these dimensions of the space, the others at their defaults (:meth:`Space.only`)."""
    data: str | None = None
    metric: tuple[str, ...] = ("macro_f1",)
    mode: tuple[str, ...] = ()
    num_samples: int = 20
    epochs: int | None = None
    folds: int = 5
    val_fraction: float = 0.2
    sampler: str = "tpe"
    scheduler: str = "asha"
    grace_period: int | None = None
    """Epochs every trial trains before ASHA or the median rule may stop it (None: the space's
    :meth:`spaces.Space.default_grace`, filled by :func:`resolve`)."""
    max_concurrent: int | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    address: str | None = None
    storage: str = "fusetune_results"
    name: str | None = None
    resume: bool = False
    tracking_uri: str | None = None
    experiment: str = "fusetune"
    seed: int = 0
    sampler_seed: int | None = None
    top_k: int = 3
    max_failures: int = 0
    text_encoder: str | None = None
    image_encoder: str | None = None
    cache_dir: str | None = None
    optuna_storage: str | None = None
    warm_start: str | None = None
    points: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    confirm_repeats: int = 3
    references: tuple[str, ...] = ("logreg", "rf", "hgb")
    promote: str = "better"
    ensemble: str | None = None
    """Post-hoc ensemble selection (:mod:`search.ensemble`): ``off``, ``trials`` or ``trials+references``
    (None: ``trials+references``, or ``off`` with ``--confirm-repeats 0``, filled by :func:`resolve`)."""
    ensemble_size: int = 5
    """At most this many distinct members in the ensemble."""
    parent_run_id: str | None = None
    """The MLflow run this search's parent run is nested under (``search.nested``'s)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "only", tuple(self.only))  # a list from search.json or YAML

    @property
    def space_spec(self) -> Space:
        space = get_space(self.space)
        return space.only(*self.only) if self.only else space

    @property
    def search_seed(self) -> int:
        """Seed of the sampler, the grid's order and PBT: ``--sampler-seed``, else ``--seed``."""
        return self.seed if self.sampler_seed is None else self.sampler_seed

    @property
    def primary_metric(self) -> str:
        return self.metric[0]

    @property
    def primary_mode(self) -> str:
        return self.mode[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.metric) > 1

    @property
    def storage_path(self) -> str:
        return storage_path(self.storage)

    @property
    def experiment_path(self) -> str:
        """``<storage>/<name>``: Ray Tune's experiment folder, with ``results.csv`` and ``search.json``."""
        assert self.name is not None
        return experiment_path(self.storage, self.name)

    @property
    def data_name(self) -> str:
        """The dataset's short name: ``synth-clinic`` for ``synth-clinic:n=600``, a folder's name;
        ``breast-tcga-outer2of5`` for the outer fold ``breast-tcga@outer=2/5`` of nested CV."""
        assert self.data is not None
        from trainables.data import DatasetSpec

        return DatasetSpec.parse(self.data).short_name

    def as_params(self) -> dict[str, Any]:
        """The options as flat, loggable values (the parent run's params; URIs redacted)."""
        out = {k: (",".join(v) if k in ("metric", "mode", "references", "only") else v) for k, v in self.as_saved().items()
               if k not in ("points", "resume")}  # resume: how this driver started, not an option of the search
        out["points"] = len(self.points)
        return out

    def as_saved(self) -> dict[str, Any]:
        """The options as ``search.json`` keeps them (URIs redacted: credentials never reach a file)."""
        return redact_options(asdict(self))


def storage_path(storage: str) -> str:
    """Absolute local path, or the URI as given (``s3://``, ``gs://``, ...)."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def experiment_path(storage: str, name: str) -> str:
    return f"{storage_path(storage).rstrip('/')}/{name}"


def metric_names() -> list[str]:
    """Metrics a search can optimise: every scalar of :data:`METRICS`, its ``_std`` over folds, ``loss``."""
    return [*METRICS, *(f"{m}_std" for m in METRICS), "loss"]


def natural_mode(metric: str) -> str:
    if metric in METRICS:
        return METRICS[metric]
    return "min"  # loss and fold standard deviations


def resolve(cfg: SearchConfig) -> SearchConfig:
    """Fill space-dependent defaults and check the options; :class:`UsageError` on the first problem."""
    if cfg.space not in SPACES:
        raise UsageError(f"--space {cfg.space}: unknown space; known: {', '.join(SPACES)}")
    space = get_space(cfg.space)
    check_options(asdict(cfg))
    unknown_dims = [n for n in cfg.only if n not in space.names]
    if unknown_dims or (cfg.only and len(set(cfg.only)) != len(cfg.only)):
        raise UsageError(f"--only {','.join(cfg.only)}: " + (f"{unknown_dims[0]!r} is not a dimension of space {space.name} "
                         f"({', '.join(space.names)})" if unknown_dims else "a dimension is listed twice"))
    space = cfg.space_spec
    _check_choice("--sampler", cfg.sampler, SAMPLER_NAMES)
    _check_choice("--scheduler", cfg.scheduler, SCHEDULER_NAMES)
    for option, value, low in (("--num-samples", cfg.num_samples, 1), ("--epochs", cfg.epochs, 1),
                               ("--top-k", cfg.top_k, 0), ("--max-failures", cfg.max_failures, 0),
                               ("--max-concurrent", cfg.max_concurrent, 1), ("--confirm-repeats", cfg.confirm_repeats, 0)):
        if value is not None and value < low:
            raise UsageError(f"{option} {value}: must be at least {low}")
    if cfg.confirm_repeats > MAX_CONFIRM_REPEATS:
        raise UsageError(f"--confirm-repeats {cfg.confirm_repeats}: must be at most {MAX_CONFIRM_REPEATS}")
    if cfg.folds == 1 or cfg.folds < 0:
        raise UsageError(f"--folds {cfg.folds}: must be 0 (one hold-out split, see --val-fraction) or at least 2")
    if not 0.0 < cfg.val_fraction < 1.0:
        raise UsageError(f"--val-fraction {cfg.val_fraction}: must be in (0, 1)")
    if cfg.cpus_per_trial <= 0:
        raise UsageError(f"--cpus-per-trial {cfg.cpus_per_trial}: must be positive")
    if cfg.gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial {cfg.gpus_per_trial}: must be >= 0 (fractions share a GPU)")
    if cfg.gpus_per_trial > 1 and cfg.gpus_per_trial != int(cfg.gpus_per_trial):
        raise UsageError(f"--gpus-per-trial {cfg.gpus_per_trial}: fractions are for sharing one GPU; use a whole number above 1")

    _check_choice("--promote", cfg.promote, PROMOTE_POLICIES)
    unknown_refs = [r for r in cfg.references if r not in REFERENCE_NAMES]
    if unknown_refs:
        raise UsageError(f"--references {','.join(cfg.references)}: unknown reference {unknown_refs[0]!r}; "
                         f"choose from {', '.join(REFERENCE_NAMES)} or none")
    metric, mode = _objectives(cfg)
    ensemble = _ensemble(cfg, metric[0])
    if len(metric) > 1 and cfg.sampler not in MULTI_OBJECTIVE_SAMPLERS:
        raise UsageError(f"--sampler {cfg.sampler}: optimises one objective; --metric lists {len(metric)} "
                         f"(use one of {', '.join(MULTI_OBJECTIVE_SAMPLERS)})")
    if cfg.scheduler == "pbt":
        if cfg.sampler not in ("tpe", "random"):
            raise UsageError(f"--sampler {cfg.sampler}: PBT draws its initial population at random and cannot use "
                             "a search algorithm; use --sampler random (or leave the default)")
        if len(metric) > 1:
            raise UsageError("--scheduler pbt: optimises one objective; give one --metric")
        if not space.mutable():
            raise UsageError(f"--scheduler pbt: space {space.name} has no dimension PBT may perturb")
    for point in cfg.points:
        check_point(point, space)

    if cfg.optuna_storage is not None:
        if cfg.scheduler == "pbt":
            raise UsageError("--optuna-storage: --scheduler pbt draws its population without Optuna; there is no "
                             "study to store")
        from search.optuna_storage import check_url

        check_url(cfg.optuna_storage)
    epochs = cfg.epochs or space.epochs
    if cfg.grace_period is not None:
        if cfg.scheduler not in GRACE_SCHEDULERS:
            raise UsageError(f"--grace-period: only --scheduler {' and '.join(GRACE_SCHEDULERS)} use a grace period "
                             f"(this search uses {cfg.scheduler})")
        if isinstance(cfg.grace_period, bool) or not isinstance(cfg.grace_period, int) or not 1 <= cfg.grace_period < epochs:
            raise UsageError(f"--grace-period {cfg.grace_period}: must be a whole number of epochs from 1 to "
                             f"--epochs - 1 ({epochs - 1})")
    data = cfg.data or space.data
    name = cfg.name or f"{cfg.space}-{replace(cfg, data=data).data_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if "/" in name or name in (".", ".."):
        raise UsageError(f"--name {name}: must be a plain folder name")
    if cfg.warm_start is not None and ("/" in cfg.warm_start or cfg.warm_start in (".", "..", name)):
        raise UsageError(f"--warm-start {cfg.warm_start}: must name another, earlier search (its --name)")
    return replace(
        cfg, data=data, name=name, metric=metric, mode=mode, ensemble=ensemble,
        epochs=epochs, grace_period=cfg.grace_period if cfg.grace_period is not None else space.default_grace(epochs),
        text_encoder=cfg.text_encoder or space.text_encoder,
        image_encoder=cfg.image_encoder or space.image_encoder,
    )


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
    """The metrics and modes; nsga2 with one metric adds ``<metric>_std`` (minimised): performance
    against its fold-to-fold stability."""
    known = metric_names()
    metric = tuple(cfg.metric)
    for m in metric:
        if m not in known:
            raise UsageError(f"--metric {m}: not a metric this task computes; choose from {', '.join(known)}")
    if len(set(metric)) != len(metric):
        raise UsageError(f"--metric {','.join(metric)}: a metric is listed twice")
    if cfg.sampler == "nsga2" and len(metric) == 1:
        if cfg.folds == 0:
            raise UsageError("--sampler nsga2: with --folds 0 there is no fold spread to trade off; "
                             "give two metrics, e.g. --metric macro_f1,auroc")
        if metric[0].endswith("_std") or metric[0] == "loss":
            raise UsageError(f"--sampler nsga2: give two metrics (one was given: {metric[0]})")
        metric = (metric[0], f"{metric[0]}_std")
    mode = tuple(cfg.mode)
    if not mode:
        mode = tuple(natural_mode(m) for m in metric)
    elif len(mode) == 1 and len(metric) == 2 and len(cfg.metric) == 1:
        mode = (mode[0], "min")
    for m in mode:
        _check_choice("--mode", m, MODES)
    if len(mode) != len(metric):
        raise UsageError(f"--mode {','.join(mode)}: give one mode per metric ({len(metric)})")
    return metric, mode


def _ensemble(cfg: SearchConfig, first_metric: str) -> str:
    """``--ensemble`` checked and filled: an ensemble is only ever handed off once confirmed on fresh
    folds, and it is selected on the first objective, which must be a classification metric."""
    if isinstance(cfg.ensemble_size, bool) or not isinstance(cfg.ensemble_size, int) or cfg.ensemble_size < 1:
        raise UsageError(f"--ensemble-size {cfg.ensemble_size}: must be a whole number of members, at least 1")
    if cfg.ensemble is None:
        return "trials+references" if cfg.confirm_repeats > 0 and first_metric in METRICS else "off"
    _check_choice("--ensemble", cfg.ensemble, ENSEMBLE_CHOICES)
    if cfg.ensemble != "off" and cfg.confirm_repeats == 0:
        raise UsageError(f"--ensemble {cfg.ensemble} with --confirm-repeats 0: the ensemble would be unconfirmed and "
                         "never promoted over an existing champion; give --confirm-repeats 1 or more, or --ensemble off")
    if cfg.ensemble != "off" and first_metric not in METRICS:
        raise UsageError(f"--ensemble {cfg.ensemble}: the ensemble is selected on the first --metric, which must be "
                         f"one of {', '.join(METRICS)} (got {first_metric})")
    return cfg.ensemble


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{option} {value}: unknown; choose from {', '.join(choices)}")
