"""``python -m search.nested``: an unbiased estimate of the whole tuning procedure (nested CV).

    python -m search.nested --space baseline --data breast-tcga --outer-folds 5 [search.run options] [--json]

The training part of ``--data`` is split into ``--outer-folds`` N stratified outer folds (seeded by
``--seed``). For each outer fold one complete ``search.run`` (its trials, its confirmation stage,
its refit) runs on the other N-1 folds only (``--data SPEC@outer=I/N``, :mod:`trainables.data.outer`),
all N concurrently as separate drivers on one Ray cluster (the local one this command starts, or
``--address``). Each outer search's champion is then scored once on its held-out outer fold (the
refit's test evaluation). The mean ± std over outer folds of those scores estimates what "tune
this space on this data" delivers on patients the tuning never saw; next to it, the paper default
and the reference models trained on the same outer training folds, scored on the same outer test
folds.

Printed: each outer fold's chosen configuration and scores, the estimate for every metric, and how
often each dimension's chosen value repeated across outer folds. ``--json`` prints one JSON object
instead: ``estimate`` (metric -> mean), ``std``, ``outer`` (per outer fold: ``fold``, ``search``,
``champion``, ``config``, ``scores``), ``baselines`` (``paper-default`` and ``reference:<name>``:
``estimate`` and ``std``). MLflow: one parent run (tag ``fusetune.role = nested``) with the outer
searches' runs nested under it. Running the command again with the same ``--name`` continues
(finished outer searches are read back, interrupted ones resumed).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from search.prepare import cli
from search.prepare.config import SearchConfig
from search.prepare.errors import UsageError
from search.prepare.resolve import resolve
from search.report.nested_estimate import Outer, nested_report, render
from search.trust.credentials import private_outputs, refuse_credentials
from trainables.data import DataError
from trainables.metrics import METRICS

PROG = "python -m search.nested"
ROLE = "nested"
PASSED_ON = ("--name", "--data", "--address", "--storage", "--resume", "--parent-run-id")
"""Options this command sets itself for each outer search (the user's others are passed on)."""


# --------------------------------------------------------------------------------- options
def split_argv(argv: list[str]) -> tuple[int, bool, list[str]]:
    """``--outer-folds N`` and ``--json`` out of ``argv``; the rest are search.run options."""
    outer, as_json, rest = 5, False, []
    it = iter(argv)
    for tok in it:
        if tok == "--json":
            as_json = True
        elif tok == "--outer-folds" or tok.startswith("--outer-folds="):
            value = tok.split("=", 1)[1] if "=" in tok else next(it, "")
            refuse_credentials("--outer-folds", value)  # read before search.run's parser checks the rest
            try:
                outer = int(value)
            except ValueError:
                raise UsageError(f"--outer-folds {value}: expected an integer >= 2") from None
        else:
            rest.append(tok)
    if outer < 2:
        raise UsageError(f"--outer-folds {outer}: expected an integer >= 2")
    return outer, as_json, rest


def passed_on(rest: list[str]) -> list[str]:
    """``rest`` without the options this command sets per outer search."""
    out, skip = [], False
    for tok in rest:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if name in PASSED_ON:
            skip = "=" not in tok and name != "--resume"
            continue
        out.append(tok)
    return out


def check_outer(cfg: SearchConfig, outer_folds: int) -> None:
    """Refuse, in one line, a ``--data`` that already is an outer fold, and outer folds that leave a
    class with fewer samples than the inner folds."""
    from trainables.data import DatasetSpec, load_dataset

    spec = DatasetSpec.parse(cfg.data)
    if spec.outer is not None:
        raise UsageError(f"--data {cfg.data}: already an outer fold; expected a spec without @outer= "
                         f"(search.nested makes the outer folds, --outer-folds)")
    labels = load_dataset(spec).split_part("train").labels
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    if counts.min() < outer_folds:
        raise UsageError(f"--outer-folds {outer_folds}: the smallest class of {cfg.data} has {counts.min()} "
                         f"training samples, fewer than the outer folds")
    inner = cfg.folds if cfg.folds else 2
    left = int(counts.min() - math.ceil(counts.min() / outer_folds))
    if left < inner:
        raise UsageError(f"--outer-folds {outer_folds}: leaves about {left} samples of the smallest class in an "
                         f"outer training part, fewer than the {inner} inner folds (--folds)")


# --------------------------------------------------------------------------------- outer searches
def _ray_address(cfg: SearchConfig) -> str:
    if cfg.address:
        return cfg.address
    import ray

    return ray.get_runtime_context().gcs_address


def launch(cfg: SearchConfig, rest: list[str], outer_folds: int, address: str, parent_run_id: str | None,
           folder: Path, quiet: bool) -> list[Outer]:
    """One ``search.run`` per outer fold, all at once; waits for them."""
    from ray import tune

    from trainables.data import DatasetSpec

    spec = DatasetSpec.parse(cfg.data)
    env = dict(os.environ)
    if "RAY_AUTH_MODE" not in env and (Path.home() / ".ray" / "auth_token").is_file():
        env["RAY_AUTH_MODE"] = "token"
    procs, outers = [], []
    for i in range(1, outer_folds + 1):
        name = f"{cfg.name}-outer{i}"
        argv = [sys.executable, "-m", "search.run", *passed_on(rest), "--data", str(spec.with_outer(i, outer_folds, cfg.seed)),
                "--name", name, "--storage", cfg.storage, "--address", address]
        if parent_run_id:
            argv += ["--parent-run-id", parent_run_id]
        if tune.Tuner.can_restore(f"{cfg.storage_path}/{name}"):
            argv.append("--resume")
        log = (folder / f"outer{i}.log").open("a")
        procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        outers.append(Outer(i, name))
        _say(f"outer fold {i}/{outer_folds}: search {name} started (log {folder / f'outer{i}.log'})", quiet)
    for o, (proc, log) in zip(outers, procs):
        o.returncode = proc.wait()
        log.close()
        _say(f"outer fold {o.fold}/{outer_folds}: search {o.search} ended (exit code {o.returncode})", quiet)
    return outers


def _say(text: str, quiet: bool) -> None:
    print(text, file=sys.stderr if quiet else sys.stdout, flush=True)


def _bundle_scores(folder: Path) -> tuple[dict[str, Any], dict[str, float], int]:
    """A kept bundle's metadata, its scores on the outer test fold and how many samples that fold has."""
    meta = json.loads((folder / "inputs.json").read_text()).get("metadata", {})
    test = meta.get("test_metrics") or {}
    size = int(sum(v.get("support", 0) for v in (test.get("per_class") or {}).values()))
    return meta, {m: float(test[m]) for m in METRICS if m in test}, size


def read_champion(o: Outer, storage_path: str, sampled: list[str]) -> None:
    """The outer search's registered models (kept as ``models/<rank>-<name>`` bundles, the
    champion first): the champion's config and held-out outer-fold scores, and those of the best
    single model and of the ensemble."""
    kept = sorted((Path(storage_path) / o.search / "models").glob("*-*"), key=lambda p: int(p.name.split("-", 1)[0]))
    if o.returncode != 0 or not kept:
        o.error = f"outer search exited with code {o.returncode}" + ("" if kept else " and registered no model")
        return
    for rank, folder in enumerate(kept):
        meta, scores, size = _bundle_scores(folder)
        is_ensemble = folder.name.split("-", 1)[1] == "ensemble"
        if rank == 0:
            o.champion = "ensemble" if is_ensemble else str(meta.get("trial_id", folder.name.split("-", 1)[1]))
            o.scores, o.test_size = scores, size
            if not is_ensemble:
                config = json.loads((folder / "config.json").read_text())
                o.config = {k: config[k] for k in sampled if k in config}
        if is_ensemble and not o.ensemble:
            o.ensemble = scores
            o.members = " + ".join(f"{m.get('weight', 0):.2f} {m.get('name')}" for m in meta.get("members", []))
        elif not is_ensemble and not o.single:
            o.single = scores
    if not o.scores:
        o.error = "the champion has no outer test scores"


def baselines(cfg: SearchConfig, outer_folds: int, fixed: dict[str, Any],
              point: dict[str, Any]) -> dict[str, list[dict[str, float]]]:
    """The paper default and the references trained on each outer training part, scored on its outer test fold."""
    from search.handoff.refit import refit
    from search.select import references
    from trainables.data import DatasetSpec
    from trainables.metrics import classification_metrics, scalar_metrics

    spec = DatasetSpec.parse(cfg.data)
    out: dict[str, list[dict[str, float]]] = {"paper-default": [], **{references.candidate_name(r): [] for r in cfg.references}}
    for i in range(1, outer_folds + 1):
        config = {**fixed, **point, "data": str(spec.with_outer(i, outer_folds, cfg.seed))}
        fit = refit(config, device="cpu")
        out["paper-default"].append(scalar_metrics(fit.test_metrics))
        train, test = fit.train, fit.test
        for r in cfg.references:
            probs = references.fit_predict(r, train, test, cfg.seed + i)
            out[references.candidate_name(r)].append(scalar_metrics(classification_metrics(test.labels, probs)))
    return out


# --------------------------------------------------------------------------------- MLflow
def _parent_run(uri: str, experiment: str, name: str, tags: dict[str, str], params: dict[str, Any]) -> str:
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    from search.tracking.store import ROLE_TAG, SEARCH_NAME_TAG, default_artifact_location

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        experiment, artifact_location=default_artifact_location(uri, experiment))
    found = client.search_runs([exp_id], max_results=1, filter_string=(
        f"tags.`{SEARCH_NAME_TAG}` = '{name}' and tags.`{ROLE_TAG}` = '{ROLE}'"))
    if found:
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=name, tags={**tags, SEARCH_NAME_TAG: name, ROLE_TAG: ROLE})
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()],
                     tags=[RunTag("mlflow.note.content", __doc__.split("\n\n")[2][:2000])])
    return run.info.run_id


