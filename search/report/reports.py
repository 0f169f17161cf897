"""Study reports: what a search did, as pictures, written after every search.

:func:`write_search_reports` rebuilds an Optuna study from the search's own results (one
``optuna.trial.create_trial`` per Ray trial, with the space's distributions; the same for every
sampler, so the reports of a TPE, random, grid or CMA-ES search look alike) and writes into
``<results>/reports/``:

=========================  ===============================================================
``optimization_history``   objective per trial and best so far (Optuna)
``param_importances``      fANOVA importances (``FanovaImportanceEvaluator``), also as
                           ``importances.csv``
``parallel_coordinate``    every finished trial across the parameters (Optuna)
``slice``                  objective against each parameter (Optuna)
``learning_curves``        validation metric (mean over folds) per epoch, one line per trial
=========================  ===============================================================

each as a static PNG (``optuna.visualization.matplotlib``) and an interactive HTML page (plotly;
the pages share one ``plotly.min.js`` in the folder, so they open offline), plus ``index.json``
(files, axes labels, skipped plots with the reason) and ``README.md``. A plot that cannot be drawn
(fewer than two finished trials, a single parameter, ...) is skipped with a note, never an error.
With a tracking URI and the parent run id, the folder is logged as the parent MLflow run's
artifacts under ``reports/``, and the search's ``results.csv`` at the artifact root.

Trial states in the rebuilt study: a trial that finished all its epochs is ``COMPLETE`` with its
final value; one an early-stopping scheduler stopped is ``PRUNED`` (its per-epoch values are the
intermediate values); an errored trial is ``FAIL``. Multi-objective searches are reported on their
first metric.

    python -m search.report.reports --name STUDY [--storage DIR] [--metric M] [--tracking-uri URI]
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from search.prepare.cli import OneLineParser, add_storage_option
from search.prepare.errors import UsageError
from search.prepare.objective import Objective
from search.select.results import RESULTS_CSV, StudyResults, load_study
from search.trust.credentials import private_outputs, refuse_credentials

logger = logging.getLogger("fusetune.reports")

REPORTS_DIR = "reports"
ARTIFACT_PATH = "reports"
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


# ----------------------------------------------------------------------------- plots
@dataclass(frozen=True)
class Plot:
    """One report plot: when it can be drawn, and how (static matplotlib Axes, interactive plotly Figure)."""

    name: str
    requires: Callable[[_Context], str | None]
    """Returns why the plot cannot be drawn, or None."""
    static: Callable[[_Context], Any]
    interactive: Callable[[_Context], Any]


@dataclass
class _Context:
    study: StudyResults
    ot: optuna.Study
    metric: str
    seed: int

    @property
    def target_name(self) -> str:
        return f"{self.metric} (mean over folds)"

    def completed(self) -> list[optuna.trial.FrozenTrial]:
        return self.ot.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def params(self) -> list[str]:
        """Parameters present in every completed trial (what fANOVA and the parallel plot can use)."""
        trials = self.completed()
        if not trials:
            return []
        common = set(trials[0].params)
        for t in trials[1:]:
            common &= set(t.params)
        return sorted(common)

    def any_params(self) -> list[str]:
        return sorted({p for t in self.completed() for p in t.params})

    def evaluator(self) -> optuna.importance.FanovaImportanceEvaluator:
        return optuna.importance.FanovaImportanceEvaluator(seed=self.seed)


def _need(trials: int = 1, params: int = 0, any_params: int = 0) -> Callable[[_Context], str | None]:
    def check(ctx: _Context) -> str | None:
        n = len(ctx.completed())
        if n < trials:
            return f"needs at least {trials} finished trial{'s' if trials > 1 else ''}, the study has {n}"
        if params and len(ctx.params()) < params:
            return (f"needs at least {params} parameters shared by the finished trials, "
                    f"found {len(ctx.params())} ({', '.join(ctx.params()) or 'none'})")
        if any_params and len(ctx.any_params()) < any_params:
            return "the finished trials have no searched parameter"
        return None

    return check


def _learning_curves_static(ctx: _Context) -> Any:
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=(7, 4.5))
    styles = {TrialState.COMPLETE: "-", TrialState.PRUNED: "--", TrialState.FAIL: ":"}
    trials = ctx.ot.get_trials(deepcopy=False)
    for t in trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        ax.plot(steps, [t.intermediate_values[s] for s in steps], styles.get(t.state, "-"), marker="o", markersize=3,
                label=f"#{t.number} {t.user_attrs['ray_trial_id']} ({t.state.name.lower()})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{ctx.metric} (validation, mean over folds)")
    ax.set_title(f"Learning curves: {ctx.study.name}")
    if len(trials) <= 12:
        ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return ax


def _learning_curves_interactive(ctx: _Context) -> Any:
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in ctx.ot.get_trials(deepcopy=False):
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        fig.add_trace(go.Scatter(x=steps, y=[t.intermediate_values[s] for s in steps], mode="lines+markers",
                                 name=f"#{t.number} {t.user_attrs['ray_trial_id']} ({t.state.name.lower()})",
                                 line={"dash": {"COMPLETE": "solid", "PRUNED": "dash"}.get(t.state.name, "dot")}))
    fig.update_layout(title=f"Learning curves: {ctx.study.name}", xaxis_title="epoch",
                      yaxis_title=f"{ctx.metric} (validation, mean over folds)")
    return fig


def _has_curve(ctx: _Context) -> str | None:
    if not any(t.intermediate_values for t in ctx.ot.get_trials(deepcopy=False)):
        return "no trial reported a value of the metric yet"
    return None


def _optuna_plot(name: str, **kwargs_of: Callable[[_Context], Any]) -> tuple[Callable, Callable]:
    def kwargs(ctx: _Context) -> dict[str, Any]:
        return {k: f(ctx) for k, f in kwargs_of.items()}

    def static(ctx: _Context) -> Any:
        return getattr(optuna.visualization.matplotlib, name)(ctx.ot, **kwargs(ctx))

    def interactive(ctx: _Context) -> Any:
        return getattr(optuna.visualization, name)(ctx.ot, **kwargs(ctx))

    return static, interactive


_target = {"target_name": lambda c: c.target_name}
PLOTS: dict[str, Plot] = {
    "optimization_history": Plot("optimization_history", _need(trials=1),
                                 *_optuna_plot("plot_optimization_history", **_target)),
    "param_importances": Plot("param_importances", _need(trials=2, params=2),
                              *_optuna_plot("plot_param_importances", evaluator=lambda c: c.evaluator(),
                                            params=lambda c: c.params(), **_target)),
    "parallel_coordinate": Plot("parallel_coordinate", _need(trials=2, params=2),
                                *_optuna_plot("plot_parallel_coordinate", params=lambda c: c.params(), **_target)),
    "slice": Plot("slice", _need(trials=1, any_params=1),
                  *_optuna_plot("plot_slice", params=lambda c: c.any_params(), **_target)),
    "learning_curves": Plot("learning_curves", _has_curve, _learning_curves_static, _learning_curves_interactive),
}
"""The report's plots, in the order they are written; add one by registering a :class:`Plot`."""


