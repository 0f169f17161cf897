"""The confirmation stage: the search's best candidates retrained, as Ray trials, on folds the selection never saw.

On a few hundred patients the best of many trials is optimistic: its search figure was *chosen* for
being high. After the search, the top-k configurations, the space's paper default, the reference
models (:mod:`search.select.references`) and, when promotion must compare with it, the registered
champion's configuration are retrained on ``--confirm-repeats`` R fresh repetitions of the same
k-fold scheme (split seeds :func:`search.select.verdict.fresh_seeds`, which the search never used:
the search splits with ``--seed`` and initialises fold k with ``seed + k``), for the full ``--epochs``
budget with no early stopping (the validation folds scored after the last epoch only), as Ray
trials on the search's cluster: one trial per model candidate, whose R repetitions x k folds train
in one lockstep (batched as R x k members where the method batches its folds: the same models as R
separate trials, at the cost of fewer, larger steps) on the CPUs the stage would otherwise leave
idle (:func:`model_job_cpus`), and one per reference and repetition. The references are also
scored on the search's own folds, so that ``results.csv`` compares them with the trials like with like.

Every job also keeps its validation class probabilities (an ``oof.npz`` checkpoint: numpy arrays
only), so that an ensemble of candidates (:mod:`search.select.ensemble`, chosen on the search's folds) is
confirmed on the very same fresh folds: its weights stay those chosen on the search's folds and
its fold scores are those of the weighted average of its members' probabilities
(:func:`search.select.verdict.ensemble_candidate`; members that are not already candidates are
retrained in a second experiment, ``<search>/confirmation-ensemble/``).

What the jobs measured becomes the verdict (:mod:`search.select.verdict`): the champion, the
selection gap, every candidate's ``p_value`` against the champion.

The stage's Ray experiment lives in ``<search>/confirmation/``, so a killed driver continues it
with ``--resume`` (finished candidates stay finished). A job whose Ray worker or node was lost is not
its candidate's error: the driver stops (:class:`search.tune.settle.TrialsLost`) and ``--resume``
runs the job again; the table is ``<search>/confirmation.csv``
(:data:`search.select.results.CONFIRMATION_CSV`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ray import tune

from search.prepare.preflight import alive_node_resources
from search.select import references
from search.select.oof import OutOfFold
from search.select.results import error_reason, fold_count
from search.select.verdict import Candidate, Scheme
from search.trust import integrity
from search.tune.orchestrate import result_loggers
from search.tune.settle import settle, stop_if_lost
from trainables.metrics import METRICS
from trainables.trial_data import TrialData, with_splits

EXPERIMENT = "confirmation"
ENSEMBLE_EXPERIMENT = "confirmation-ensemble"
SEARCH_REPEAT = -1
"""The repeat index of a reference scored on the search's own folds."""


