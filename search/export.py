"""``python -m search.export``: the best models of a search as self-contained bundles with a model card.

    python -m search.export --name STUDY [--storage DIR] [--top-k K] --dest DIR
    python -m search.export --model NAME [--alias champion | --version N] [--tracking-uri URI] --dest DIR
    python -m search.export --name STUDY --dest DIR --sign-key KEY     # and sign each bundle (Ed25519)

Each selected configuration becomes ``DEST/<study>-<rank>-<trial>/`` (``DEST/<model>-v<version>/``
from the registry): a :mod:`trainables.bundle` (safetensors weights, full config, preprocessing
statistics, class names, modality names and dimensions, encoder identities, SHA-256 manifest) plus
``MODEL_CARD.md`` and its machine-readable twin ``model_card.json``, the fusetune wheel it was
made with (``fusetune-<version>-py3-none-any.whl``, built from the code that is running, with
``pip wheel --no-deps``) and ``requirements.txt`` (exact pins of what loading and predicting
import), all covered by the manifest. ``pip install -r requirements.txt`` then
``pip install --no-deps fusetune-*.whl`` is all a downstream machine needs (the card says so)::

    from trainables.bundle import load_bundle
    probs = load_bundle("DEST/tiny-1-1bc01323").predict(frame)   # missing modalities: NaN / absent columns

The deployable model is the one the search registered (:mod:`search.models`: the configuration
refitted on the whole training part with the trial's seed and epochs). It is taken, in order, from
the study's ``models/<rank>-<trial>/`` folder, from the MLflow registry of the search (the version
tagged with the trial), or refitted now the same way.

An ensemble (:mod:`trainables.ensemble`, registered by :mod:`search.models`) is exported the same
way, its card listing the members, their weights and confirmed figures and the ensemble's scores
on the fixed test part (there are no fold models of an ensemble to evaluate); when every member is
a reference model the card says so in plain words.

The model card's evidence comes from the trial's own fold models (its last checkpoint, or retrained
from the config when the checkpoint is gone), each evaluated on its validation fold: metrics mean ±
std over folds as the search reported them, per-class precision/recall and the confusion matrix of
the out-of-fold predictions (pooled over folds), and the metric as each modality goes missing at
0, 30, 60 and 90 % (:mod:`search.robustness`). When the dataset has a fixed test part, the
refitted model's scores on it (computed once at registration, never used for selection) are listed
too. The card ends with the command that reruns the search and the one that retrains this model
from the bundle alone and checks it (:mod:`search.reproduce`).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from search.cli import DEFAULT_STORAGE, OneLineParser, add_storage_option
from search.credentials import private_outputs, refuse_credentials
from search.errors import UsageError
from search.results import SEARCH_FILE, StudyResults, TrialResult, load_study
from search.robustness import ALL, DEFAULT_RATES, FoldModels, Row, evaluate, fold_models, parse_rates
from trainables.bundle import ENSEMBLE, copy_bundle, load_bundle, sign_bundle, verify_bundle
from trainables.data import DataError
from trainables.metrics import METRICS, classification_metrics
from trainables.signing import key_id, load_private_key

CARD = "MODEL_CARD.md"
REQUIREMENTS = "requirements.txt"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
CARD_JSON = "model_card.json"
MODELS_DIR = "models"
"""Where the search may keep its registered bundles (``log_top_models(bundle_dir=<study>/models)``)."""


# ----------------------------------------------------------------------------- what is exported
@dataclass
class Selected:
    rank: int
    trial: TrialResult
    study: StudyResults | None
    bundle: Path
    """A verified bundle folder holding the deployable model."""
    origin: str
    """Where the bundle came from (study folder, ``models:/NAME/VERSION``, refitted now)."""
    search_options: dict[str, Any] | None
    """The search's options (``search.json`` or the parent run's params), for the reproduce command."""
    out_name: str


def _search_options(study: StudyResults) -> dict[str, Any] | None:
    """``search.json`` of the study (None if it has none); one-line :class:`UsageError` naming the
    file when it is not a JSON object."""
    path = study.folder / SEARCH_FILE
    if not path.is_file():
        return None
    try:
        options = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8 text"
        raise UsageError(f"{path}: not valid JSON ({reason}); expected the search's options as a JSON object") from None
    if not isinstance(options, dict):
        raise UsageError(f"{path}: expected the search's options as a JSON object, found a JSON "
                         f"{type(options).__name__}")
    return options


def _tracking_uri(study: StudyResults, options: dict[str, Any] | None) -> str | None:
    """The search's MLflow store, if it exists: its ``--tracking-uri`` or the default SQLite file."""
    from search.tracking import default_tracking_uri

    if options and options.get("tracking_uri"):
        return str(options["tracking_uri"])
    db = study.folder.parent / "mlflow.db"
    return default_tracking_uri(study.folder.parent) if db.is_file() else None


