"""The model card of an exported bundle (``MODEL_CARD.md`` and its facts as JSON): what the model
is, what it reads, the evidence it was chosen on (how it was selected, confirmed next to the
reference models), its robustness to missing modalities, and how to reproduce it; an ensemble's
card lists its members and weights. :mod:`search.export` gathers the facts and writes the card.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search.robustness import ALL, FoldModels, Row
from trainables.bundle import load_bundle
from trainables.metrics import METRICS, classification_metrics

if TYPE_CHECKING:
    from search.export import Selected


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
"""Plain names of the reference models (``search.select.references``) for the model card."""


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


