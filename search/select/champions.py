"""After the search: confirm the candidates, register the best, promote it only if it is better.

:func:`select` is the post-search step of ``python -m search.run``: it runs the confirmation stage
(:mod:`search.select.confirm`; skipped with ``--confirm-repeats 0``), records the reference models as
MLflow child runs (tag ``fusetune.role = reference``) and on the parent run the champion's
``confirmed_<metric>``, the ``selection_gap`` and ``confirmation.csv``, selects and confirms the
ensemble (:mod:`search.select.ensemble`; ``--ensemble``), refits and registers the best ``--top-k`` model
candidates (best confirmed first; by search figure when the stage is off) and, beside them, the
ensemble and the best single model, each version tagged with its confirmed figures, and gives the
best one ``champion`` or ``challenger`` by ``--promote`` (:mod:`search.handoff.promotion`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.handoff import promotion
from search.prepare.config import SearchConfig
from search.select import confirm, ensemble, oof, references, verdict
from search.select.results import CONFIRMATION_CSV, TrialResult
from search.trust.files import write_text
from search.tune import faults
from spaces import Space
from trainables.metrics import METRICS
from trainables.trial_data import TrialData


@dataclass
class Selection:
    confirmation: verdict.Confirmation | None
    registered: str | None
    versions: list[str]
    decision: promotion.Decision | None
    reference_rows: list[dict[str, Any]]   # rows for results.csv: the references on the search's folds


def candidates(cfg: SearchConfig, space: Space, rows: list[TrialResult], ranked: list[TrialResult],
               fixed: dict[str, Any]) -> list[verdict.Candidate]:
    """The top-k trials, the paper default, the references (in that order)."""
    metric = cfg.primary_metric
    out = [verdict.Candidate(r.trial_id, "model", dict(r.config), r.value(metric), r.trial_id)
           for r in ranked[: max(cfg.top_k, 1)]]
    out.append(verdict.paper_default(rows, space.default_point(), fixed, metric))
    out += [verdict.Candidate(references.candidate_name(n), "reference", {"reference": n}) for n in cfg.references]
    return out


def ensemble_members(c: verdict.Candidate, metric: str) -> list[dict[str, Any]]:
    """The ensemble's members as its registration refits them: name, kind, config, weight, confirmed figures."""
    return [{"name": name, "kind": member.kind, "config": dict(member.config), "weight": weight,
             "confirmed": {m: member.confirmed(m) for m in METRICS if member.confirmed(m) is not None}}
            for name, weight, member in zip(c.ensemble.members, c.ensemble.weights, c.members)]


def _scheme(cfg: SearchConfig, fingerprint: str) -> verdict.Scheme:
    return verdict.Scheme(cfg.folds, cfg.val_fraction, tuple(verdict.fresh_seeds(cfg.seed, cfg.confirm_repeats)),
                          cfg.primary_metric, fingerprint)


def _resources(cfg: SearchConfig) -> dict[str, float]:
    return {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial}


def run_confirmation(cfg: SearchConfig, space: Space, rows: list[TrialResult], ranked: list[TrialResult], data: TrialData,
                     exp_path: str, fixed: dict[str, Any], incumbent: promotion.Incumbent | None,
                     fs: Any = None) -> verdict.Confirmation:
    scheme = _scheme(cfg, data.fingerprint)
    cands = candidates(cfg, space, rows, ranked, fixed)
    if promotion.needs_retrain(incumbent, cfg.promote, data.fingerprint, scheme.key(), cfg.primary_metric):
        cands.append(verdict.Candidate(incumbent.candidate_name, "model", {**incumbent.config, "data": cfg.data},
                                       incumbent=True))
    confirm.run_stage(cands, scheme, search_seed=cfg.seed, data=data, experiment_path=exp_path,
                      resources=_resources(cfg), max_concurrent=cfg.max_concurrent)
    keep_reference_probs(cands, exp_path, fs)
    if cfg.ensemble != "off":
        chosen = run_ensemble(cfg, rows, ranked, cands, scheme, data, exp_path, fs)
        if chosen is not None:
            cands.append(chosen)
    return verdict.verdict(cands, scheme, cfg.primary_mode)


