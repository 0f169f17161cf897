"""Command-line options of ``python -m search.run`` and ``--config FILE``.

A YAML config file holds the same keys as the long options (``num_samples`` or ``num-samples``);
its values are turned into command-line tokens placed before the real ones, so one parser checks
both and a flag on the command line overrides the file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from search.config import ENSEMBLE_CHOICES, PROMOTE_POLICIES, SAMPLER_NAMES, SCHEDULER_NAMES, SearchConfig
from search.credentials import CheckedParser
from search.errors import UsageError


class _OneLineParser(CheckedParser):
    """argparse whose errors are one line (raised as :class:`UsageError`), not usage text; credentials refused."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _point(text: str) -> dict[str, Any]:
    try:
        point = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text}") from None
    if not isinstance(point, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object of parameter values: {text}")
    return point


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="python -m search.run", description="Run a hyperparameter search (Ray Tune + Optuna + MLflow).",
                       argument_default=argparse.SUPPRESS)
    a = p.add_argument
    a("--config", metavar="FILE", help="YAML file with the same keys as these options; flags override it")
    a("--space", help="search space (python -m search.spaces list)")
    a("--only", type=_csv, metavar="DIMS",
      help="search only these dimensions of the space (comma-separated), the others at their defaults, e.g. lr")
    a("--data", help="dataset: rosmap, breast-tcga, synth-clinic[:k=v,...] or a folder (default: the space's)")
    a("--metric", type=_csv, help="metric to optimise (default macro_f1); comma-separated for several objectives")
    a("--mode", type=_csv, help="max or min per metric (default: the metric's natural direction)")
    a("--num-samples", type=int, help="trials (default 20)")
    a("--epochs", type=int, help="epochs per trial, T of CLIMD's schedule (default: the space's, 100)")
    a("--folds", type=int, help="k of stratified k-fold CV, 0 for one hold-out split (default 5)")
    a("--val-fraction", type=float, help="held-out fraction with --folds 0 (default 0.2)")
    a("--sampler", choices=SAMPLER_NAMES, help="Optuna sampler (default tpe); nsga2: multi-objective")
    a("--scheduler", choices=SCHEDULER_NAMES, help="trial scheduler (default asha)")
    a("--grace-period", type=int, help="epochs every trial trains before asha or median may stop it (default: the "
                                       "space's, a quarter of --epochs; CLIMD spaces: until the curriculum reaches "
                                       "the whole training set)")
    a("--max-concurrent", type=int, help="trials running at once (default: as many as resources allow)")
    a("--cpus-per-trial", type=float, help="CPUs per trial (default 1)")
    a("--gpus-per-trial", type=float, help="GPUs per trial, fractions share a GPU (default 0)")
    a("--address", help="existing Ray cluster: auto, host:port or ray://host:port (default: start a local one)")
    a("--storage", help="results folder or URI (default ./fusetune_results)")
    a("--name", help="search name = folder under --storage (default <space>-<data>-<time>)")
    a("--resume", action="store_true", help="continue the search --name (default: the newest in --storage)")
    a("--tracking-uri", help="MLflow tracking URI (default sqlite:///<storage>/mlflow.db)")
    a("--experiment", help="MLflow experiment (default fusetune)")
    a("--seed", type=int, help="fixes folds, initialisation and sampling (default 0)")
    a("--sampler-seed", type=int,
      help="seed of the sampler alone (default: --seed); repeats a search on the same folds and initialisation")
    a("--top-k", type=int, help="best configurations whose models are logged and registered (default 3)")
    a("--max-failures", type=int, help="retries of a crashed trial from its last checkpoint (default 0)")
    a("--text-encoder", help="text encoder for report modalities (default: the space's, minilm)")
    a("--image-encoder", help="image encoder (default: the space's, resnet-tiny or vit-tiny)")
    a("--cache-dir", help="feature cache folder (default $FUSETUNE_CACHE_DIR or ~/.cache/fusetune/features)")
    a("--optuna-storage", metavar="URL",
      help="Optuna study storage, an RDB URL without password (default sqlite:///<storage>/<name>/optuna.db)")
    a("--warm-start", metavar="NAME",
      help="seed the sampler with the finished trials of the earlier search NAME (same space, data, objective)")
    a("--points", type=_point, action="append", metavar="JSON",
      help="a configuration to evaluate right after the paper default (repeatable), e.g. '{\"lr\": 1e-3}'")
    a("--confirm-repeats", type=int,
      help="fresh repetitions of the k-fold scheme the top-k, the paper default and the references are "
           "retrained on after the search; the champion is the best there (default 3; 0 = off; at most 100)")
    a("--references", type=_references, help="reference models scored on the same folds: logreg, rf, hgb or none "
                                             "(default logreg,rf,hgb)")
    a("--promote", choices=PROMOTE_POLICIES,
      help="better: the new best gets the champion alias only if it beats the registered champion on the same "
           "fresh folds (else alias challenger); always; never (default better)")
    a("--ensemble", choices=ENSEMBLE_CHOICES,
      help="post-hoc ensemble selection over the out-of-fold predictions of the full-budget trials (and the "
           "references), confirmed on the fresh folds like any candidate; the champion only if it wins there "
           "(default trials+references; off with --confirm-repeats 0)")
    a("--ensemble-size", type=int, help="distinct members of the ensemble at most (default 5)")
    a("--parent-run-id", help=argparse.SUPPRESS)  # search.nested: nest this search's MLflow run under its own
    return p


def _references(text: str) -> tuple[str, ...]:
    names = _csv(text)
    if not names:
        raise argparse.ArgumentTypeError(f"empty value {text!r}; give logreg, rf, hgb (comma-separated) or none")
    return () if names == ("none",) else names


def _config_tokens(path: str, parser: argparse.ArgumentParser) -> list[str]:
    """The YAML file as command-line tokens."""
    try:
        loaded = yaml.safe_load(Path(path).expanduser().read_text())
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if loaded is None:
        return []
    if not isinstance(loaded, dict):
        raise UsageError(f"--config {path}: must be a mapping of option names to values")
    options = {a.dest: a for a in parser._actions if a.option_strings}
    tokens: list[str] = []
    for key, value in loaded.items():
        dest = str(key).replace("-", "_")
        if dest not in options or dest in ("config", "help"):
            raise UsageError(f"--config {path}: unknown key {key!r}")
        flag = options[dest].option_strings[0]
        if isinstance(options[dest], argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise UsageError(f"--config {path}: {key} must be true or false")
            tokens += [flag] if value else []
        elif dest == "points":
            for point in value if isinstance(value, list) else [value]:
                tokens += [flag, json.dumps(point)]
        elif isinstance(value, list):
            tokens += [flag, ",".join(str(v) for v in value)]
        else:
            tokens += [flag, str(value)]
    return tokens


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    """Command line (and ``--config`` file) -> the options given, by :class:`SearchConfig` field name."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    first = vars(parser.parse_args(argv))
    tokens = _config_tokens(first["config"], parser) if "config" in first else []
    given = vars(parser.parse_args([*tokens, *argv]))
    given.pop("config", None)
    if "points" in given:
        given["points"] = tuple(given["points"])
    return given


# ----------------------------------------------------------------------------- shared by the study commands
DEFAULT_STORAGE: str = SearchConfig.storage
"""``--storage`` default of the study commands (reports, compare, export, ...): the search driver's."""


class OneLineParser(CheckedParser):
    """argparse whose errors are one line and exit with code 2; credentials refused in any argument."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_storage_option(parser: argparse.ArgumentParser, default: str | None = DEFAULT_STORAGE) -> None:
    parser.add_argument("--storage", default=default, metavar="DIR",
                        help=f"results folder of the searches (default: {DEFAULT_STORAGE})")
