"""The options of one search: :class:`SearchConfig`, typed and checked in one place.

Every option is a field of :class:`SearchConfig` with its type, default, help text and the checks of
its value alone (a pydantic field: ``Field(description=..., ge=...)``, a validator). The command line
(:mod:`search.prepare.cli`, its parser generated from these fields), a YAML ``--config`` file,
:func:`search.run_search` and the ``search.json`` a resumed search reads back all go through
:func:`typed` (field by field: a command-line string, a YAML value, a Python value) and then
:func:`resolve`, which fills the defaults that depend on the space (data, epochs, encoders, name) and
checks what depends on several options (combinations, the space's dimensions). A bad option is a
:class:`search.prepare.errors.UsageError` of one line naming it (``--num-samples 0: expected an integer >= 1``).
Checks that need the cluster, the tracking server or the data are in :mod:`search.prepare.preflight`.

The names a choice may take (samplers, schedulers, references, promotion policies) and what each
can do are the registries' (:mod:`search.prepare.registry_names`); no list of names is kept here.
"""

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from search.prepare import registry_names as registries
from search.prepare.errors import UsageError
from search.prepare.objective import MODES
from search.trust.credentials import URI_OPTIONS, check_options, redact, redact_options
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
    :meth:`spaces.Space.default_grace`, filled by :func:`resolve` for a scheduler that reads it)."""
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
    (None: ``trials+references``, or ``off`` with ``--confirm-repeats 0``, filled by :func:`resolve`)."""
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


_HINTS: dict[str, Any] = {f.name: f.type for f in fields(SearchConfig)}
"""Each option's annotation: its type with the pydantic field (help, constraints) and validators."""


def flag(name: str) -> str:
    """The command-line option of field ``name``: ``--num-samples`` for ``num_samples``."""
    return "--" + name.replace("_", "-")


def default(name: str) -> Any:
    """The default of option ``name`` (``MISSING`` for ``space``)."""
    return next(f.default for f in fields(SearchConfig) if f.name == name)


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
    first bad option. What depends on several options is :func:`resolve`'s."""
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


def storage_path(storage: str) -> str:
    """Absolute local path, or the URI as given (``s3://``, ``gs://``, ...)."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def experiment_path(storage: str, name: str) -> str:
    return f"{storage_path(storage).rstrip('/')}/{name}"


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
