"""``NAME:k=v,...`` dataset parameters: a loader's check of the keys :class:`trainables.data.DatasetSpec` parsed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from trainables.data.errors import DataError

if TYPE_CHECKING:
    from trainables.data import DatasetSpec


def known_options(spec: DatasetSpec, known: Iterable[str]) -> dict[str, str]:
    """``spec``'s options as key -> raw value; a one-line :class:`DataError` for a key not in ``known``."""
    known = tuple(known)
    for key, _ in spec.options:
        if key not in known:
            raise DataError(f"--data {spec.name} parameter {key!r}", f"unknown parameter; expected one of {', '.join(known)}")
    return spec.params