def _registered_bundle(uri: str, study: StudyResults, trial_id: str, tmp: Path) -> tuple[Path, str] | None:
    """The bundle registered for ``trial_id`` of ``study`` in the MLflow store ``uri``, downloaded."""
    from mlflow.tracking import MlflowClient

    from search.tracking import SEARCH_NAME_TAG, fast_http

    try:
        with fast_http(10.0):
            client = MlflowClient(uri)
            versions = client.search_model_versions(f"tags.`fusetune.trial_id` = '{trial_id}'")
            versions = [v for v in versions if client.get_run(v.run_id).data.tags.get(SEARCH_NAME_TAG) == study.name]
            if not versions:
                return None
            v = max(versions, key=lambda v: int(v.version))
            return _download(uri, v.name, str(v.version), tmp), f"models:/{v.name}/{v.version}"
    except Exception as exc:  # noqa: BLE001 - the registry is one of three sources
        print(f"note: MLflow store {uri} not usable for trial {trial_id} ({' '.join(str(exc).split())[:200]})",
              file=sys.stderr)
        return None


def _download(uri: str, name: str, version: str, tmp: Path) -> Path:
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                    dst_path=str(tmp / f"{name}-v{version}"))
    finally:
        mlflow.set_tracking_uri(previous)
    bundle = Path(local) / "artifacts" / "bundle"
    if not bundle.is_dir():
        raise UsageError(f"model {name} version {version}: its artifacts hold no fusetune bundle (artifacts/bundle)")
    return bundle


def _refit_bundle(study: StudyResults, trial: TrialResult, rank: int, tmp: Path) -> Path:
    """Refit the configuration as :func:`search.models.log_top_models` does and bundle it."""
    from search.models import refit
    from trainables.bundle import save_bundle

    print(f"trial {trial.trial_id}: no registered bundle found; refitting it on the whole training part", file=sys.stderr)
    fit = refit(trial.config)
    metadata = {
        "space": study.space, "data": fit.train.name, "data_spec": trial.config.get("data"),
        "data_fingerprint": fit.fingerprint, "trial_id": trial.trial_id, "rank": rank,
        "refit": "whole training part, same seed and epochs",
        "cv_metrics": {k: v for k, v in trial.last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "test_metrics": fit.test_metrics,
    }
    return save_bundle(tmp / f"refit-{trial.trial_id}", fit.trainer, data=fit.train, metadata=metadata)


def select_from_study(study: StudyResults, top_k: int, tmp: Path) -> list[Selected]:
    """The study's best ``top_k`` finished trials (the search's own ranking), each with its bundle."""
    ranked = study.ranked()
    if not ranked:
        raise UsageError(f"--name {study.name}: no trial finished all its epochs; nothing to export")
    options = _search_options(study)
    uri = _tracking_uri(study, options)
    out = []
    for rank, trial in enumerate(ranked[:top_k], 1):
        kept = sorted((study.folder / MODELS_DIR).glob(f"*-{trial.trial_id}"))
        if kept:
            bundle, origin = kept[0], f"study folder {kept[0]}"
        else:
            found = _registered_bundle(uri, study, trial.trial_id, tmp) if uri else None
            bundle, origin = found if found else (_refit_bundle(study, trial, rank, tmp), "refitted by search.export")
        out.append(Selected(rank, trial, study, bundle, origin, options, f"{study.name}-{rank}-{trial.trial_id}"))
    return out


def select_from_registry(model: str, alias: str | None, version: str | None, tracking_uri: str, tmp: Path,
                         storage: str | None) -> Selected:
    """A registered model version; its trial's study is used when its folder is reachable."""
    from mlflow.tracking import MlflowClient

    from search.tracking import PARENT_RUN_TAG, TRIAL_ID_TAG, check_tracking_uri

    check_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    try:
        v = client.get_model_version(model, version) if version else client.get_model_version_by_alias(model, alias)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own exception types
        what = f"version {version}" if version else f"alias {alias!r}"
        raise UsageError(f"--model {model}: no {what} in {tracking_uri} ({' '.join(str(exc).split())[:160]})") from None
    bundle = _download(tracking_uri, model, str(v.version), tmp)
    run = client.get_run(v.run_id)
    trial_id = v.tags.get(TRIAL_ID_TAG) or run.data.tags.get(TRIAL_ID_TAG, "?")
    parent = client.get_run(run.data.tags[PARENT_RUN_TAG]) if PARENT_RUN_TAG in run.data.tags else None
    options = dict(parent.data.params) if parent else None
    study = None
    if options:
        folder = Path(storage or options.get("storage", "")).expanduser() / options.get("name", "")
        if folder.is_dir() and options.get("name"):
            try:
                study = load_study(folder.name, folder.parent)
                options = _search_options(study) or options
            except UsageError:
                study = None
    if study is not None and any(t.trial_id == trial_id for t in study.trials):
        trial = study.trial(trial_id)
    else:  # the study folder is elsewhere: the run's final metrics and the bundle's full config
        from search.models import CONFIG_TAG

        single = not (bundle / ENSEMBLE).is_file()  # an ensemble's config: the search's fixed keys
        config = json.loads((bundle / "config.json").read_text()) if single else json.loads(v.tags.get(CONFIG_TAG, "{}"))
        trial = TrialResult(trial_id, "TERMINATED", config, [{**run.data.metrics, "final": True}], None)
    rank = int(v.tags.get("fusetune.rank", 1))
    return Selected(rank, trial, study, bundle, f"models:/{model}/{v.version}", options, f"{model}-v{v.version}")


# ----------------------------------------------------------------------------- the model card
def _pm(mean: float | None, std: float | None) -> str:
    return "-" if mean is None else f"{mean:.4f} ± {float(std or 0.0):.4f}"


def _value(options: dict[str, Any], key: str) -> Any:
    v = options.get(key)
    return None if v in (None, "None", "", [], ()) else v


def search_command(options: dict[str, Any] | None) -> str | None:
    """The ``python -m search.run`` command of the search, from its saved options."""
    if not options:
        return None
    flags = ("space", "data", "metric", "mode", "num_samples", "epochs", "folds", "val_fraction", "sampler", "scheduler",
             "seed", "top_k", "text_encoder", "image_encoder")
    parts = ["python", "-m", "search.run"]
    for key in flags:
        v = _value(options, key)
        if v is None or (key == "val_fraction" and str(_value(options, "folds")) != "0"):
            continue
        parts += [f"--{key.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
    points = options.get("points")
    for p in points if isinstance(points, list) else []:
        parts += ["--points", json.dumps(p, sort_keys=True)]
    return " ".join(shlex.quote(p) for p in parts)


def card_facts(sel: Selected, models: FoldModels, rows: list[Row], metric: str, path: Path) -> dict[str, Any]:
    """Everything the card says, JSON-ready (written as ``model_card.json``)."""
    bundle = load_bundle(sel.bundle)
    trial = sel.trial
    labels, probs = [], []
    for k, t in enumerate(models.trainers):
        labels.append(t.val.labels)
        probs.append(models.predict(k))
    oof = classification_metrics(np.concatenate(labels), np.concatenate(probs), bundle.class_names)
    meta = bundle.metadata
    from spaces import SPACES

    space = SPACES.get(trial.config.get("space", ""))
    sampled = {k: trial.config[k] for k in (space.names if space else []) if k in trial.config}
    return {
        "model": sel.out_name, "trial_id": trial.trial_id, "rank": sel.rank, "source": sel.origin,
        "study": sel.study.name if sel.study else trial.config.get("space"),
        "method": bundle.method, "space": trial.config.get("space"), "class_names": bundle.class_names,
        "modalities": bundle.modalities,
        "inputs": [{k: v for k, v in i.items() if k != "features"} | {"features": len(i.get("features", []))}
                   for i in bundle.inputs],
        "encoders": bundle.encoders,
        "data": {"spec": trial.config.get("data"), "name": bundle.description.get("data", {}).get("name"),
                 "fingerprint": meta.get("data_fingerprint") or trial.last.get("data_fingerprint"),
                 "folds": trial.config.get("folds"), "seed": trial.config.get("seed"),
                 "val_fraction": trial.config.get("val_fraction")},
        "hyperparameters": sampled, "epochs": trial.config.get("epochs"),
        "refit": meta.get("refit", "whole training part, same seed and epochs"),
        "cv_metrics": {m: {"mean": trial.value(m), "std": trial.last.get(f"{m}_std"),
                           "folds": trial.fold_values(m).tolist()} for m in METRICS},
        "objective": metric,
        "oof": {"per_class": oof["per_class"], "confusion_matrix": oof["confusion_matrix"]},
        "test": meta.get("test_metrics"),
        "robustness": {"metric": metric, "fold_models": models.source,
                       "rows": [{"kind": r.kind, "target": r.target, "rate": r.rate, "achieved": r.achieved,
                                 "mean": r.mean, "std": r.std, "folds": list(r.folds)} for r in rows]},
        "reproduce": {"search": search_command(sel.search_options),
                      "model": f"python -m search.reproduce {shlex.quote(str(path))}"},
        "code_version": trial.last.get("code_version") or meta.get("code_version"),
        "exported": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _per_class(per_class: dict[str, dict[str, float]]) -> list[str]:
    return _table(["class", "precision", "recall", "f1", "support"],
                  [[c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"])]
                   for c, v in per_class.items()])


def _confusion(cm: list[list[int]], classes: list[str]) -> list[str]:
    return _table(["true \\ predicted", *classes], [[c, *map(str, row)] for c, row in zip(classes, cm)])


def _install_section(f: dict[str, Any]) -> list[str]:
    install = f.get("install")
    if not install:
        return []
    lines = ["## Install", "", f"In this folder (made with Python {install['python']}):", "",
             "```", *install["commands"], "```", ""]
    if not install.get("wheel"):
        lines += [f"(no wheel in this bundle: install fusetune at code version `{f.get('code_version')}`)", ""]
    return lines


def render_card(f: dict[str, Any]) -> str:
    """``model_card.md`` from the card's facts (:func:`card_facts`), one section after another."""
    return "\n".join(line for section in CARD_SECTIONS for line in section(f))


def _card_header(f: dict[str, Any]) -> list[str]:
    return [
        f"# Model card: {f['model']}", "",
        f"Trial `{f['trial_id']}` (rank {f['rank']}) of study `{f['study']}`, space `{f['space']}`, "
        f"method `{f['method']}`. Model from {f['source']}; exported {f['exported']}"
        + (f", code version `{f['code_version']}`." if f.get("code_version") else "."), "",
        "```python", "from trainables.bundle import load_bundle",
        "probs = load_bundle(\"<this folder>\").predict(frame)  # [N, C], columns in class order below", "```", "",
    ]


def _model_section(f: dict[str, Any]) -> list[str]:
    """Classes, inputs and how missing ones are given, the encoders, the searched hyperparameters."""
    lines = _inputs_lines(f, f"- deployable model: {f['refit']} ({f['epochs']} epochs); the evidence below is the "
                             "cross-validation of the same configuration")
    lines += ["", "Searched hyperparameters:", ""]
    lines += _table(["parameter", "value"], [[k, f"{v:.4g}" if isinstance(v, float) else str(v)]
                                             for k, v in f["hyperparameters"].items()]) if f["hyperparameters"] else ["(none)"]
    return lines


def _inputs_lines(f: dict[str, Any], deployable: str) -> list[str]:
    """The "Model" section's classes, modalities, ``deployable`` line, inputs table and encoders."""
    lines = [
        "## Model", "",
        f"- classes (probability columns, in order): {', '.join(f['class_names'])}",
        f"- modalities: {', '.join(f['modalities'])}; any may be missing for a sample, "
        + ("given as a dict of arrays `{input: array, 'mask/<modality>': bool [N]}` (mask False = missing)"
           if any(i["kind"] == "tokens" for i in f["inputs"]) else
           "given as a DataFrame with columns `<input>/<feature>` (all NaN or absent = missing)"),
        deployable,
        "",
        *_table(["modality", "input", "kind", "dim", "tokens", "encoder"],
                [[i["modality"], i["name"], i["kind"], str(i["dim"]), str(i.get("length") or "-"),
                  (f"{f['encoders'][i['modality']]['encoder']}" if i["modality"] in f["encoders"] else "as given")]
                 for i in f["inputs"]]),
    ]
    if f["encoders"]:
        lines += ["", "Encoder identities (the bundle refuses raw inputs encoded by a different checkpoint):", ""]
        lines += [f"- `{m}` ({e['kind']} -> {', '.join(e['representations'])}): `{e['encoder']}` "
                  f"{json.dumps(e.get('identity'), sort_keys=True)}"
                  + (f"; sentence pooling {'+'.join(e['pooling']['modes'])}"
                     + (", L2-normalised" if e["pooling"]["normalize"] else "") if e.get("pooling") else "")
                  + (f"; image processor {e['processor']['class']}" if e.get("processor") else "")
                  for m, e in f["encoders"].items()]
    return lines


def _evidence_section(f: dict[str, Any]) -> list[str]:
    """The data, the cross-validation figures, the out-of-fold per-class figures, the fixed test part."""
    d, classes = f["data"], f["class_names"]
    folds = "hold-out split" if d["folds"] == 0 else f"{d['folds']}-fold stratified cross-validation"
    n_folds = len(f["cv_metrics"][f["objective"]]["folds"])
    lines = ["", "## Data", "",
             f"- dataset `{d['spec']}`, fingerprint `{d['fingerprint']}` (SHA-256 of the loaded content)",
             f"- validation: {folds} of the training part, seed {d['seed']}", "",
             f"## Cross-validation metrics (mean ± std over {n_folds} folds)", ""]
    lines += _table(["metric", "mean ± std", *(f"fold {k}" for k in range(n_folds))],
                    [[m + (" (objective)" if m == f["objective"] else ""), _pm(v["mean"], v["std"]),
                      *(f"{x:.4f}" for x in v["folds"])] for m, v in f["cv_metrics"].items()])
    lines += ["", "## Per-class precision and recall (out-of-fold predictions, pooled over folds)", ""]
    lines += _per_class(f["oof"]["per_class"])
    lines += ["", "## Confusion matrix (out-of-fold, rows = true class)", ""]
    lines += _confusion(f["oof"]["confusion_matrix"], classes)
    if f.get("test"):
        t = f["test"]
        lines += ["", "## Fixed test part (the deployable model, scored once, never used for selection)", "",
                  ", ".join(f"{m} {t[m]:.4f}" for m in METRICS if m in t), ""]
        lines += _per_class(t["per_class"]) + [""] + _confusion(t["confusion_matrix"], classes)
    return lines


def _robustness_section(f: dict[str, Any]) -> list[str]:
    """The fold models with modalities removed: one row per target, one column per rate."""
    rob = f["robustness"]
    rates = sorted({r["rate"] for r in rob["rows"]})
    lines = ["", f"## Missing modalities ({rob['metric']}, mean ± std over folds)", "",
             ("Each fold model on its validation fold with a modality removed from a random fraction of the samples "
              "(seeded; a sample always keeps one modality; `all` drops (sample, modality) cells at random and "
              "reports the fraction it could drop). Rate 0 is the search's own figure."), ""]
    targets = list(dict.fromkeys((r["kind"], r["target"]) for r in rob["rows"]))
    cells = {(r["kind"], r["target"], r["rate"]): r for r in rob["rows"]}
    body = []
    for kind, target in targets:
        label = "all modalities" if target == ALL else ("report attributes" if kind == "attribute" else target)
        row = [label]
        for rate in rates:
            c = cells.get((kind, target, rate))
            extra = f" ({c['achieved']:.0%} dropped)" if c and target == ALL and abs(c["achieved"] - rate) > 0.01 else ""
            row.append("-" if c is None else _pm(c["mean"], c["std"]) + extra)
        body.append(row)
    lines += _table(["missing", *(f"{r:.0%}" for r in rates)], body) if body else ["(one modality: nothing can go missing)"]
    return lines


def _reproduce_section(f: dict[str, Any]) -> list[str]:
    lines = ["", "## Reproduce", ""]
    if f["reproduce"]["search"]:
        lines += ["The search that selected this configuration:", "", "```", f["reproduce"]["search"], "```", ""]
    lines += [("Retrain this model from the bundle alone (same data, seed and epochs) and check it gives the same "
               "probabilities:"), "", "```", f["reproduce"]["model"], "```", ""]
    return lines


CARD_SECTIONS: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    _card_header, _install_section, _model_section, _evidence_section, _robustness_section, _reproduce_section)
"""The model card's sections, in order; each turns the facts into its Markdown lines."""


# ----------------------------------------------------------------------------- an ensemble's card
REFERENCE_NAMES = {"logreg": "logistic regression", "rf": "random forest", "hgb": "gradient boosting"}
"""Plain names of the reference models (``search.references``) for the model card."""


def ensemble_card_facts(sel: Selected, metric: str, path: Path) -> dict[str, Any]:
    """The card's facts of an ensemble bundle, JSON-ready: members (name, kind, what they are,
    weight, confirmed figures), inputs and the fixed test part's scores."""
    bundle = load_bundle(sel.bundle)
    meta = bundle.metadata
    members = []
    for m in bundle.members:
        what = (REFERENCE_NAMES.get(m.predictor.model.reference, m.predictor.model.reference) if m.kind == "reference"
                else f"{m.predictor.method} network")
        members.append({"name": m.name, "kind": m.kind, "model": what, "weight": m.weight, "confirmed": m.confirmed})
    return {
        "model": sel.out_name, "kind": "ensemble", "trial_id": sel.trial.trial_id, "rank": sel.rank,
        "source": sel.origin, "study": sel.study.name if sel.study else meta.get("space"), "space": meta.get("space"),
        "class_names": bundle.class_names, "modalities": bundle.modalities,
        "inputs": [{k: v for k, v in i.items() if k != "features"} | {"features": len(i.get("features", []))}
                   for i in bundle.inputs],
        "encoders": bundle.encoders,
        "data": {"spec": meta.get("data_spec"), "name": bundle.description.get("data", {}).get("name"),
                 "fingerprint": meta.get("data_fingerprint"), "seed": sel.trial.config.get("seed")},
        "refit": meta.get("refit"), "objective": metric, "members": members,
        "references_only": all(m["kind"] == "reference" for m in members),
        "cv_metrics": meta.get("cv_metrics") or {}, "test": meta.get("test_metrics"),
        "reproduce": {"search": search_command(sel.search_options)},
        "code_version": meta.get("code_version"), "exported": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _ensemble_header(f: dict[str, Any]) -> list[str]:
    members = f["members"]
    lines = [f"# Model card: {f['model']}", "",
             f"Ensemble of {len(members)} member{'s' if len(members) > 1 else ''}"
             + (f" selected by study `{f['study']}`" if f.get("study") else "")
             + f": the weighted average of their class probabilities. Model from {f['source']}; exported {f['exported']}"
             + (f", code version `{f['code_version']}`." if f.get("code_version") else "."), ""]
    if f["references_only"]:
        names = ", ".join(dict.fromkeys(m["model"] for m in members))
        if len(members) == 1:
            lines += [f"This model is a reference model ({names}), not a tuned network: the search's own models did "
                      "not beat it on fresh folds.", ""]
        else:
            lines += [f"This model is an ensemble of reference models ({names}), not tuned networks: the search's own "
                      "models did not beat them on fresh folds.", ""]
    lines += ["```python", "from trainables.bundle import load_bundle",
              "probs = load_bundle(\"<this folder>\").predict(frame)  # [N, C], columns in class order below", "```", ""]
    return lines


def _ensemble_members_section(f: dict[str, Any]) -> list[str]:
    metrics = [m for m in METRICS if any(m in x["confirmed"] for x in f["members"])]
    lines = ["", "## Members", "",
             f"- deployable members: {f['refit']}" if f.get("refit") else "- deployable members: refitted on the "
             "whole training part", ""]
    lines += _table(["member", "model", "weight", *(f"confirmed {m}" for m in metrics)],
                    [[x["name"], x["model"], f"{x['weight']:.4f}",
                      *(f"{x['confirmed'][m]:.4f}" if m in x["confirmed"] else "-" for m in metrics)]
                     for x in f["members"]])
    return lines


def _ensemble_evidence_section(f: dict[str, Any]) -> list[str]:
    d = f["data"]
    lines = ["", "## Data", "", f"- dataset `{d['spec']}`, fingerprint `{d['fingerprint']}` (SHA-256 of the loaded "
             f"content), seed {d['seed']}"]
    figures = {m: f["cv_metrics"][m] for m in METRICS if m in f["cv_metrics"]}
    if figures:
        lines += ["", "## The ensemble's own figures (as the search's selection reported them)", "",
                  ", ".join(f"{m} {v:.4f}" for m, v in figures.items())]
    if f.get("test"):
        t = f["test"]
        lines += ["", "## Fixed test part (the deployable ensemble, scored once, never used for selection)", "",
                  ", ".join(f"{m} {t[m]:.4f}" for m in METRICS if m in t), ""]
        lines += _per_class(t["per_class"]) + [""] + _confusion(t["confusion_matrix"], f["class_names"])
    if f["reproduce"]["search"]:
        lines += ["", "## Reproduce", "", "The search that selected this ensemble:", "", "```",
                  f["reproduce"]["search"], "```", ""]
    return lines


def _ensemble_model_section(f: dict[str, Any]) -> list[str]:
    return _inputs_lines(f, "- deployable model: the weighted average of the class probabilities of the members below")


ENSEMBLE_CARD_SECTIONS: tuple[Callable[[dict[str, Any]], list[str]], ...] = (
    _ensemble_header, _install_section, _ensemble_model_section, _ensemble_members_section, _ensemble_evidence_section)
"""An ensemble's model card sections, in order."""


def render_ensemble_card(f: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` of an ensemble from :func:`ensemble_card_facts`."""
    return "\n".join(line for section in ENSEMBLE_CARD_SECTIONS for line in section(f))


# ----------------------------------------------------------------------------- hand-off installability
SOURCE_PARTS = ("pyproject.toml", "README.md", "search", "spaces", "trainables")
"""What ``pip wheel`` needs of the checkout (pyproject's packages and readme)."""


def fusetune_wheel(out_dir: Path) -> Path | None:
    """Build the wheel of the fusetune code that is running (its checkout, copied aside so the build
    leaves nothing in it) into ``out_dir``; None when fusetune does not run from a checkout."""
    import shutil
    import subprocess

    import trainables

    root = Path(trainables.__file__).resolve().parents[1]
    if not all((root / part).exists() for part in SOURCE_PARTS):
        return None
    with tempfile.TemporaryDirectory(prefix="fusetune-wheel-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for part in SOURCE_PARTS:
            if (root / part).is_dir():
                shutil.copytree(root / part, src / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(root / part, src / part)
        out_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                               "--quiet", "-w", str(out_dir), str(src)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UsageError(f"building the fusetune wheel for the bundle failed: {tail[0]}")
    return next(iter(sorted(out_dir.glob("fusetune-*.whl"))))


def bundle_requirements(bundle_path: Path) -> list[str]:
    """Exact pins of what loading and predicting with the bundle imports (MLflow left out: a bundle
    does not need it); the same list the registered pyfunc logs (:func:`search.models.pip_requirements`)."""
    from search.models import pip_requirements

    return [r for r in pip_requirements(load_bundle(bundle_path)) if not r.startswith("mlflow==")]


def install_lines(wheel: str | None, requirements: list[str]) -> list[str]:
    torch = next((r for r in requirements if r.startswith("torch==")), "torch")
    lines = [f"pip install {torch} --index-url {CPU_TORCH_INDEX}   # machines without a GPU: the CPU build first",
             f"pip install -r {REQUIREMENTS}"]
    if wheel:
        lines.append(f"pip install --no-deps {wheel}          # this bundle's fusetune code (all of fusetune: drop --no-deps)")
    return lines


# ----------------------------------------------------------------------------- export
def _fold_models(sel: Selected) -> FoldModels:
    """The trial's fold models; a checkpoint that cannot be restored (corrupt, truncated, another
    model's) is one line naming it rather than a traceback."""
    try:
        return fold_models(sel.trial, log=lambda s: print(s, file=sys.stderr))
    except UsageError:  # a checkpoint that cannot be read, named by fold_models
        raise
    except Exception as exc:  # noqa: BLE001 - torch, safetensors and the model raise many types
        ckpt = sel.trial.checkpoint
        if ckpt is None:
            raise
        detail = " ".join(str(exc).split())[:160]
        raise UsageError(f"checkpoint {ckpt} of trial {sel.trial.trial_id}: cannot be restored "
                         f"({type(exc).__name__}: {detail}); delete that folder to have the export retrain "
                         "the trial's folds from its config") from None


def export_one(sel: Selected, dest: Path, *, rates: tuple[float, ...], seed: int, overwrite: bool,
               wheel: Path | None = None) -> Path:
    manifest = verify_bundle(sel.bundle)
    metric = sel.study.metric if sel.study else str(sel.trial.config.get("metric") or "macro_f1")
    metric = metric if metric in METRICS else "macro_f1"
    if ENSEMBLE in manifest["files"]:  # no fold models of an ensemble: members, weights, test part
        facts = ensemble_card_facts(sel, metric, dest / sel.out_name)
        render = render_ensemble_card
    else:
        models = _fold_models(sel)
        rows = evaluate(models, metric, rates, seed=seed)
        facts = card_facts(sel, models, rows, metric, dest / sel.out_name)
        render = render_card
    requirements = bundle_requirements(sel.bundle)
    facts["install"] = {"wheel": wheel.name if wheel else None, "requirements": requirements, "python": platform.python_version(),
                        "commands": install_lines(wheel.name if wheel else None, requirements)}
    extra: dict[str, str | bytes] = {REQUIREMENTS: "\n".join(requirements) + "\n"}
    if wheel is not None:
        extra[wheel.name] = wheel.read_bytes()
    extra.update({CARD: render(facts), CARD_JSON: json.dumps(facts, indent=1, default=str)})
    return copy_bundle(sel.bundle, dest / sel.out_name, overwrite=overwrite, extra_files=extra)


def parser() -> OneLineParser:
    p = OneLineParser(prog="python -m search.export",
                      description="Export the best models of a search as self-contained bundles with a model card.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--name", help="the study (search name under --storage)")
    src.add_argument("--model", help="a registered model name (MLflow Model Registry)")
    add_storage_option(p, default=None)  # --model: None = the search's own, from its MLflow run
    p.add_argument("--top-k", type=int, default=1, help="with --name: export the best K configurations (default 1)")
    p.add_argument("--alias", default=None, help="with --model: the version's alias (default champion)")
    p.add_argument("--version", default=None, help="with --model: a version number instead of an alias")
    p.add_argument("--tracking-uri", default=None,
                   help="with --model: the MLflow store (default sqlite:///<storage>/mlflow.db)")
    p.add_argument("--dest", required=True, metavar="DIR", help="where the bundles are written")
    p.add_argument("--rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES),
                   help="missing-modality rates for the card (default 0,0.3,0.6,0.9)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random masking (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace bundles already in --dest")
    p.add_argument("--sign-key", default=None, metavar="KEY",
                   help="sign each bundle with this Ed25519 private key (PEM; python -m trainables.signing keygen)")
    return p


def check_options(args: argparse.Namespace) -> None:
    """The combinations the parser cannot refuse by itself, in one line."""
    refuse_credentials("--tracking-uri", args.tracking_uri)
    if args.top_k < 1:
        raise UsageError(f"--top-k {args.top_k}: must be at least 1")
    if args.model is None and (args.alias or args.version or args.tracking_uri):
        raise UsageError("--alias, --version and --tracking-uri go with --model")
    if args.alias and args.version:
        raise UsageError("--alias and --version: give one of them")


def selected_models(args: argparse.Namespace, tmp: Path) -> list[Selected]:
    """The search's top-k (``--name``) or the registered version (``--model``), fetched into ``tmp``."""
    if args.name:
        return select_from_study(load_study(args.name, args.storage or DEFAULT_STORAGE), args.top_k, tmp)
    from search.tracking import default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri(args.storage or DEFAULT_STORAGE)
    return [select_from_registry(args.model, args.alias or "champion", args.version, uri, tmp, args.storage)]


@private_outputs()  # what it writes is readable by the user only (FUSETUNE_UMASK)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    dest = Path(args.dest).expanduser()
    try:
        check_options(args)
        sign_key = load_private_key(args.sign_key) if args.sign_key else None
        rates = parse_rates(args.rates)
        with tempfile.TemporaryDirectory(prefix="fusetune-export-") as tmp:
            selected = selected_models(args, Path(tmp))
            for sel in selected:
                if (dest / sel.out_name).exists() and not args.overwrite:
                    raise UsageError(f"--dest {dest}: {sel.out_name} exists (add --overwrite to replace it)")
            wheel = fusetune_wheel(Path(tmp) / "wheel")
            if wheel is None:
                print("python -m search.export: fusetune does not run from a checkout; the bundles carry no wheel "
                      "(the model card names the fusetune version to install)", file=sys.stderr)
            written = [export_one(s, dest, rates=rates, seed=args.seed, overwrite=args.overwrite, wheel=wheel)
                       for s in selected]
            for path in written if sign_key is not None else []:
                sign_bundle(path, sign_key)
    except (UsageError, DataError) as exc:  # BundleError and SigningError are DataErrors
        print(f"python -m search.export: error: {exc}", file=sys.stderr)
        return 2
    for sel, path in zip(selected, written):
        print(f"{path}  (rank {sel.rank}, trial {sel.trial.trial_id}, model from {sel.origin})")
    print("load: from trainables.bundle import load_bundle; load_bundle(PATH).predict(frame)")
    if sign_key is not None:
        print(f"signed with key {key_id(sign_key.public_key())}: load_bundle(PATH, public_key=\"KEY.pub\") checks it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