# --------------------------------------------------------------------------------- the trainable
def _fold_report(fold_metrics: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n_folds": len(fold_metrics)}
    for m in METRICS:
        vals = [float(fm[m]) for fm in fold_metrics]
        out[m] = float(np.mean(vals))
        out.update({f"fold{k}_{m}": v for k, v in enumerate(vals)})
    return out


def job_repeats(job: dict[str, Any]) -> list[tuple[int, int]]:
    """A job's (repetition, split seed) pairs: ``repeats`` (a model candidate's R repetitions in one
    job), or the one ``repeat``/``seed`` of a reference's job (and of a job of an older fusetune)."""
    if "repeats" in job:
        return [(int(r), int(seed)) for r, seed in job["repeats"]]
    return [(int(job["repeat"]), int(job["seed"]))]


def oof_file(repeat: int) -> str:
    """The checkpoint file of a job's validation probabilities on repetition ``repeat``."""
    return f"oof-r{repeat}.npz"


def run_job(config: dict[str, Any], data: TrialData) -> dict[int, tuple[dict[str, Any], OutOfFold]]:
    """One candidate on its repetitions' splits: per repetition, the per-split scores and the
    validation class probabilities of every split. A model's R repetitions x k folds train in one
    lockstep, batched as R x k members where its method batches folds (:class:`trainables.trainable.Trial`
    ``seeds``): the same models as R trials of one repetition each. Usable without Ray."""
    job = config["job"]
    repeats, folds, vf = job_repeats(job), int(job["folds"]), float(job["val_fraction"])
    if job["kind"] == "reference":
        out = {}
        for r, seed in repeats:
            splits = data.fold_splits(folds, seed, vf)
            scored = references.evaluate_with_probs(job["config"]["reference"], data.data, splits, seed)
            out[r] = (_fold_report([m for m, _ in scored]),
                      OutOfFold.from_folds(splits, data.data.labels, [p for _, p in scored]))
        return out
    from trainables.trainable import Trial

    trial_config = {**job["config"], "seed": repeats[0][1], "folds": folds, "val_fraction": vf}
    trial = Trial(trial_config["method"], trial_config, data, seeds=[seed for _, seed in repeats])
    result: dict[str, Any] = {}
    while trial.epoch < trial.epochs:   # no early stopping: the validation folds are scored after the last epoch only
        result = trial.step(evaluate=trial.epoch + 1 == trial.epochs)
    k = fold_count(result) // len(repeats)
    return {r: (_fold_report([{m: result[f"fold{i * k + j}_{m}"] for m in METRICS} for j in range(k)]),
                OutOfFold.from_arrays(trial.out_of_fold(i), f"confirmation job {job['candidate']}"))
            for i, (r, _) in enumerate(repeats)}


def fusetune_confirm(config: dict[str, Any], data: TrialData | None = None) -> None:
    """Ray Tune function trainable of the confirmation stage: one report, at the end, with every
    repetition's scores (``r<repetition>_<key>``) and probabilities (:func:`oof_file`)."""
    import torch

    from trainables.exit_request import quiet_exit_requests
    from trainables.trainable import TrialFailure, _cpus, one_line

    quiet_exit_requests()  # the raylet's SIGTERM at the job's end prints no traceback (as the search's trials)
    torch.set_num_threads(_cpus())
    try:
        by_repeat = run_job(config, data)
    except TrialFailure:
        raise
    except Exception as exc:
        raise TrialFailure(one_line(exc)) from exc
    result = {f"r{r}_{key}": value for r, (report, _) in by_repeat.items() for key, value in report.items()}
    with tempfile.TemporaryDirectory(prefix="fusetune-confirm-") as folder:
        for r, (_, probs) in by_repeat.items():
            np.savez(Path(folder) / oof_file(r), **probs.arrays())
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def _dirname(trial: Any) -> str:
    return f"confirm_{trial.trial_id}"


# --------------------------------------------------------------------------------- the stage
def jobs(candidates: list[Candidate], scheme: Scheme, search_seed: int) -> list[dict[str, Any]]:
    """One job per (distinct candidate config, repetition); references also on the search's folds.
    Candidates with the same config (the paper default among the top-k) are trained once."""
    out, seen = [], set()
    for c in candidates:
        key = json.dumps(c.config, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        repeats = list(enumerate(scheme.seeds))
        common = {"candidate": c.name, "kind": c.kind, "config": c.config, "folds": scheme.folds,
                  "val_fraction": scheme.val_fraction}
        if c.kind != "reference":  # a model's R repetitions: one job, R x k batched members
            out.append({**common, "repeats": [[r, seed] for r, seed in repeats]})
            continue
        for r, seed in [(SEARCH_REPEAT, search_seed), *repeats]:  # references: fast, one job per repetition
            out.append({**common, "repeat": r, "seed": seed})
    return out


def model_job_cpus(n_model_jobs: int, cpus: float, max_concurrent: int | None, node_cpus: list[float]) -> float:
    """The CPUs of a model candidate's job: ``cpus`` (``--cpus-per-trial``), or, where the stage's
    model jobs would leave CPUs of the cluster idle (fewer jobs, or ``--max-concurrent``, than the
    cluster has room for), an even share of them, at most one node's (``node_cpus``: every alive
    node's CPUs), whole CPUs: 1 job with 1 CPU per trial on 2 CPUs gets 2, which its torch threads use."""
    running = max(1, min(n_model_jobs, max_concurrent or n_model_jobs))
    share = min(sum(node_cpus) / running, max(node_cpus, default=0.0))
    return max(float(cpus), float(int(share)))


def _resources(jobs_: list[dict[str, Any]], resources: dict[str, float], max_concurrent: int | None) -> Any:
    """``tune.with_resources``'s resources of the stage: ``resources`` for every job, model jobs on CPUs
    widened by :func:`model_job_cpus` when Ray is up (GPU jobs as asked)."""
    import ray

    cpus, gpus = float(resources.get("cpu", 1.0)), float(resources.get("gpu", 0.0))
    if gpus or not ray.is_initialized():
        return resources
    nodes = [float(n.get("CPU", 0.0)) for n in alive_node_resources()]
    wide = model_job_cpus(sum(j["kind"] != "reference" for j in jobs_), cpus, max_concurrent, nodes)
    if wide == cpus:
        return resources

    def per_job(config: dict[str, Any]) -> tune.PlacementGroupFactory:
        return tune.PlacementGroupFactory([{"CPU": wide if config["job"]["kind"] != "reference" else cpus}])
    return per_job


def run_stage(candidates: list[Candidate], scheme: Scheme, *, search_seed: int, data: TrialData,
              experiment_path: str, resources: dict[str, float], max_concurrent: int | None,
              callbacks: list | None = None, experiment: str = EXPERIMENT) -> list[Candidate]:
    """Run (or resume) the confirmation trials and fill every candidate's fold scores and probabilities."""
    # the repetitions' splits made here: a job's worker then imports no scikit-learn to make them
    data = with_splits(data, scheme.folds, scheme.seeds, scheme.val_fraction)
    todo = jobs(candidates, scheme, search_seed)
    fn = tune.with_resources(tune.with_parameters(fusetune_confirm, data=data),
                             _resources(todo, resources, max_concurrent))
    path = f"{experiment_path.rstrip('/')}/{experiment}"
    integrity.install()
    if tune.Tuner.can_restore(path):
        integrity.verify(path, option="--resume (confirmation stage)")
        settle(path)  # a job whose worker or node was lost runs again
        tuner = tune.Tuner.restore(path, fn, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            fn, param_space={"job": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=_dirname),
            run_config=tune.RunConfig(name=experiment, storage_path=experiment_path, verbose=0,
                                      callbacks=[*(callbacks or []), *result_loggers()]),
        )
    integrity.seal(path)
    grid = tuner.fit()
    # a job the machine failed is not a candidate's error: the driver stops, --resume runs it again
    stop_if_lost(grid, "confirmation stage")
    return fill(candidates, scheme, grid)


def fill(candidates: list[Candidate], scheme: Scheme, grid: Any) -> list[Candidate]:
    """Every candidate's fresh fold scores, its scores on the search's folds and its probabilities,
    from the confirmation trials' results (``grid``); an error where a repetition is missing."""
    by_config: dict[str, dict[int, dict[str, Any]]] = {}
    probs: dict[str, dict[int, OutOfFold]] = {}
    errors: dict[str, str] = {}
    for res in grid:
        job = (res.config or {}).get("job")
        if job is None:  # a trial that never reported (its worker lost): its candidate did not finish
            continue
        key = json.dumps(job["config"], sort_keys=True, default=str)
        if res.error is not None:
            errors[key] = error_reason(str(res.error))
            continue
        for r, _ in job_repeats(job):
            metrics = _repeat_metrics(res.metrics, r, job)
            if metrics is None:
                continue
            by_config.setdefault(key, {})[r] = metrics
            found = _job_probs(res.checkpoint, r, job)
            if found is not None:
                probs.setdefault(key, {})[r] = found
    for c in candidates:
        key = json.dumps(c.config, sort_keys=True, default=str)
        c.probs = probs.get(key, {})
        got = by_config.get(key, {})
        fresh = [got[r] for r in range(len(scheme.seeds)) if r in got]
        if key in errors or len(fresh) < len(scheme.seeds):
            c.error = errors.get(key, "a confirmation trial did not finish")
            continue
        if fresh:
            c.folds = {m: np.array([r[f"fold{k}_{m}"] for r in fresh for k in range(int(r["n_folds"]))]) for m in METRICS}
        if SEARCH_REPEAT in got:
            r = got[SEARCH_REPEAT]
            c.search_folds = {m: np.array([r[f"fold{k}_{m}"] for k in range(int(r["n_folds"]))]) for m in METRICS}
            c.search_value = float(np.mean(c.search_folds[scheme.metric]))
    return candidates


def _repeat_metrics(metrics: dict[str, Any], repeat: int, job: dict[str, Any]) -> dict[str, Any] | None:
    """Repetition ``repeat``'s scores in a job's report (``r<repeat>_<key>``; a job of an older
    fusetune reported its one repetition's keys bare)."""
    prefix = f"r{repeat}_"
    found = {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
    if found:
        return found
    return metrics if "repeats" not in job and "n_folds" in metrics else None


def _job_probs(checkpoint: Any, repeat: int, job: dict[str, Any]) -> OutOfFold | None:
    """The probabilities of repetition ``repeat`` a confirmation job kept in its checkpoint (an
    older fusetune's job: ``oof.npz``; None when it kept none)."""
    from search.select.oof import from_checkpoint

    if checkpoint is None:
        return None
    found = from_checkpoint(checkpoint.path, checkpoint.filesystem, oof_file(repeat))
    return found if found is not None or "repeats" in job else from_checkpoint(checkpoint.path, checkpoint.filesystem)
