"""``python -m search.data``: look at datasets from the command line.

    python -m search.data describe --data breast-tcga
    python -m search.data describe --data synth-clinic:n=600,imbalance=10,missing=0.3
    python -m search.data describe --data path/to/my_dataset

Subcommands live in :data:`SUBCOMMANDS` (name -> :class:`Subcommand`); a new one is a function
that adds its arguments, a function that runs it, and one entry there. Bad input prints one line
on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

from search.prepare import encode
from search.prepare.errors import UsageError
from search.trust.credentials import CheckedParser, private_outputs
from trainables.data import DataError, load_dataset


@dataclass(frozen=True)
class Subcommand:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _data_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="NAME",
                        help="rosmap, breast-tcga, synth-clinic[:k=v,...] or a dataset folder")


def describe(args: argparse.Namespace) -> int:
    """Print the dataset's summary: samples per split, modalities, classes, missing counts, fingerprint."""
    print(json.dumps(load_dataset(args.data).describe(), indent=2))
    return 0


SUBCOMMANDS: dict[str, Subcommand] = {
    "describe": Subcommand("print a dataset summary as JSON", _data_argument, describe),
    "encode": Subcommand("precompute encoder features into the feature cache; print keys and sizes as JSON",
                         encode.add_arguments, encode.run),
}


class _OneLineParser(CheckedParser):
    """argparse, but a usage error is one line on stderr (exit code 2), not usage plus message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m search.data", description="Inspect fusetune datasets.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, cmd in SUBCOMMANDS.items():
        cmd.add_arguments(sub.add_parser(name, help=cmd.help, description=cmd.help))
    return parser


@private_outputs()  # what it writes is readable by the user only (FUSETUNE_UMASK)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return SUBCOMMANDS[args.command].run(args)
    except (DataError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
