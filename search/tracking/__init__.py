"""Tracking: a search mirrored into MLflow, one parent run per search and one child run per trial
(the Tune callback, the queue that sends its records, the writes they make).

``search.tracking`` was one module before the stage subpackages: its names (``MLflowTracking`` in a
search folder's ``tuner.pkl``, ``default_tracking_uri`` in scripts) still resolve here.
"""

from __future__ import annotations

import importlib
from typing import Any

_FORMER_MODULE = ("search.tracking.callback", "search.tracking.store", "search.tracking.results")


def __getattr__(name: str) -> Any:
    if not name.startswith("__"):
        for module in _FORMER_MODULE:
            found = importlib.import_module(module)
            if hasattr(found, name):
                return getattr(found, name)
    raise AttributeError(f"module 'search.tracking' has no attribute {name!r}")
