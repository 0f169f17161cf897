"""The options of one search: :class:`SearchConfig`, typed and checked in one place.

Every option is a field of :class:`SearchConfig` with its type, default, help text and the checks of
its value alone (a pydantic field: ``Field(description=..., ge=...)``, a validator). The command line
(:mod:`search.prepare.cli`, its parser generated from these fields), a YAML ``--config`` file,
:func:`search.run_search` and the ``search.json`` a resumed search reads back all go through
:func:`search.prepare.parse.typed` (field by field: a command-line string, a YAML value, a Python value) and then
:func:`search.prepare.resolve.resolve`, which fills the defaults that depend on the space (data, epochs, encoders,
name) and checks what depends on several options (combinations, the space's dimensions). A bad option is a
:class:`search.prepare.errors.UsageError` of one line naming it (``--num-samples 0: expected an integer >= 1``).
Checks that need the cluster, the tracking server or the data are in :mod:`search.prepare.preflight`.

The names a choice may take (samplers, schedulers, references, promotion policies) and what each
can do are the registries' (:mod:`search.prepare.registry_names`); no list of names is kept here.
"""

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, Strict
from pydantic_core import PydanticCustomError

from search.prepare import registry_names as registries
from search.prepare.objective import MODES
from search.trust.credentials import redact_options
from spaces import SPACES, Space, get_space
from trainables.metrics import METRICS

MAX_CONFIRM_REPEATS = 100
"""Most ``--confirm-repeats``: each repetition retrains the top-k, the paper default and the
references on every fold, and the driver holds all their scores (10**9 of them filled gigabytes)."""


def metric_names() -> list[str]:
    """Metrics a search can optimise: every scalar of :data:`METRICS`, its ``_std`` over folds, ``loss``."""
    return [*METRICS, *(f"{m}_std" for m in METRICS), "loss"]


def natural_mode(metric: str) -> str:
    if metric in METRICS:
        return METRICS[metric]
    return "min"  # loss and fold standard deviations


# ----------------------------------------------------------------------------- the checks of one value
class Refused(ValueError):
    """A value a field's own check refuses: ``str()`` is what follows ``--option VALUE:`` in the
    message; ``shown`` replaces the value there (the bad item of a list, say)."""

    def __init__(self, message: str, shown: str | None = None) -> None:
        super().__init__(message)
        self.shown = shown


