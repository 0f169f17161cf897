"""The ``fusetune`` command and the Python API ``search.run_search``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import background
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


QUIET_SEARCHES = """
import io, sys
from search import run_search
opts = dict(space="baseline", data="breast-tcga", num_samples=1, epochs=1, folds=2, confirm_repeats=0,
            references="none", top_k=0, storage=sys.argv[1])
quiet = run_search(name="quiet", **opts)
told = io.StringIO()
shown = run_search(name="told", out=told, **opts)
sys.stdout.write(f"exit codes {quiet.exit_code} {shown.exit_code}\\n")
sys.stderr.write("TOLD:" + told.getvalue())
"""


@background.search_fixture(seconds=40)
def quiet_searches(tmp_path: Path):
    """Two ``run_search`` calls in one fresh process: without ``out``, then with ``out=StringIO()``."""
    env = {**background.environ(), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", QUIET_SEARCHES, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    return tmp_path, done


def test_run_search_prints_nothing_unless_given_out(quiet_searches):
    tmp_path, done = quiet_searches
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == "exit codes 0 0\n"  # two searches ran; neither wrote a line of its own to stdout
    told = done.stderr.split("TOLD:", 1)[1]   # what the second one wrote to its out=: the command line's lines
    assert told.startswith("search told: space baseline") and "trials 1/1 done" in told
    assert "results: " in told and "steps: startup" in told and (tmp_path / "quiet" / "results.csv").is_file()
