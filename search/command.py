"""The ``fusetune`` command: one entry point with a subcommand per job.

    fusetune run --space omnifuse                 # = python -m search.run --space omnifuse
    fusetune nested --space baseline --outer-folds 5
    fusetune export --name NAME --dest exports/
    fusetune ui --storage fusetune_results        # the MLflow UI of a results folder, on 127.0.0.1
    fusetune dashboard --name NAME                # optuna-dashboard of a search's study, on 127.0.0.1

Every subcommand is the ``main(argv)`` of a ``search.*`` module (``python -m search.<module>``
keeps working), so options mean the same in both forms; across subcommands ``--name`` is a search's
name (its folder under ``--storage``), ``--storage`` the results folder and ``--tracking-uri`` the
MLflow store. :data:`SUBCOMMANDS` maps each name to the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from search.prepare.cli import DEFAULT_STORAGE, OneLineParser
from search.prepare.errors import UsageError
from search.trust.credentials import private_outputs, redact


@dataclass(frozen=True)
class Subcommand:
    help: str
    run: Callable[[list[str]], int]


def _module(name: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        return int(importlib.import_module(f"search.{name}").main(argv) or 0)

    return run


def loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a server on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name or an interface's address: reachable from wherever it resolves


def bind_warning(prog: str, host: str) -> str | None:
    """The one-line warning for a UI bound beyond loopback (None on 127.0.0.1 and the like)."""
    if loopback(host):
        return None
    return (f"fusetune {prog}: warning: --host {host} makes the UI reachable from other machines, with no "
            "authentication: anyone who can reach this port reads (and can change) the searches")


@private_outputs()  # the store or study a server creates is the user's alone, like the search's
def _server(argv: list[str], prog: str, what: str,
            build: Callable[[argparse.Namespace], tuple[list[str], dict[str, str]]],
            extra: Callable[[argparse.ArgumentParser], None]) -> int:
    parser = OneLineParser(prog=f"fusetune {prog}", description=what)
    parser.add_argument("--storage", default=DEFAULT_STORAGE, metavar="DIR", help=f"results folder (default {DEFAULT_STORAGE})")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the tool's own)")
    extra(parser)
    args = parser.parse_args(argv)  # credentials in any option are refused here (search.trust.credentials)
    try:
        cmd, env = build(args)
    except UsageError as exc:
        print(f"fusetune {prog}: error: {exc}", file=sys.stderr)
        return 2
    if shutil.which(cmd[0]) is None:
        print(f"fusetune {prog}: error: {cmd[0]} is not installed (pip install {cmd[0]})", file=sys.stderr)
        return 2
    if args.port is not None:
        cmd += ["--port", str(args.port)]
    warning = bind_warning(prog, args.host)
    if warning:
        print(warning, file=sys.stderr)
    print(" ".join(cmd) + "".join(f"  ({k}={redact(v)})" for k, v in env.items()), flush=True)
    return subprocess.call(cmd, env={**os.environ, **env})


def _local_storage(args: argparse.Namespace, option: str) -> Path:
    if "://" in args.storage:
        raise UsageError(f"--storage {args.storage}: a remote results folder has no local store to open; "
                         f"give {option}")
    return Path(args.storage).expanduser()


def _ui(argv: list[str]) -> int:
    def build(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
        from search.tracking.store import default_tracking_uri

        uri = args.tracking_uri or default_tracking_uri(_local_storage(args, "--tracking-uri"))
        # the store goes by environment, not on the command line every user sees in ps
        return ["mlflow", "ui", "--host", args.host], {"MLFLOW_BACKEND_STORE_URI": uri}

    return _server(argv, "ui", "The MLflow UI of a results folder (its SQLite store), on 127.0.0.1.", build,
                   lambda p: p.add_argument("--tracking-uri", default=None, help="another MLflow store"))


def _dashboard(argv: list[str]) -> int:
    def build(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
        url = args.optuna_storage or \
            f"sqlite:///{(_local_storage(args, '--optuna-storage') / args.name / 'optuna.db').resolve()}"
        return ["optuna-dashboard", url, "--host", args.host], {}  # checked for credentials by the parser

    def extra(p: argparse.ArgumentParser) -> None:
        p.add_argument("--name", required=True, help="the search whose Optuna study to show")
        p.add_argument("--optuna-storage", default=None, help="a shared Optuna storage URL instead of <search>/optuna.db")

    return _server(argv, "dashboard", "optuna-dashboard on a search's Optuna study, on 127.0.0.1.", build, extra)


SUBCOMMANDS: dict[str, Subcommand] = {
    "run": Subcommand("run a hyperparameter search", _module("run")),
    "nested": Subcommand("nested cross-validation of the whole tuning procedure", _module("nested")),
    "export": Subcommand("hand models to a downstream team as self-contained bundles", _module("export")),
    "compare": Subcommand("leaderboard of several searches, corrected resampled t-test", _module("compare")),
    "robustness": Subcommand("the champion as modalities go missing", _module("robustness")),
    "reports": Subcommand("(re)write a search's plots", _module("reports")),
    "reproduce": Subcommand("retrain a bundle from its own config and check the weights", _module("reproduce")),
    "spaces": Subcommand("list the search spaces or show one", _module("spaces")),
    "data": Subcommand("describe a dataset or encode its reports and images", _module("data")),
    "ui": Subcommand("open the MLflow UI of a results folder (127.0.0.1)", _ui),
    "dashboard": Subcommand("open optuna-dashboard on a search's study (127.0.0.1)", _dashboard),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    width = max(map(len, SUBCOMMANDS))
    usage = "usage: fusetune SUBCOMMAND [options]   (fusetune SUBCOMMAND --help)\n\nsubcommands:\n" + "\n".join(
        f"  {name.ljust(width)}  {sub.help}" for name, sub in SUBCOMMANDS.items())
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"fusetune: error: unknown subcommand {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    return SUBCOMMANDS[name].run(rest)


def entry() -> int:
    """The ``fusetune`` program: ``fusetune run`` in a child process it watches (:mod:`search.tune.supervisor`)."""
    from search.tune import supervisor

    argv = sys.argv[1:]
    return supervisor.supervised(lambda: main(argv)) if argv[:1] == ["run"] else main(argv)


if __name__ == "__main__":
    sys.exit(entry())
