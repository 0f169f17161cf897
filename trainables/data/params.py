"""``NAME:k=v,...`` dataset parameters: the split into keys and raw values, checked."""

from __future__ import annotations

from collections.abc import Iterable

from trainables.data.errors import DataError


def key_values(dataset: str, args: str, known: Iterable[str]) -> dict[str, str]:
    """``"n=600,seed=1"`` -> ``{"n": "600", "seed": "1"}``; a one-line :class:`DataError` for an item
    that is not ``key=value``, an unknown key, or a key given twice."""
    known = tuple(known)
    out: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in args.split(","))):
        key, eq, raw = (s.strip() for s in item.partition("="))
        if not eq:
            raise DataError(f"--data {dataset}:{args}", f"{item!r} is not key=value")
        where = f"--data {dataset} parameter {key!r}"
        if key not in known:
            raise DataError(where, f"unknown parameter; expected one of {', '.join(known)}")
        if key in out:
            raise DataError(where, "given twice")
        out[key] = raw
    return out
