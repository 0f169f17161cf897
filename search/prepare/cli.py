"""Command-line options of ``python -m search.run`` and ``--config FILE``, generated from :class:`SearchConfig`.

Each field of :class:`search.prepare.config.SearchConfig` is an option (``--num-samples`` for
``num_samples``) with the field's description as its help, the field's default shown after it,
and its choices the registry's names. The parser only splits the command line: its values stay the
strings given and are typed and checked by :func:`search.prepare.parse.typed`, like the values of a YAML
``--config`` file (the same keys as the long options, ``num_samples`` or ``num-samples``), the
keyword arguments of :func:`search.run_search` and a resumed search's ``search.json``. A flag on the
command line overrides the file; ``--points`` of both are evaluated, the file's first.
``--print-config`` writes the resolved options as the YAML ``--config`` reads.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING
from pathlib import Path
from typing import Any

import yaml

from search.prepare import config, parse
from search.prepare.config import SearchConfig
from search.prepare.errors import UsageError
from search.trust.credentials import CheckedParser

REPEATED = ("points",)
"""Options given once per value on the command line (``--points A --points B``)."""


class _OneLineParser(CheckedParser):
    """argparse whose errors are one line (raised as :class:`UsageError`), not usage text; credentials refused."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _default_text(name: str) -> str | None:
    """How ``--help`` shows the default of option ``name``: the field's value, or what fills it."""
    extra = parse.info(name).json_schema_extra or {}
    if extra.get("shown"):
        return f"default: {extra['shown']}"
    value = config.default(name)
    if value is MISSING or value is None or value == () or isinstance(value, bool):
        return None
    if isinstance(value, tuple):
        return f"default {','.join(value)}"
    return f"default {format(value, 'g') if isinstance(value, float) else value}"


def option_help(name: str) -> str:
    """The help line of option ``name``: the field's description and its default."""
    info = parse.info(name)
    if (info.json_schema_extra or {}).get("hidden"):
        return argparse.SUPPRESS
    default = _default_text(name)
    return f"{info.description} ({default})" if default else str(info.description)


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="python -m search.run", description="Run a hyperparameter search (Ray Tune + Optuna + MLflow).",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--config", metavar="FILE", help="YAML file with the same keys as these options; flags override it")
    p.add_argument("--print-config", action="store_true",
                   help="write the resolved options as YAML (what --config reads) and exit, running nothing")
    for name in config.OPTIONS:
        extra = parse.info(name).json_schema_extra or {}
        kwargs: dict[str, Any] = {"help": option_help(name)}
        if parse.is_flag_only(name):
            kwargs["action"] = "store_true"
        else:
            kwargs.update(metavar=extra.get("metavar"), choices=parse.choices(name))
            if name in REPEATED:
                kwargs["action"] = "append"
        p.add_argument(config.flag(name), **kwargs)
    return p


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML ``--config`` file -> its options by field name, typed and checked."""
    try:
        loaded = yaml.safe_load(Path(path).expanduser().read_text())
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"--config {path}: must be a mapping of option names to values")
    given = {}
    for key, value in loaded.items():
        name = str(key).replace("-", "_")
        if name not in config.OPTIONS:
            raise UsageError(f"--config {path}: unknown key {key!r}")
        given[name] = value
    return parse.typed(given)


def parse_command(argv: list[str] | None) -> tuple[dict[str, Any], bool]:
    """Command line (and ``--config`` file) -> the options given, by :class:`SearchConfig` field
    name, typed and checked one by one (:func:`search.prepare.parse.typed`), and whether ``--print-config``
    was given."""
    argv = sys.argv[1:] if argv is None else list(argv)
    given = vars(build_parser().parse_args(argv))
    path = given.pop("config", None)
    print_config = given.pop("print_config", False)
    given = parse.typed(given)
    if path is not None:
        in_file = read_config_file(path)
        repeated = {k: in_file[k] + given[k] for k in REPEATED if k in in_file and k in given}
        given = {**in_file, **given, **repeated}
    return given, print_config


def parse_args(argv: list[str] | None) -> dict[str, Any]:
    """The options of a command that runs a search (:func:`parse_command` without ``--print-config``)."""
    given, print_config = parse_command(argv)
    if print_config:
        raise UsageError("--print-config: give it to python -m search.run")
    return given


def config_yaml(cfg: SearchConfig) -> str:
    """The options of ``cfg`` as the YAML ``--config`` reads (``--print-config``; URIs redacted)."""
    return yaml.safe_dump(cfg.as_options(), sort_keys=False, allow_unicode=True)


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