def keep_reference_probs(cands: list[verdict.Candidate], exp_path: str, fs: Any = None) -> None:
    """The references' probabilities on the search's folds, stored beside the trials' (:mod:`search.select.oof`)."""
    for c in cands:
        if c.kind == "reference" and confirm.SEARCH_REPEAT in c.probs:
            oof.write(exp_path, oof.reference_name(c.config["reference"]), c.probs[confirm.SEARCH_REPEAT], fs)


def ensemble_pool(cfg: SearchConfig, ranked: list[TrialResult], cands: list[verdict.Candidate], exp_path: str,
                  fs: Any = None) -> dict[str, oof.OutOfFold]:
    """Candidate name -> out-of-fold probabilities on the search's folds: every trial that ran its
    full budget and, with ``--ensemble trials+references``, every reference."""
    pool: dict[str, oof.OutOfFold] = {}
    for r in ranked:
        found = oof.read(exp_path, r.trial_id, fs)
        if found is not None:
            pool[r.trial_id] = found
    if cfg.ensemble == "trials+references":
        for c in cands:
            if c.kind == "reference" and not c.error and confirm.SEARCH_REPEAT in c.probs:
                pool[c.name] = c.probs[confirm.SEARCH_REPEAT]
    return pool


def run_ensemble(cfg: SearchConfig, rows: list[TrialResult], ranked: list[TrialResult], cands: list[verdict.Candidate],
                 scheme: verdict.Scheme, data: TrialData, exp_path: str, fs: Any = None) -> verdict.Candidate | None:
    """Select the ensemble on the search's folds (:mod:`search.select.ensemble`), confirm the members that are
    not candidates already on the same fresh folds, and return it as a candidate (None without a pool)."""
    pool = ensemble_pool(cfg, ranked, cands, exp_path, fs)
    if not pool:
        return None
    chosen = ensemble.select(ensemble.Pool.of(pool), cfg.primary_metric, cfg.primary_mode, size=cfg.ensemble_size,
                             seed=cfg.seed)
    record = {**chosen.describe(), "score": chosen.score, "metric": cfg.primary_metric, "mode": cfg.primary_mode,
              "candidates": sorted(pool), "size": cfg.ensemble_size, "variant": cfg.ensemble, "seed": cfg.seed}
    write_text(json.dumps(record, indent=1), exp_path, ensemble.RECORD, fs)
    faults.point("confirmation")
    members: dict[str, verdict.Candidate] = {}
    for c in cands:
        if not c.incumbent:
            members.setdefault(c.trial_id or c.name, c)
    by_id = {r.trial_id: r for r in rows}
    extra = [verdict.Candidate(m, "model", dict(by_id[m].config), by_id[m].value(cfg.primary_metric), m)
             for m in chosen.members if m not in members]
    if extra:
        confirm.run_stage(extra, scheme, search_seed=cfg.seed, data=data, experiment_path=exp_path,
                          resources=_resources(cfg), max_concurrent=cfg.max_concurrent,
                          experiment=confirm.ENSEMBLE_EXPERIMENT)
        members.update({c.name: c for c in extra})
    return verdict.ensemble_candidate(chosen, members, scheme)


def run_references(cfg: SearchConfig, data: TrialData, exp_path: str, fs: Any = None) -> verdict.Confirmation:
    """The references on the search's folds alone (``--confirm-repeats 0``)."""
    scheme = _scheme(cfg, data.fingerprint)
    cands = [verdict.Candidate(references.candidate_name(n), "reference", {"reference": n}) for n in cfg.references]
    confirm.run_stage(cands, scheme, search_seed=cfg.seed, data=data, experiment_path=exp_path,
                      resources=_resources(cfg), max_concurrent=cfg.max_concurrent)
    keep_reference_probs(cands, exp_path, fs)
    return verdict.Confirmation(cands, scheme, cfg.primary_mode, None, {})


