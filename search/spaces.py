"""``python -m search.spaces``: the search spaces and their dimensions.

    python -m search.spaces list          one line per space: name, method, default data, size
    python -m search.spaces show NAME     every dimension: distribution, log scale, default,
                                          condition, grid values; fixed keys; grid size
"""

from __future__ import annotations

import argparse
import sys

from search.trust.credentials import CheckedParser
from spaces import SPACES, get_space


class _OneLineParser(CheckedParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def list_spaces() -> str:
    header = f"{'space':<24} {'method':<14} {'default data':<13} {'dims':>4}  description"
    return "\n".join([header, *(s.summary() for s in SPACES.values())])


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m search.spaces", description="List and show fusetune search spaces.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{list,show}")
    sub.add_parser("list", help="one line per space")
    show = sub.add_parser("show", help="the dimensions of one space")
    show.add_argument("name", metavar="NAME", help="a space name (see `list`)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "list":
        print(list_spaces())
        return 0
    try:
        print(get_space(args.name).show())
    except KeyError as exc:
        print(f"python -m search.spaces: error: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
