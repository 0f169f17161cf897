"""fusetune search: the command-line entry points and the stages of a search.

The commands (``python -m search.run``, ``.export``, ``.nested``, ...) and the driver's stages
(:mod:`search.stages`) live here; the stages' parts in subpackages named after them: ``prepare``,
``tune``, ``select``, ``handoff``, ``report``, and ``tracking`` and ``trust`` beside them.

``from search import run_search`` is the Python API (:mod:`search.api`).
"""

from typing import Any

from search.trust import moved

moved.install()  # a search folder, registered model or script written before the stage subpackages still loads

__all__ = ["run_search"]


def __getattr__(name: str) -> Any:  # the API without importing Ray and MLflow on ``import search``
    if name == "run_search":
        from search.api import run_search

        return run_search
    raise AttributeError(f"module 'search' has no attribute {name!r}")
