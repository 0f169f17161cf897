"""An exit request Python could not raise ends the process, without a traceback.

The raylet ends a trial's worker (the trial finished, failed or was stopped) with SIGTERM, and
SIGKILLs it 200 ms later. Ray's handler turns the SIGTERM into ``SystemExit`` raised in whatever
Python code runs at that moment. When that is a weakref callback or a ``__del__`` (the garbage
collection of torch objects, often), Python cannot raise it there: it prints "Exception ignored
in ... SystemExit: 1" and a traceback through Ray to the worker's stderr, which Ray forwards to the
driver's output, and the process goes on as if nothing was asked. :func:`quiet_exit_requests`
makes such a lost exit request end the process at once with its exit code, silently; every other
exception Python cannot raise is reported as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

_MARK = "_fusetune_exit_request"


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    return 0 if code is None else code if isinstance(code, int) else 1


def _handler(previous: Callable[[Any], None]) -> Callable[[Any], None]:
    def unraisable(info: Any) -> None:
        if isinstance(info.exc_value, SystemExit):
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError, AttributeError):
                    pass
            os._exit(_exit_code(info.exc_value))
        previous(info)

    setattr(unraisable, _MARK, True)
    return unraisable


def quiet_exit_requests() -> None:
    """Install the handler in ``sys.unraisablehook`` (once per process; any thread may call it)."""
    if not getattr(sys.unraisablehook, _MARK, False):
        sys.unraisablehook = _handler(sys.unraisablehook)
