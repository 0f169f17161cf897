"""The one home of a metric's direction (search.prepare.objective.Objective)."""

import math
import re
from pathlib import Path

import pytest

from search.prepare.objective import Objective


def test_better_best_key_and_worst_follow_the_direction():
    up, down = Objective("macro_f1", "max"), Objective("loss", "min")
    assert up.better(0.9, 0.8) and not up.better(0.8, 0.8) and not up.better(0.7, 0.8)
    assert down.better(0.1, 0.2) and not down.better(0.2, 0.2)
    assert up.best([0.2, 0.9, 0.5]) == 0.9 and down.best([0.2, 0.9, 0.5]) == 0.2
    assert up.best([]) == -math.inf == up.worst and down.best([]) == math.inf == down.worst
    assert sorted([0.2, 0.9, 0.5], key=down.key, reverse=True) == [0.2, 0.5, 0.9]
    assert (up.sign, down.sign, up.direction, down.direction) == (1.0, -1.0, "maximize", "minimize")
    with pytest.raises(ValueError, match="mode must be one of"):
        Objective("macro_f1", "up")


def test_no_module_compares_a_mode_as_a_bare_string():
    root = Path(__file__).resolve().parents[1]
    bare = re.compile(r"""[=!]=\s*["'](max|min)["']|["'](max|min)["']\s*[=!]=""")
    found = [f"{p.relative_to(root)}:{i}" for folder in ("search", "trainables", "spaces") for p in (root / folder).rglob("*.py")
             if p.name != "objective.py" for i, line in enumerate(p.read_text().splitlines(), 1) if bare.search(line)]
    assert found == []
