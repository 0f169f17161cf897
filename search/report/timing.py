"""The fixed steps of ``python -m search.run``, timed: what the final summary line prints.

:class:`Steps` is a dict of step -> seconds with a context manager per step; :func:`since_start`
is the process's age (interpreter start, imports included), so the summary's total is the
command's own wall clock from start to exit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


def since_start() -> float:
    """Seconds since this process started (``psutil``, which Ray depends on)."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


class Steps(dict):
    """``with steps("refit_s"): ...`` adds the block's wall time to ``steps["refit_s"]``."""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.monotonic() - start

    def line(self, order: tuple[str, ...] = ()) -> str:
        """``startup 3.1s, data 0.5s, ...``: the named steps first, in ``order``, then the rest."""
        names = [*(n for n in order if n in self), *(n for n in self if n not in order)]
        return ", ".join(f"{n.removesuffix('_s').replace('_', ' ')} {self[n]:.1f}s" for n in names)
