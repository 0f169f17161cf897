"""What a search optimises: a metric and its direction, as one value.

Every comparison of two figures ("is this better?", "the best of these", "sort best first") goes
through :class:`Objective`, so the direction is read in one place instead of as a bare
``mode == "max"`` wherever figures meet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

MODES = ("max", "min")
"""``--mode``: maximise or minimise the metric."""


@dataclass(frozen=True)
class Objective:
    """``metric`` optimised in direction ``mode`` (``max`` or ``min``)."""

    metric: str
    mode: str

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"objective {self.metric}: mode must be one of {MODES}, got {self.mode!r}")

    @property
    def maximize(self) -> bool:
        return self.mode == MODES[0]

    @property
    def sign(self) -> float:
        """+1 when larger is better, -1 otherwise: ``sign * value`` is larger for better values."""
        return 1.0 if self.maximize else -1.0

    @property
    def worst(self) -> float:
        """A value every finite figure beats."""
        return -math.inf if self.maximize else math.inf

    @property
    def direction(self) -> str:
        """Optuna's name for the direction (``maximize`` / ``minimize``)."""
        return "maximize" if self.maximize else "minimize"

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` is strictly better than ``b``."""
        return self.sign * a > self.sign * b

    def key(self, value: float) -> float:
        """A sort key, larger for better values (``sorted(..., key=obj.key, reverse=True)`` is best first)."""
        return self.sign * value

    def best(self, values: Iterable[float]) -> float:
        """The best of ``values`` (``worst`` when there are none)."""
        return max(values, key=self.key, default=self.worst)