def _log_result(uri: str, run_id: str, report: dict[str, Any], failed: bool) -> None:
    import tempfile

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    metrics = [Metric(f"nested_{m}", v, 0, 0) for m, v in report["estimate"].items()]
    metrics += [Metric(f"nested_{m}_std", v, 0, 0) for m, v in report["std"].items()]
    for name, b in report.get("baselines", {}).items():
        key = name.replace(":", "_")
        metrics += [Metric(f"{key}_{m}", v, 0, 0) for m, v in b["estimate"].items()]
    client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "nested.json"
        path.write_text(json.dumps(report, indent=2))
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FAILED" if failed else "FINISHED")


# --------------------------------------------------------------------------------- the command
def run(argv: list[str] | None = None) -> int:
    outer_folds, as_json, rest = split_argv(sys.argv[1:] if argv is None else list(argv))
    given = cli.parse_args(rest)
    if given.pop("resume", False):
        raise UsageError("--resume: run search.nested again with the same --name to continue it")
    if "space" not in given:
        raise UsageError("--space is required (python -m search.spaces list)")
    cfg = resolve(SearchConfig(**{**given, "name": given.get("name") or None}))
    if "name" not in given:
        cfg = replace(cfg, name=cfg.name.replace(f"{cfg.space}-", f"{cfg.space}-nested-", 1))
    check_outer(cfg, outer_folds)
    from search.prepare import preflight
    from search.stages import tracking_uri
    from search.tracking.store import check_tracking_uri
    from search.tune import orchestrate
    from trainables.version import code_version

    uri = tracking_uri(cfg)
    check_tracking_uri(uri)
    if cfg.address:
        preflight.check_address(cfg.address)
    space = cfg.space_spec
    preflight.load_data(cfg, space)  # data errors now, and the feature cache filled once for all outer searches
    t0 = time.monotonic()
    preflight.connect(cfg)
    folder = Path(cfg.storage_path) / cfg.name
    folder.mkdir(parents=True, exist_ok=True)
    run_id = _parent_run(uri, cfg.experiment, cfg.name,
                         {"fusetune.space": space.name, "fusetune.data": cfg.data_name, "fusetune.code_version": code_version()},
                         {**cfg.as_params(), "outer_folds": outer_folds})
    _say(f"nested {cfg.name}: {outer_folds} outer folds of {cfg.data}, one search of space {space.name} per outer "
         f"fold ({cfg.num_samples} trials x {cfg.epochs} epochs, confirmation x{cfg.confirm_repeats})", as_json)
    if cfg.max_concurrent is None:  # share the cluster: each outer search gets its part of the trial slots
        rest = [*rest, "--max-concurrent", str(max(1, preflight.check_resources(cfg) // outer_folds))]
    outers = launch(cfg, rest, outer_folds, _ray_address(cfg), run_id, folder, as_json)
    for o in outers:
        read_champion(o, cfg.storage_path, space.names)
    ok = [o for o in outers if not o.error]
    _say("scoring the paper default and the references on the same outer folds ...", as_json)
    base = baselines(cfg, outer_folds, orchestrate.fixed_keys(cfg, space), space.default_point())
    report = {**nested_report(cfg, outer_folds, outers, base, space.names), "wall_s": round(time.monotonic() - t0, 1)}
    (folder / "nested.json").write_text(json.dumps(report, indent=2))
    _log_result(uri, run_id, report, failed=not ok)
    if as_json:
        print(json.dumps(report))
    else:
        print(render(report, cfg.primary_metric))
    return 0 if len(ok) == len(outers) else 1


@private_outputs()  # what it writes is readable by the user only (FUSETUNE_UMASK)
def main(argv: list[str] | None = None) -> int:
    from search.run import quiet_libraries

    quiet_libraries()
    try:
        return run(argv)
    except (UsageError, DataError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; run it again with the same --name to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