def reference_rows(conf: verdict.Confirmation) -> list[dict[str, Any]]:
    """The references on the search's folds, as ``results.csv`` rows (means, std, per fold)."""
    out = []
    for c in conf.candidates:
        if c.kind != "reference" or not c.search_folds:
            continue
        row: dict[str, Any] = {"trial_id": c.name, "status": "REFERENCE", "error": c.error}
        for m in METRICS:
            v = c.search_folds[m]
            row[m], row[f"{m}_std"] = float(v.mean()), float(v.std())
            row.update({f"fold{k}_{m}": float(x) for k, x in enumerate(v)})
        out.append(row)
    return out


def _log_to_parent(conf: verdict.Confirmation, client, parent_run_id: str, search_tags: dict[str, str],
                   csv_text: str, artifact: bool = True) -> None:
    """Champion figures and the confirmation table on the parent run; each reference a child run."""
    from mlflow.entities import Metric, Param, RunTag

    from search.tracking.store import PARENT_RUN_TAG, ROLE_TAG, SEARCH_NAME_TAG, TRIAL_ID_TAG

    m = conf.metric
    metrics = {}
    if conf.champion is not None:
        metrics[f"confirmed_{m}"] = conf.champion.confirmed(m)
        metrics[f"confirmed_{m}_std"] = conf.champion.confirmed_std(m)
        if conf.selection_gap is not None:
            metrics["selection_gap"] = conf.selection_gap
    ts = 0
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
    if artifact:
        with tempfile.TemporaryDirectory(prefix="fusetune-confirm-") as tmp:
            path = Path(tmp) / CONFIRMATION_CSV
            path.write_text(csv_text)
            client.log_artifact(parent_run_id, str(path))
    parent = client.get_run(parent_run_id)
    search_name = parent.data.tags.get(SEARCH_NAME_TAG, "")
    for c in conf.candidates:
        if c.kind != "reference" or c.error:
            continue
        found = client.search_runs([parent.info.experiment_id], max_results=1, filter_string=(
            f"tags.`{TRIAL_ID_TAG}` = '{c.name}' and tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'"))
        if found:
            continue  # a resumed search: recorded already
        tags = {PARENT_RUN_TAG: parent_run_id, TRIAL_ID_TAG: c.name, SEARCH_NAME_TAG: search_name,
                ROLE_TAG: "reference", **{k: v for k, v in search_tags.items() if k == "fusetune.data_fingerprint"}}
        run = client.create_run(parent.info.experiment_id, tags=tags, run_name=c.name)
        values: dict[str, float] = {}
        for metric in METRICS:
            if c.search_folds:
                v = c.search_folds[metric]
                values.update({metric: float(v.mean()), f"{metric}_std": float(v.std())})
                values.update({f"fold{k}_{metric}": float(x) for k, x in enumerate(v)})
            if c.confirmed(metric) is not None:
                values[f"confirmed_{metric}"] = c.confirmed(metric)
                values[f"confirmed_{metric}_std"] = c.confirmed_std(metric)
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, ts, 0) for k, v in values.items()],
                         params=[Param("reference", c.name.split(":", 1)[1])],
                         tags=[RunTag("mlflow.note.content", references.__doc__.split("\n\n")[1][:500])])
        client.set_terminated(run.info.run_id, "FINISHED")