def _axes_labels(axes: Any) -> list[dict[str, str]]:
    import numpy as np

    flat = list(np.ravel(axes)) if isinstance(axes, np.ndarray) else [axes]
    fig = flat[0].figure
    return [{"xlabel": a.get_xlabel(), "ylabel": a.get_ylabel(), "title": a.get_title()}
            for a in fig.axes if a.get_visible() and (a.get_xlabel() or a.get_ylabel())]


def _save_static(axes: Any, path: Path) -> list[dict[str, str]]:
    import matplotlib.pyplot as plt
    import numpy as np

    fig = (np.ravel(axes)[0] if isinstance(axes, np.ndarray) else axes).figure
    labels = _axes_labels(axes)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return labels


# ----------------------------------------------------------------------------- the writer
@dataclass
class Reports:
    folder: Path
    plots: dict[str, dict[str, Any]] = field(default_factory=dict)
    """name -> {"png", "html", "axes": [{"xlabel", "ylabel", "title"}]}."""
    skipped: dict[str, str] = field(default_factory=dict)
    """name -> why the plot was not drawn."""
    importances: dict[str, float] = field(default_factory=dict)
    logged_to: str | None = None
    """``runs:/<parent run id>/reports`` once logged to MLflow."""
    location: str = ""
    """Where the reports are: ``folder``, or the URI they were copied to for a remote results folder."""

    def __post_init__(self) -> None:
        self.location = self.location or str(self.folder)


def write_search_reports(results_dir: str | Path, *, metric: str | None = None, mode: str | None = None,
                         tracking_uri: str | None = None, parent_run_id: str | None = None,
                         seed: int = 0) -> Reports:
    """Write the study reports of the search in ``results_dir`` (= ``<storage>/<name>``, a folder or
    a pyarrow URI such as ``s3://bucket/searches/NAME``) into ``results_dir/reports`` and, given
    ``tracking_uri`` and ``parent_run_id``, log them as artifacts of the search's parent MLflow run.
    ``metric``/``mode`` default to the search's own.

    Never raises because of a plot: a plot that fails or cannot be drawn is listed in
    ``Reports.skipped`` with the reason. An MLflow failure is logged as a warning.
    """
    if "://" not in str(results_dir):
        return _write_reports(Path(results_dir), metric, mode, tracking_uri, parent_run_id, seed)
    import tempfile

    import pyarrow.fs as pafs

    uri = str(results_dir).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="fusetune-reports-") as tmp:
        local = _fetch_study(uri, Path(tmp))
        out = _write_reports(local, metric, mode, tracking_uri, parent_run_id, seed)
        fs, root = pafs.FileSystem.from_uri(f"{uri}/{REPORTS_DIR}")
        fs.create_dir(root, recursive=True)
        pafs.copy_files(str(out.folder), root, destination_filesystem=fs)
    out.location = f"{uri}/{REPORTS_DIR}"
    return out


def _fetch_study(uri: str, dest: Path) -> Path:
    """The files the reports read (``results.csv``, each trial's ``params.json`` and ``result.json``)
    of a results folder on a pyarrow filesystem, copied into ``dest/<name>``."""
    import pyarrow.fs as pafs

    from search.select.results import PARAMS_FILE, RESULT_FILE, RESULTS_CSV

    fs, root = pafs.FileSystem.from_uri(uri)
    root = root.rstrip("/")
    local = dest / root.rsplit("/", 1)[-1]
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        rel = info.path[len(root) + 1:]
        if info.type == pafs.FileType.File and rel.count("/") <= 1 and rel.rsplit("/", 1)[-1] in (
                PARAMS_FILE, RESULT_FILE, RESULTS_CSV):
            target = local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as f:
                target.write_bytes(f.read())
    return local


def _write_reports(results_dir: Path, metric: str | None, mode: str | None, tracking_uri: str | None,
                   parent_run_id: str | None, seed: int) -> Reports:
    study = load_study(results_dir.name, results_dir.parent)
    metric, mode = metric or study.metric, mode or study.mode
    out = Reports(results_dir / REPORTS_DIR)
    out.folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning on every matplotlib plot
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        ctx = _Context(study, rebuild_optuna_study(study, metric, mode), metric, seed)
        for plot in PLOTS.values():
            why = plot.requires(ctx)
            if why is None:
                try:
                    png, html = out.folder / f"{plot.name}.png", out.folder / f"{plot.name}.html"
                    axes = _save_static(plot.static(ctx), png)
                    plot.interactive(ctx).write_html(html, include_plotlyjs="directory")
                    out.plots[plot.name] = {"png": png.name, "html": html.name, "axes": axes}
                    continue
                except Exception as exc:  # noqa: BLE001 - a report never ends a search
                    why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            out.skipped[plot.name] = why
        if "param_importances" in out.plots:
            out.importances = {k: float(v) for k, v in optuna.importance.get_param_importances(
                ctx.ot, evaluator=ctx.evaluator(), params=ctx.params()).items()}
    _write_index(out, study, ctx, metric, mode)
    if tracking_uri and parent_run_id:
        out.logged_to = log_reports(out.folder, tracking_uri, parent_run_id)
        if out.logged_to and (results_dir / RESULTS_CSV).is_file():
            log_reports(results_dir / RESULTS_CSV, tracking_uri, parent_run_id, artifact_path=None)
    return out


