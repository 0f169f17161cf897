"""The ``fusetune`` command and the Python API ``search.run_search``."""

from __future__ import annotations

import pytest

from search import command, run_search
from search.prepare.errors import UsageError


def test_help_lists_every_subcommand(capsys):
    assert command.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("run", "nested", "export", "compare", "robustness", "reports", "reproduce", "spaces", "data", "ui",
                 "dashboard"):
        assert f"  {name} " in out


def test_unknown_subcommand_is_one_line(capsys):
    assert command.main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown subcommand 'serve'" in err[0]


def test_subcommands_are_the_module_mains(capsys):
    assert command.main(["spaces", "show", "baseline"]) == 0
    assert "lr" in capsys.readouterr().out
    assert command.main(["run", "--space", "nope"]) == 2
    assert "--space nope: unknown space" in capsys.readouterr().err


def test_run_search_checks_options_like_the_command():
    with pytest.raises(UsageError, match="unknown option 'num_trials'"):
        run_search(space="baseline", num_trials=3)
    with pytest.raises(UsageError, match="--references xgb: unknown reference 'xgb'"):
        run_search(space="baseline", references="xgb")
    with pytest.raises(UsageError, match="--promote sometimes"):
        run_search(space="baseline", promote="sometimes")
