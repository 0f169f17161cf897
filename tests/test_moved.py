"""Modules moved into the stage subpackages still answer to their old names (search.trust.moved).

What a search folder written before the move pickled (``tuner.pkl``: the Tune callbacks, the
searcher, the stopper; the schedulers' snapshots) is found by its old module path, as the same class.
"""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import search  # noqa: F401 - installs the finder
from search.trust.moved import MOVED

REPO = Path(__file__).resolve().parents[1]

# (old module, name) as a search folder's tuner.pkl before the move named them (read off one with
# pickletools) and the ASHA / median snapshots
PICKLED_BEFORE = [
    ("search.cleanup", "PruneCheckpoints"),
    ("search.dataset_input", "DatasetInfo"),
    ("search.oof", "KeepOutOfFold"),
    ("search.optuna_storage", "PersistentOptunaSearch"),
    ("search.orchestrate", "SearchBudget"),
    ("search.progress", "ProgressLine"),
    ("search.settle", "RecordFinal"),
    ("search.tracking", "MLflowTracking"),
    ("search.replay", "RememberingASHA"),
    ("search.replay", "RememberingMedian"),
    ("search.confirm", "fusetune_confirm"),  # a confirmation stage's tuner.pkl: its trainable
    ("search.confirm", "_dirname"),          # ... and its trial_dirname_creator
]


@pytest.mark.parametrize("old,name", PICKLED_BEFORE)
def test_what_was_pickled_under_its_old_module_loads_as_the_same_object(old, name):
    reference = pickle.loads(f"c{old}\n{name}\n.".encode())  # protocol 0: GLOBAL 'module name'
    assert reference.__module__.startswith("search.") and reference.__module__ != old
    assert reference is getattr(importlib.import_module(reference.__module__), name)
    # pickled anew, it names its new module only
    assert f"{old}\n".encode() not in pickle.dumps(reference, protocol=0)


@pytest.mark.parametrize("old,new", sorted(MOVED.items()))
def test_every_old_name_is_the_module_at_its_new_place(old, new):
    module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == module.__spec__.name == new  # its own spec, not the old name's


def test_old_imports_work_in_a_fresh_interpreter():
    code = ("from search.models import load_model; from search.tracking import default_tracking_uri; "
            "import search.orchestrate as o, search.tune.orchestrate as n; print(o is n, load_model.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["True", "search.handoff.models"]


def test_the_new_modules_are_not_named_by_the_old_table():
    # every old name is free at its old place: no module file left behind to shadow the moved one
    for old in MOVED:
        assert not (REPO / (old.replace(".", "/") + ".py")).exists(), old
    assert all(new.startswith("search.") and importlib.util.find_spec(new) for new in MOVED.values())


def test_the_checkout_local_workers_import_is_the_repository_root():
    from search.prepare import preflight

    assert preflight.REPO_ROOT == REPO  # not search/ (whose select/ would shadow the standard library's)


@pytest.mark.parametrize("old", ["search.reports", "search.integrity"])
def test_an_old_command_line_still_runs(old):
    out = subprocess.run([sys.executable, "-m", old, "--help"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout
