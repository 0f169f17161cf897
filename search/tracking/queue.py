"""The tracking queue: records sent to MLflow in order by one background thread, with back-off.

:class:`Sender` holds a bounded FIFO of small JSON-ready *records* (what :mod:`search.tracking.callback`'s
Tune callback makes of every hook) and replays them, in order, through an ``apply`` function (the
MLflow writer, :mod:`search.tracking.writer`) on its own thread, so the Tune loop never waits on
MLflow. When ``apply`` fails the record stays at the head and is retried with exponential back-off
(0.5 s doubling up to ``max_backoff``); a failure retrying cannot fix (``permanent``) drops the
record with a warning. Beyond ``max_pending`` records the oldest *droppable* ones (per-epoch
metrics) go first; run creation, params and final statuses never do.

While the thread runs, MLflow's REST client fails fast (:func:`fast_http`: one
``request_timeout`` per request, no retries of its own), so that the back-off here, not MLflow's
minutes of retries, decides when a record is tried again. The setting is made and undone by
:meth:`Sender.start` and :meth:`Sender.close`, in the thread that calls them (Tune's), never from
the sender thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

logger = logging.getLogger("fusetune.tracking")

Record = dict

_FAST_HTTP_LOCK = threading.Lock()
_fast_http_depth = 0
_fast_http_saved: dict[str, str | None] = {}


@contextlib.contextmanager
def fast_http(timeout: float, retries: int = 0) -> Iterator[None]:
    """Make MLflow's REST client fail fast (its defaults retry for minutes) inside the block.

    MLflow reads these variables at request time; a value the user set explicitly is respected.
    The variables are process-wide: overlapping blocks (the tracking thread and the main thread)
    share the settings of the outermost one, and the last to leave restores the user's values.
    """
    global _fast_http_depth
    wanted = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(math.ceil(timeout))), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries)}
    with _FAST_HTTP_LOCK:
        if _fast_http_depth == 0:
            _fast_http_saved.clear()
            _fast_http_saved.update({k: os.environ.get(k) for k in wanted})
            for k, v in wanted.items():
                os.environ.setdefault(k, v)
        _fast_http_depth += 1
    try:
        yield
    finally:
        with _FAST_HTTP_LOCK:
            _fast_http_depth -= 1
            if _fast_http_depth == 0:
                for k, v in _fast_http_saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v


def one_line(text: str, limit: int) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class Sender:
    """Records -> ``apply``, in order, on a background thread (module docstring).

    Args:
        apply: sends one record; raises when it could not.
        permanent: whether an exception of ``apply`` is one retrying cannot fix.
        droppable: whether a record may be dropped when the queue is full.
        target: where the records go, for the log lines (the tracking URI).
        max_pending, request_timeout, max_backoff: see the module docstring.
    """

    def __init__(self, apply: Callable[[Record], None], *, permanent: Callable[[Exception], bool],
                 droppable: Callable[[Record], bool], target: str, max_pending: int = 20_000,
                 request_timeout: float = 10.0, max_backoff: float = 15.0) -> None:
        self.apply, self.permanent, self.droppable, self.target = apply, permanent, droppable, target
        self.max_pending, self.request_timeout, self.max_backoff = int(max_pending), float(request_timeout), float(max_backoff)
        self.dropped = 0                              # records dropped (queue full / rejected)
        self._queue: deque[Record] = deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._closing = False
        self._busy = False
        self._down_since: float | None = None
        self._fast: contextlib.ExitStack | None = None

    # ------------------------------------------------------------------ the queue
    def put(self, record: Record, *, first: bool = False) -> None:
        with self._lock:
            if first:
                self._queue.appendleft(record)
            else:
                self._queue.append(record)
            if len(self._queue) > self.max_pending:
                self._drop_oldest()
            self._changed.notify_all()
        self.start()

    def _drop_oldest(self) -> None:
        for i, rec in enumerate(self._queue):
            if i > 0 and self.droppable(rec):  # never the head: the thread may be replaying it
                del self._queue[i]
                if self.dropped == 0:
                    logger.warning("MLflow buffer full (%d records): dropping the oldest per-epoch metrics",
                                   self.max_pending)
                self.dropped += 1
                return

    def records(self) -> list[Record]:
        """The records not sent yet, in order (for the callback's Tune state)."""
        with self._lock:
            return list(self._queue)

    def load(self, records: Iterable[Record], dropped: int = 0) -> None:
        """Replace the queue with ``records`` (a restored state's unsent ones)."""
        with self._lock:
            self._queue = deque(records)
            self.dropped = int(dropped)

    def pending(self) -> int:
        """Records not yet sent (including the one being sent)."""
        with self._lock:
            return len(self._queue)

    def wait(self, timeout: float, until: Callable[[], bool] | None = None) -> bool:
        """Wait up to ``timeout`` s until ``until()`` holds (default: every record sent)."""
        done = until or (lambda: not self._queue and not self._busy)
        deadline = time.monotonic() + timeout
        self.start()
        with self._lock:
            while True:
                ok = done()
                left = deadline - time.monotonic()
                if ok or left <= 0:
                    return ok
                self._changed.wait(min(left, 0.5))

    # ------------------------------------------------------------------ the thread
    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closing = False
            if self._fast is None:
                self._fast = contextlib.ExitStack()
                self._fast.enter_context(fast_http(self.request_timeout))
            self._thread = threading.Thread(target=self._loop, name="fusetune-mlflow", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread (records still queued are kept) and undo the fast-fail setting."""
        with self._lock:
            self._closing = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.request_timeout + 5)
        self._thread = None
        self._closing = False
        if self._fast is not None:
            self._fast.close()
            self._fast = None

    def _loop(self) -> None:
        backoff = 0.5
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._changed.wait(0.5)
                if self._closing:
                    return  # what is still queued stays in the state
                record = self._queue[0]
                self._busy = True
            try:
                self.apply(record)
            except Exception as e:  # noqa: BLE001 - the search must never die because of MLflow
                if self.permanent(e):
                    logger.warning("MLflow rejected a %s record of %s: %s", record["op"],
                                   record.get("trial_id", "the search"), one_line(str(e), 300))
                    self._pop(record, dropped=True)
                    continue
                with self._lock:
                    self._busy = False
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                        logger.warning("MLflow at %s unreachable (%s); buffering records and retrying",
                                       self.target, one_line(str(e), 200))
                    self._changed.notify_all()
                    self._changed.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 0.5
            if self._down_since is not None:
                logger.warning("MLflow at %s reachable again after %.0f s; sending %d buffered records",
                               self.target, time.monotonic() - self._down_since, self.pending())
                self._down_since = None
            self._pop(record)

    def _pop(self, record: Record, dropped: bool = False) -> None:
        with self._lock:
            if self._queue and self._queue[0] is record:
                self._queue.popleft()
            self.dropped += int(dropped)
            self._busy = False
            self._changed.notify_all()
