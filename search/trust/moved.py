"""Modules that moved into the stage subpackages keep answering to their old names.

Tune's state in a search folder (``tuner.pkl``, the searcher's and the schedulers' snapshots) and
users' scripts name classes and functions by the module path they had when written: a search
folder written before the move still resumes, ``from search.models import load_model`` and
``python -m search.reports`` / ``python -m search.integrity`` still work (a registered model never
needed ``search``: its pyfunc is models-from-code on ``trainables``).
:func:`install` (called by ``import search``) puts a finder first on ``sys.meta_path`` that answers
an old name with the module at its new place (the same module object, so ``isinstance`` and
pickling agree). Nothing new is written under an old name: new pickles name the new modules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

#: old dotted name -> where the module lives now (moved on 2026-12-04, fusetune 0.x)
MOVED: dict[str, str] = {
    **{f"search.{m}": f"search.prepare.{m}" for m in (
        "config", "cli", "registry_names", "objective", "errors", "preflight", "dataset_input", "encode")},
    **{f"search.{m}": f"search.tune.{m}" for m in (
        "orchestrate", "optuna_storage", "replay", "settle", "study_agreement", "progress", "supervisor", "faults")},
    **{f"search.{m}": f"search.select.{m}" for m in (
        "results", "confirm", "references", "ensemble", "oof", "stats", "champions", "cleanup")},
    **{f"search.{m}": f"search.handoff.{m}" for m in ("models", "promotion", "model_card")},
    **{f"search.{m}": f"search.report.{m}" for m in ("reports", "render", "timing")},
    **{f"search.{m}": f"search.trust.{m}" for m in ("integrity", "credentials", "relocate", "locks", "files")},
    "search.tracking_queue": "search.tracking.queue",
    "search.mlflow_writer": "search.tracking.writer",
    # "search.tracking" is now the package: it answers the old module's names itself (search/tracking/__init__.py)
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path, target=None):  # noqa: ANN001 - the finder protocol
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:  # noqa: ANN001
        return importlib.import_module(MOVED[spec.name])  # the module itself, registered under its old name too

    def get_code(self, fullname: str):  # noqa: ANN201 - ``python -m search.reports`` (runpy) runs the new module
        new = MOVED[fullname]
        return importlib.util.find_spec(new).loader.get_code(new)

    def exec_module(self, module: ModuleType) -> None:
        # already executed at its new place; the import system has just set its __spec__ to the old
        # name's: give it back its own (importlib.reload, pickle's and inspect's lookups read it)
        module.__spec__ = importlib.util.spec_from_file_location(module.__name__, module.__file__)


def install() -> None:
    """Answer the old module names (idempotent)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
