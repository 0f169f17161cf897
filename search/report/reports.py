"""Study reports: what a search did, as pictures, written after every search.

:func:`write_search_reports` rebuilds an Optuna study from the search's own results
(:mod:`search.report.optuna_study`), draws the figures of :data:`search.report.plots.PLOTS` and writes into
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

    python -m search.report.reports --name STUDY [--storage DIR] [--metric M] [--tracking-uri URI]
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from search.prepare.cli import OneLineParser, add_storage_option
from search.prepare.errors import UsageError
from search.report.optuna_study import rebuild_optuna_study
from search.report.plots import PLOTS, Context
from search.select.results import RESULTS_CSV, StudyResults, load_study
from search.trust.credentials import private_outputs, refuse_credentials

logger = logging.getLogger("fusetune.reports")

REPORTS_DIR = "reports"
ARTIFACT_PATH = "reports"


# ----------------------------------------------------------------------------- saving a figure
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
        ctx = Context(study, rebuild_optuna_study(study, metric, mode), metric, seed)
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


def _write_index(out: Reports, study: StudyResults, ctx: Context, metric: str, mode: str) -> None:
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

    from search.tracking.queue import fast_http

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

    from search.tracking.store import ROLE_TAG, SEARCH_NAME_TAG

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