def select(cfg: SearchConfig, space: Space, rows: list[TrialResult], ranked: list[TrialResult], data: TrialData, *,
           exp_path: str, fs: Any, uri: str, parent_run_id: str | None, data_name: str,
           fixed: dict[str, Any], search_tags: dict[str, str]) -> Selection:
    from mlflow.tracking import MlflowClient

    from search.handoff.registration import log_top_models, registered_model_name

    client = MlflowClient(uri)
    registered = registered_model_name(cfg.space, data_name)
    inc = promotion.incumbent(client, registered) if parent_run_id else None
    conf = refs = None
    if cfg.confirm_repeats > 0 and ranked:
        conf = run_confirmation(cfg, space, rows, ranked, data, exp_path, fixed, inc, fs)
        text = verdict.csv_text(conf)
        write_text(text, exp_path, CONFIRMATION_CSV, fs)
        if parent_run_id:
            _log_to_parent(conf, client, parent_run_id, search_tags, text)
    elif cfg.references:  # no confirmation: the references on the search's folds only
        refs = run_references(cfg, data, exp_path, fs)
        if parent_run_id:
            _log_to_parent(refs, client, parent_run_id, search_tags, verdict.csv_text(refs), artifact=False)
    ref_rows = reference_rows(conf or refs) if (conf or refs) else []
    if not parent_run_id or cfg.top_k == 0 or not ranked:
        return Selection(conf, None, [], None, ref_rows)

    top = to_register(cfg, rows, ranked, conf, data.fingerprint, fixed)
    faults.point("refit")
    versions = log_top_models(top, space=cfg.space, data_name=data_name, tracking_uri=uri, parent_run_id=parent_run_id,
                              registered_name=registered, bundle_dir=None if "://" in exp_path else f"{exp_path}/models",
                              set_alias=False)
    if not versions:
        return Selection(conf, registered, [], None, ref_rows)
    decision = promotion_decision(cfg, conf, inc, versions, data.fingerprint)
    promotion.apply(client, registered, versions[0], decision, parent_run_id)
    return Selection(conf, registered, versions, decision, ref_rows)


def to_register(cfg: SearchConfig, rows: list[TrialResult], ranked: list[TrialResult],
                conf: verdict.Confirmation | None, fingerprint: str, fixed: dict[str, Any]) -> list[Any]:
    """The models to register (``search.handoff.registration.TopTrial``), best first: the top-k confirmed
    candidates, plus the ensemble and the best single model (nested CV scores both); without a
    confirmation, the top-k trials."""
    from search.handoff.registration import TopTrial

    metric = cfg.primary_metric
    by_id = {r.trial_id: r for r in rows}
    if conf is not None:
        chosen = conf.models()[: cfg.top_k]
        for also in (conf.ensemble(), conf.best_single()):
            if also is not None and not also.error and also not in chosen:
                chosen.append(also)
    else:
        chosen = [verdict.Candidate(r.trial_id, "model", dict(r.config), r.value(metric), r.trial_id)
                  for r in ranked[: cfg.top_k]]
    top = []
    for c in chosen:
        row = by_id.get(c.trial_id or "")
        tags = {promotion.FINGERPRINT_TAG: fingerprint}
        if conf is not None:
            tags[promotion.SCHEME_TAG] = conf.scheme.key()
            tags.update({promotion.confirmed_tag(m): f"{c.confirmed(m):.6f}" for m in METRICS})
            tags["fusetune.candidate"] = c.name
        if c.kind == verdict.ENSEMBLE_KIND:
            top.append(TopTrial(ensemble.NAME, dict(fixed), {}, None, tags, ensemble=ensemble_members(c, metric)))
        else:
            top.append(TopTrial(c.trial_id or c.name, c.config, dict(row.last) if row else {},
                                row.checkpoint if row else None, tags))
    return top


def promotion_decision(cfg: SearchConfig, conf: verdict.Confirmation | None, inc: Any, versions: list[str],
                       fingerprint: str) -> promotion.Decision:
    """Whether the first registered version takes the champion alias (``--promote``): its confirmed
    value against the incumbent's, retrained on the same fresh folds where it could be."""
    metric = cfg.primary_metric
    new_value = conf.champion.confirmed(metric) if conf is not None and conf.champion is not None else None
    inc_value = None
    if inc is not None and conf is not None:
        retrained = next((c for c in conf.candidates if c.incumbent and not c.error), None)
        if retrained is not None:
            inc_value = retrained.confirmed(metric)
        elif inc.scheme == conf.scheme.key():
            inc_value = inc.confirmed.get(metric)
    if inc is not None and inc.version in versions:  # a resumed search whose best is the champion already
        return promotion.Decision(promotion.CHAMPION, f"v{inc.version} is this search's best already")
    return promotion.decide(cfg.promote, inc, fingerprint=fingerprint, metric=metric, mode=cfg.primary_mode,
                            new_value=new_value, incumbent_value=inc_value)
