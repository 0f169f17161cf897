"""The Python API: :func:`run_search`, the same code path as ``python -m search.run``.

```python
from search import run_search

result = run_search(space="baseline", data="breast-tcga", num_samples=10, epochs=30)
result.best_config          # the confirmed champion's config
result.metrics              # results.csv as a DataFrame
result.model_uri            # models:/baseline-breast-tcga/<version>
```

It prints nothing; ``out=sys.stdout`` shows what the command line shows (the progress line and the summary).
"""

from __future__ import annotations

import inspect
from dataclasses import MISSING
from typing import Any, TextIO

from search.prepare import config, parse
from search.prepare.errors import UsageError
from search.run import SearchResult, execute, quiet_libraries


def run_search(*, out: TextIO | None = None, **options: Any) -> SearchResult:
    """Run a search with the options of ``python -m search.run`` as keyword arguments (``space=``,
    ``num_samples=``, ``metric="macro_f1"`` or a list, ...): the fields of
    :class:`search.prepare.config.SearchConfig`, with their defaults (``inspect.signature(run_search)``).
    They are checked like the command line's (:func:`search.prepare.parse.typed`, then
    :func:`search.prepare.resolve.resolve`); bad options raise :class:`UsageError` with the same one-line
    message the command prints, before anything starts. ``out``: where the progress and the summary
    the command line prints go (e.g. ``sys.stdout``); by default nothing is printed (Ray's, MLflow's
    and Optuna's own warnings still reach the log)."""
    unknown = sorted(set(options) - set(config.OPTIONS))
    if unknown:
        raise UsageError(f"run_search(): unknown option {unknown[0]!r}; known: {', '.join(sorted(config.OPTIONS))}")
    given = parse.typed(options)
    quiet_libraries()
    return execute(given, out=out)


run_search.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                       default=inspect.Parameter.empty if config.default(name) is MISSING else config.default(name))
     for name in config.OPTIONS]
    + [inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="TextIO | None")],
    return_annotation=SearchResult)