def _no_bool(value: Any) -> Any:
    """A bool is no number (pydantic's lax mode would take ``true`` as 1)."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_as_number", "a bool is not a number")
    return value


def _names(value: Any) -> Any:
    """``"a,b"`` (a command line, a YAML string) -> ``("a", "b")``; a list as it is."""
    if isinstance(value, str):
        return tuple(s.strip() for s in value.split(",") if s.strip())
    return value


def _known_space(name: str) -> str:
    if name not in SPACES:
        raise Refused(f"unknown space; known: {', '.join(SPACES)}")
    return name


def _once(what: str) -> Any:
    def check(names: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(names)) != len(names):
            raise Refused(f"{what} is listed twice")
        return names
    return AfterValidator(check)


def _metrics(names: tuple[str, ...]) -> tuple[str, ...]:
    known = metric_names()
    if not names:
        raise Refused(f"give a metric: {', '.join(known)}")
    for m in names:
        if m not in known:
            raise Refused(f"not a metric this task computes; choose from {', '.join(known)}", shown=m)
    return names


def _modes(names: tuple[str, ...]) -> tuple[str, ...]:
    for m in names:
        if m not in MODES:
            raise Refused(f"unknown; choose from {', '.join(MODES)}", shown=m)
    return names


def _folds(k: int) -> int:
    if k == 1 or k < 0:
        raise Refused("must be 0 (one hold-out split, see --val-fraction) or at least 2")
    return k


def _gpus(n: float) -> float:
    if n > 1 and n != int(n):
        raise Refused("fractions are for sharing one GPU; use a whole number above 1")
    return n


def _references_given(value: Any) -> Any:
    """``--references``: comma-separated names, ``none`` for none."""
    if isinstance(value, str):
        names = _names(value)
        if not names:
            raise Refused(f"empty value {value!r}; give {', '.join(registries.REFERENCES)} (comma-separated) or none",
                          shown="")
        return () if names == ("none",) else names
    return value


def _references(names: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [r for r in names if r not in registries.REFERENCES]
    if unknown:
        raise Refused(f"unknown reference {unknown[0]!r}; choose from {', '.join(registries.REFERENCES)} or none")
    return names


def _points(value: Any) -> Any:
    """``--points``: JSON objects (the command line, repeatable), or the objects themselves (YAML,
    Python, ``search.json``); one object alone is a list of one."""
    if isinstance(value, (str, dict)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        return value
    points = []
    for point in value:
        if isinstance(point, str):
            try:
                point = json.loads(point)
            except json.JSONDecodeError as exc:
                raise Refused(f"not JSON ({exc.msg}): {point}", shown="") from None
        if not isinstance(point, dict):
            raise Refused("must be a JSON object of parameter values", shown=json.dumps(point, default=str))
        points.append(point)
    return tuple(points)


Int = Annotated[int, BeforeValidator(_no_bool)]
Float = Annotated[float, BeforeValidator(_no_bool)]
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]
SamplerName = Literal[tuple(registries.SAMPLERS)]  # type: ignore[valid-type]
SchedulerName = Literal[tuple(registries.SCHEDULERS)]  # type: ignore[valid-type]
PromotePolicy = Literal[tuple(registries.PROMOTE_POLICIES)]  # type: ignore[valid-type]
EnsembleChoice = Literal[registries.ENSEMBLE_CHOICES]  # type: ignore[valid-type]


def option(help: str, *, shown: str | None = None, metavar: str | None = None, hidden: bool = False,
           **checks: Any) -> Any:
    """A field's command-line face: ``help`` (the parser adds the default), ``shown`` (how a default
    filled later is described), ``metavar``, ``hidden`` (no help line); ``checks``: pydantic's
    constraints (``ge=1``)."""
    extra = {k: v for k, v in (("shown", shown), ("metavar", metavar), ("hidden", hidden)) if v}
    return Field(description=help, json_schema_extra=extra or None, **checks)


def _grace_help() -> str:
    return f"epochs every trial trains before {' or '.join(registries.with_trait(registries.SCHEDULERS, 'grace'))} " \
           "may stop it"


def _promote_help() -> str:
    return "; ".join(f"{name}: {what}" for name, what in registries.PROMOTE_POLICIES.items())


# ----------------------------------------------------------------------------- the options
@dataclass(frozen=True)
class SearchConfig:
    """The options of a search, by field: type, default and help in one place (see the module)."""

    space: Annotated[str, AfterValidator(_known_space), option("search space (python -m search.spaces list)")]
    only: Annotated[Names, _once("a dimension"), option(
        "search only these dimensions of the space (comma-separated), the others at their defaults, e.g. lr",
        metavar="DIMS")] = ()
    """Search only these dimensions of the space, the others at their defaults (:meth:`Space.only`)."""
    data: Annotated[str | None, option("dataset: rosmap, breast-tcga, synth-clinic[:k=v,...] or a folder",
                                       shown="the space's")] = None
    metric: Annotated[Names, AfterValidator(_metrics), _once("a metric"), option(
        "metric to optimise; comma-separated for several objectives")] = ("macro_f1",)
    mode: Annotated[Names, AfterValidator(_modes), option(
        "max or min per metric", shown="the metric's natural direction")] = ()
    num_samples: Annotated[Int, option("trials", ge=1)] = 20
    epochs: Annotated[Int | None, option("epochs per trial, T of CLIMD's schedule", shown="the space's", ge=1)] = None
    folds: Annotated[Int, AfterValidator(_folds), option("k of stratified k-fold CV, 0 for one hold-out split")] = 5
    val_fraction: Annotated[Float, option("held-out fraction with --folds 0", gt=0, lt=1)] = 0.2
    sampler: Annotated[SamplerName, option(
        f"Optuna sampler; several objectives: {', '.join(registries.with_trait(registries.SAMPLERS, 'multi_objective'))}"
        f" ({', '.join(registries.with_trait(registries.SAMPLERS, 'spread_objective'))} given one metric: it and its "
        "spread over the folds)")] = "tpe"
    scheduler: Annotated[SchedulerName, option("trial scheduler")] = "asha"
    grace_period: Annotated[Int | None, option(
        _grace_help(), shown="the space's, a quarter of --epochs; CLIMD spaces: until the curriculum reaches the "
                             "whole training set")] = None
    """Epochs every trial trains before ASHA or the median rule may stop it (None: the space's
    :meth:`spaces.Space.default_grace`, filled by :func:`search.prepare.resolve.resolve` for a scheduler that
    reads it)."""
    max_concurrent: Annotated[Int | None, option("trials running at once", shown="as many as resources allow",
                                                 ge=1)] = None
    cpus_per_trial: Annotated[Float, option("CPUs per trial", gt=0)] = 1.0
    gpus_per_trial: Annotated[Float, AfterValidator(_gpus), option("GPUs per trial, fractions share a GPU", ge=0)] = 0.0
    address: Annotated[str | None, option("existing Ray cluster: auto, host:port or ray://host:port",
                                          shown="start a local one")] = None
    storage: Annotated[str, option("results folder or URI")] = "fusetune_results"
    name: Annotated[str | None, option("search name = folder under --storage", shown="<space>-<data>-<time>")] = None
    resume: Annotated[bool, Strict(), option("continue the search --name (or the newest in --storage)")] = False
    tracking_uri: Annotated[str | None, option("MLflow tracking URI", shown="sqlite:///<storage>/mlflow.db")] = None
    experiment: Annotated[str, option("MLflow experiment")] = "fusetune"
    seed: Annotated[Int, option("fixes folds, initialisation and sampling")] = 0
    sampler_seed: Annotated[Int | None, option(
        "seed of the sampler alone; repeats a search on the same folds and initialisation", shown="--seed")] = None
    top_k: Annotated[Int, option("best configurations whose models are logged and registered", ge=0)] = 3
    max_failures: Annotated[Int, option("retries of a crashed trial from its last checkpoint", ge=0)] = 0
    text_encoder: Annotated[str | None, option("text encoder for report modalities", shown="the space's")] = None
    image_encoder: Annotated[str | None, option("image encoder", shown="the space's")] = None
    cache_dir: Annotated[str | None, option("feature cache folder",
                                            shown="$FUSETUNE_CACHE_DIR or ~/.cache/fusetune/features")] = None
    optuna_storage: Annotated[str | None, option(
        "Optuna study storage, an RDB URL without password", shown="sqlite:///<storage>/<name>/optuna.db",
        metavar="URL")] = None
    warm_start: Annotated[str | None, option(
        "seed the sampler with the finished trials of the earlier search NAME (same space, data, objective)",
        metavar="NAME")] = None
    points: Annotated[tuple[dict[str, Any], ...], BeforeValidator(_points), option(
        "a configuration to evaluate right after the paper default (repeatable), e.g. '{\"lr\": 1e-3}'",
        metavar="JSON")] = ()
    confirm_repeats: Annotated[Int, option(
        "fresh repetitions of the k-fold scheme the top-k, the paper default and the references are retrained on "
        f"after the search; the champion is the best there; 0 = off, at most {MAX_CONFIRM_REPEATS}",
        ge=0, le=MAX_CONFIRM_REPEATS)] = 3
    references: Annotated[Names, BeforeValidator(_references_given), AfterValidator(_references), option(
        f"reference models scored on the same folds: {', '.join(registries.REFERENCES)} or none")
    ] = registries.REFERENCES
    promote: Annotated[PromotePolicy, option(_promote_help())] = "better"
    ensemble: Annotated[EnsembleChoice | None, option(
        "post-hoc ensemble selection over the out-of-fold predictions of the full-budget trials (and the "
        "references), confirmed on the fresh folds like any candidate; the champion only if it wins there",
        shown="trials+references; off with --confirm-repeats 0")] = None
    """Post-hoc ensemble selection (:mod:`search.select.ensemble`): ``off``, ``trials`` or ``trials+references``
    (None: ``trials+references``, or ``off`` with ``--confirm-repeats 0``, filled by
    :func:`search.prepare.resolve.resolve`)."""
    ensemble_size: Annotated[Int, option("distinct members of the ensemble at most", ge=1)] = 5
    """At most this many distinct members in the ensemble."""
    parent_run_id: Annotated[str | None, option(
        "the MLflow run this search's parent run is nested under (search.nested's)", hidden=True)] = None
    """The MLflow run this search's parent run is nested under (``search.nested``'s)."""

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

    def as_options(self) -> dict[str, Any]:
        """Every option as plain YAML/JSON values (lists, not tuples), URIs redacted: what
        ``--print-config`` writes and ``--config`` reads back."""
        return {k: ([dict(p) for p in v] if k == "points" else list(v) if isinstance(v, tuple) else v)
                for k, v in self.as_saved().items()}


OPTIONS: tuple[str, ...] = tuple(f.name for f in fields(SearchConfig))
"""Every option, by field name, in the order of ``--help``."""


def flag(name: str) -> str:
    """The command-line option of field ``name``: ``--num-samples`` for ``num_samples``."""
    return "--" + name.replace("_", "-")


def default(name: str) -> Any:
    """The default of option ``name`` (``MISSING`` for ``space``)."""
    return next(f.default for f in fields(SearchConfig) if f.name == name)


def storage_path(storage: str) -> str:
    """Absolute local path, or the URI as given (``s3://``, ``gs://``, ...)."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def experiment_path(storage: str, name: str) -> str:
    return f"{storage_path(storage).rstrip('/')}/{name}"
