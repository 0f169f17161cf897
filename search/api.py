"""The Python API: :func:`run_search`, the same code path as ``python -m search.run``.

```python
from search import run_search

result = run_search(space="baseline", data="breast-tcga", num_samples=10, epochs=30)
result.best_config          # the confirmed champion's config
result.metrics              # results.csv as a DataFrame
result.model_uri            # models:/baseline-breast-tcga/<version>
```
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from search.config import SearchConfig
from search.errors import UsageError
from search.run import SearchResult, execute, quiet_libraries

_TUPLES = ("metric", "mode", "references", "points")


def run_search(**options: Any) -> SearchResult:
    """Run a search with the options of ``python -m search.run`` as keyword arguments (``space=``,
    ``num_samples=``, ``metric="macro_f1"`` or a list, ...). Bad options raise :class:`UsageError`
    with the same one-line message the command prints."""
    known = {f.name for f in fields(SearchConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(f"run_search(): unknown option {unknown[0]!r}; known: {', '.join(sorted(known))}")
    given = {}
    for key, value in options.items():
        if key in _TUPLES and value is not None:
            if isinstance(value, str):
                value = tuple(v.strip() for v in value.split(",") if v.strip())
                value = () if key == "references" and value == ("none",) else value
            else:
                value = (value,) if isinstance(value, dict) else tuple(value)
        given[key] = value
    quiet_libraries()
    return execute(given)
