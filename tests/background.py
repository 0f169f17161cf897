"""Searches the tests only read, started when the session starts and run beside the other tests.

A whole search (``python -m search.run`` in a subprocess) mostly waits: on Ray's start, on its
trial workers' start, on Tune's round trips, on MLflow (a 2-trial x 2-epoch search: 22 s of CPU in
42 s on 2 idle cores). Run one after another, the searches that module fixtures build were more
than half of the default suite's wall time. So a module writes the function that builds its
fixture's value and decorates it with :func:`search_fixture`, which makes it the fixture of that
name and registers it; the conftest moves the modules
that read one to the end of the session (:func:`in_session_order`) and, when the session starts,
starts (:func:`start_for`) every registered search that a selected test uses, at most
:data:`CONCURRENT` at once, the one with the least slack first, in threads (each waits on its
subprocesses); the fixture then returns :func:`result`, which waits for its search (or runs it
there and then when it was not started). The searches, their options and every assertion on
them are what they were.

A background search's subprocesses get the environment as it was when the session started
(:func:`environ`), not whatever a test running beside it has set with ``monkeypatch``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest

CONCURRENT = 2
"""Background searches at once (the foreground tests run beside them)."""
SECONDS_PER_TEST = 0.4
"""About how long the default suite's other tests take each, on 2 cores beside the searches."""


class _Registered:
    def __init__(self, build: Callable[[Path], Any], seconds: float) -> None:
        self.build, self.seconds = build, seconds


_REGISTERED: dict[str, _Registered] = {}
_STARTED: dict[str, Future] = {}
_LOCK = threading.Lock()
_THREAD = "background-search"
_POOL = ThreadPoolExecutor(max_workers=CONCURRENT, thread_name_prefix=_THREAD)
_ENVIRON: dict[str, str] = {}
_STOPPING = threading.Event()


def search_fixture(seconds: float, scope: str = "module") -> Callable[[Callable[[Path], Any]], Any]:
    """Make ``build(storage) -> value`` the pytest fixture of the same name (``scope``; it needs
    ``data_dir``) whose value is :func:`result`: the search it runs starts in the background when
    the session does. ``seconds``: about how long it takes on 2 idle cores (what
    :func:`start_for` and :func:`in_session_order` order by)."""
    def fixture(build: Callable[[Path], Any]) -> Any:
        name = build.__name__
        if name in _REGISTERED and _REGISTERED[name].build.__qualname__ != build.__qualname__:
            raise ValueError(f"two background searches are named {name!r}")
        _REGISTERED[name] = _Registered(build, seconds)

        def value(tmp_path_factory: Any, data_dir: Path) -> Any:
            return result(name, tmp_path_factory)

        value.__doc__ = f"{build.__doc__ or name} (run in the background: tests/background.py)"
        return pytest.fixture(scope=scope, name=name)(value)
    return fixture


def used_by(item: Any) -> set[str]:
    """The registered searches the test ``item`` reads (through its fixtures)."""
    return set(getattr(item, "fixturenames", ())) & set(_REGISTERED)


def in_session_order(items: Sequence[Any]) -> list[Any]:
    """``items`` with the test modules that read a background search moved to the end: those whose
    longest search is shorter first (their searches are done sooner); otherwise in their order."""
    longest: dict[str, float] = {}
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", None)
        for name in used_by(item):
            longest[module] = max(longest.get(module, 0.0), _REGISTERED[name].seconds)
    modules = list(dict.fromkeys(getattr(getattr(i, "module", None), "__name__", None) for i in items))
    rank = {m: (m in longest, longest.get(m, 0.0), i) for i, m in enumerate(modules)}
    return sorted(items, key=lambda i: rank[getattr(getattr(i, "module", None), "__name__", None)])


def start_for(items: Sequence[Any], tmp_path_factory: Any) -> None:
    """Start the searches the tests ``items`` (in their order) read, the one with the least slack
    first: the latest it may start for the test that reads it first not to wait, counting
    :data:`SECONDS_PER_TEST` for each test before that one."""
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        for name in used_by(item):
            first.setdefault(name, index)
    order = sorted(first, key=lambda n: first[n] * SECONDS_PER_TEST - _REGISTERED[n].seconds)
    start(order, tmp_path_factory)


def start(names: Iterable[str], tmp_path_factory: Any) -> None:
    """Start the registered searches among ``names`` (in that order) not started yet."""
    with _LOCK:
        if not _ENVIRON:
            _ENVIRON.update(os.environ)
        todo = [n for n in dict.fromkeys(names) if n in _REGISTERED and n not in _STARTED]
        for name in todo:
            storage = tmp_path_factory.mktemp(name)  # in this thread: the factory numbers its folders
            _STARTED[name] = _POOL.submit(_REGISTERED[name].build, storage)


def result(name: str, tmp_path_factory: Any) -> Any:
    """The value of the search ``name`` (waiting for it; started now if it was not); the builder's
    exception, re-raised, when it failed."""
    start([name], tmp_path_factory)
    return _STARTED[name].result()


def environ() -> dict[str, str]:
    """A copy of the environment for a subprocess: in a background search's thread, the session's
    environment as it was when the first search started (a RuntimeError once the session is
    over); elsewhere ``os.environ`` as it is now."""
    if threading.current_thread().name.startswith(_THREAD) and _ENVIRON:
        if _STOPPING.is_set():  # the session is over: a search's next command does not start
            raise RuntimeError("the test session ended before this background search")
        return dict(_ENVIRON)
    return dict(os.environ)


def shutdown() -> None:
    """At the session's end: drop the searches not started yet; a search still running (a session
    stopped early, ``-x`` or Ctrl-C) is stopped with SIGTERM to this process's descendants, as the
    session is over (``python -m search.run`` ends its search and Ray cluster on SIGTERM)."""
    _STOPPING.set()
    running = [f for f in _STARTED.values() if not f.done()]
    _POOL.shutdown(wait=False, cancel_futures=True)
    if any(not f.done() for f in running):
        from processes import descendants

        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
    wait(running, timeout=120)