def _write_index(out: Reports, study: StudyResults, ctx: _Context, metric: str, mode: str) -> None:
    states = [t.state.name for t in ctx.ot.get_trials(deepcopy=False)]
    index = {"study": study.name, "metric": metric, "mode": mode, "space": study.space,
             "trials": {s: states.count(s) for s in dict.fromkeys(states)},
             "plots": out.plots, "skipped": out.skipped, "importances": out.importances,
             "importance_evaluator": f"optuna.importance.FanovaImportanceEvaluator(seed={ctx.seed})"}
    (out.folder / "index.json").write_text(json.dumps(index, indent=2))
    if out.importances:
        with (out.folder / "importances.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["parameter", "fanova_importance"])
            w.writerows(out.importances.items())
    lines = [f"# Search report: {study.name}", "",
             (f"Objective: `{metric}` ({mode}), validation mean over folds; space `{study.space}`; "
              f"trials: {', '.join(f'{n} {s.lower()}' for s, n in index['trials'].items())}."), ""]
    for name, p in out.plots.items():
        lines.append(f"- **{name}**: [{p['png']}]({p['png']}) · [interactive]({p['html']})")
    for name, why in out.skipped.items():
        lines.append(f"- **{name}**: skipped ({why})")
    if out.importances:
        lines += ["", "| parameter | fANOVA importance |", "|---|---|"]
        lines += [f"| `{k}` | {v:.3f} |" for k, v in out.importances.items()]
    (out.folder / "README.md").write_text("\n".join(lines) + "\n")


def log_reports(folder: Path, tracking_uri: str, parent_run_id: str,
                artifact_path: str | None = ARTIFACT_PATH) -> str | None:
    """Log ``folder`` as artifacts ``reports/`` of the parent run (a file such as ``results.csv``
    at ``artifact_path``, None = the root); a warning (not an error) on failure."""
    from mlflow.tracking import MlflowClient

    from search.tracking.callback import fast_http

    try:
        with fast_http(10.0):
            client = MlflowClient(tracking_uri=tracking_uri)
            if folder.is_dir():
                client.log_artifacts(parent_run_id, str(folder), artifact_path)
            else:
                client.log_artifact(parent_run_id, str(folder), artifact_path)
    except Exception as exc:  # noqa: BLE001 - the files are on disk; MLflow is a mirror
        logger.warning("%s not logged to MLflow run %s: %s", folder.name, parent_run_id,
                       " ".join(str(exc).split())[:300])
        return None
    return f"runs:/{parent_run_id}/{artifact_path or folder.name}"


def parent_run_id_of(tracking_uri: str, search_name: str) -> str | None:
    """The parent run of a search (tag ``fusetune.search_name``), or None."""
    from mlflow.tracking import MlflowClient

    from search.tracking.callback import ROLE_TAG, SEARCH_NAME_TAG

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{SEARCH_NAME_TAG}` = '{search_name}' "
                                                          f"and tags.`{ROLE_TAG}` = 'search'", max_results=1)
    return runs[0].info.run_id if runs else None


# ----------------------------------------------------------------------------- CLI
@private_outputs()  # what it writes is readable by the user only (FUSETUNE_UMASK)
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m search.report.reports", description="Write (again) the reports of a finished search.")
    parser.add_argument("--name", required=True, help="the search's name (its folder under --storage)")
    add_storage_option(parser)
    parser.add_argument("--metric", default=None, help="metric to report (default: the search's)")
    parser.add_argument("--tracking-uri", default=None,
                        help="also log the reports to the search's parent MLflow run in this store")
    args = parser.parse_args(argv)
    try:
        folder = Path(args.storage).expanduser() / args.name
        refuse_credentials("--tracking-uri", args.tracking_uri)
        load_study(args.name, args.storage)  # one-line error for a wrong name before anything else
        parent = parent_run_id_of(args.tracking_uri, args.name) if args.tracking_uri else None
        if args.tracking_uri and parent is None:
            raise UsageError(f"--tracking-uri {args.tracking_uri}: no parent run of search {args.name!r}")
        reports = write_search_reports(folder, metric=args.metric, tracking_uri=args.tracking_uri, parent_run_id=parent)
    except UsageError as exc:
        print(f"python -m search.report.reports: error: {exc}", file=sys.stderr)
        return 2
    for name, p in reports.plots.items():
        print(f"{name:<22} {reports.location}/{p['png']}")
    for name, why in reports.skipped.items():
        print(f"{name:<22} skipped: {why}")
    if reports.logged_to:
        print(f"logged to {reports.logged_to}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
