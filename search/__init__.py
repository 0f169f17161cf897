"""fusetune search: command-line entry points, orchestration, tracking and export.

``from search import run_search`` is the Python API (:mod:`search.api`).
"""

from typing import Any

__all__ = ["run_search"]


def __getattr__(name: str) -> Any:  # the API without importing Ray and MLflow on ``import search``
    if name == "run_search":
        from search.api import run_search

        return run_search
    raise AttributeError(f"module 'search' has no attribute {name!r}")
