"""Refit: the deployable model of a configuration, trained once more on the whole training part.

Deployable model = refit. A trial's fold models are validation artefacts: each saw (k-1)/k of the
training part and was scored on the rest. For each of the top-k trials,
:func:`search.handoff.registration.log_top_models` trains the trial's config once more on the *whole*
training part (the same part the trials cross-validated on:
:func:`trainables.trial_data.prepare_from_config`), with the same seed (``config["seed"]``; fold k of
the trial used ``seed + k``) and the same number of epochs (``config["epochs"]``, which CLIMD's
schedule depends on), like scikit-learn's ``refit=True``. When the dataset has a fixed test part
(rosmap, breast-tcga) the refitted model is scored on it, once, and the scores are logged as
``test_<metric>``; no selection ever reads them.

An ensemble's members are fitted the same way (:func:`ensemble_members`): every network member
refitted as above, every reference member (``search.select.references``) fitted on the whole
training part with the search's seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from trainables.data import Modality, MultimodalDataset
from trainables.metrics import classification_metrics

if TYPE_CHECKING:
    from search.handoff.registration import TopTrial

MEMBER_KINDS = ("model", "reference")


@dataclass
class Refit:
    trainer: Any                   # trainables.engine.FoldTrainer, fitted on the whole training part
    train: MultimodalDataset       # the training part it was fitted on (encoded)
    test: MultimodalDataset | None  # the dataset's fixed test part (encoded), if it has one
    fingerprint: str
    test_metrics: dict[str, Any] | None


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def refit(config: dict[str, Any], *, device: str | None = None) -> Refit:
    """Train ``config`` on the whole training part (same seed and epochs) through the trial's own
    loop (:class:`trainables.trainable.Trial` with ``refit=True``) and score it on the fixed test
    part when the dataset has one (:func:`trainables.trial_data.fixed_test_part_from_config`: the
    same load and encoding as the training part)."""
    from trainables.trainable import Trial
    from trainables.trial_data import fixed_test_part_from_config, prepare_from_config

    data = prepare_from_config(config)
    trial = Trial(config["method"], config, data, device=device or _device(), refit=True)
    while trial.epoch < trial.epochs:
        trial.step()  # a non-finite loss ends it with a one-line TrialFailure
    (trainer,) = trial.trainers
    test = fixed_test_part_from_config(config)
    metrics = None
    if test is not None:
        metrics = classification_metrics(test.labels, trainer.predict_proba(test), trainer.class_names)
    return Refit(trainer, data.data, test, data.fingerprint, metrics)


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _refit_once(config: dict[str, Any], device: str | None, refits: dict[str, Refit] | None) -> Refit:
    """:func:`refit`, remembered in ``refits`` by the config's JSON: a configuration that is both a
    top-k model and an ensemble member is trained once per
    :func:`search.handoff.registration.log_top_models` call."""
    if refits is None:
        return refit(config, device=device)
    key = _config_key(config)
    if key not in refits:
        refits[key] = refit(config, device=device)
    return refits[key]


def _merged(parts: list[MultimodalDataset]) -> MultimodalDataset:
    """One dataset with every input of ``parts`` (the same samples, encoded for different methods)."""
    modalities: dict[str, Modality] = {}
    for part in parts:
        if not np.array_equal(part.ids, parts[0].ids):
            raise ValueError(f"ensemble members were fitted on different samples ({part.name} vs {parts[0].name})")
        for name, m in part.modalities.items():
            modalities.setdefault(name, m)
    return parts[0].with_modalities(modalities)


def ensemble_members(trial: TopTrial, *, device: str | None = None, refits: dict[str, Refit] | None = None):
    """The fitted members of the ensemble ``trial`` and the data they were fitted on: (members
    (:class:`trainables.ensemble.Member`), training part, fixed test part or None, fingerprint).
    Networks are refitted (:func:`refit`), references fitted on the training part of ``trial.config``
    with its seed; the returned parts hold every input some member reads."""
    from search.select import references
    from trainables.ensemble import Member, ReferenceModel
    from trainables.trial_data import fixed_test_part_from_config, prepare_from_config

    data = prepare_from_config(trial.config)
    trains, tests = [data.data], [fixed_test_part_from_config(trial.config)]
    members = []
    for record in trial.ensemble or []:
        kind, name = record.get("kind"), str(record["name"])
        if kind == "model":
            fit = _refit_once(dict(record["config"]), device, refits)
            model: Any = fit.trainer
            trains.append(fit.train)
            tests.append(fit.test)
        elif kind == "reference":
            reference = str(record["config"]["reference"])
            if reference not in references.REFERENCES:
                raise ValueError(f"ensemble member {name!r}: unknown reference model {reference!r} "
                                 f"(known: {', '.join(references.REFERENCES)})")
            estimator, layout = references.fit(reference, data.data, int(trial.config["seed"]))
            model = ReferenceModel(estimator, layout, reference)
        else:
            raise ValueError(f"ensemble member {name!r}: kind {kind!r}, expected one of {MEMBER_KINDS}")
        members.append(Member(name, model, float(record["weight"]), dict(record.get("confirmed") or {})))
    test = None if any(t is None for t in tests) else _merged(tests)
    return members, _merged(trains), test, data.fingerprint

